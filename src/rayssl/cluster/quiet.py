"""Every log line rayssl silences, in one place, and why. (Logger names are Ray's; if Ray
renames them the lines come back, nothing breaks.)

- Ray Train's placement-group cleaner polls the state API, which needs Ray's dashboard; the
  embedded local Ray runs without one (it starts seconds faster), so the cleaner would log
  "Failed to query Ray Train Controller actor state" every second. On a local cluster that
  dies with the command there is nothing for it to clean up (`setup_worker`).
- Ray Train 2.60's dataset manager trips a deprecation warning of Ray Data
  (`exclude_resources`) once per run; a user can do nothing about it (`setup_worker`).
- Ray Data warns once per process that its progress bars are off; rayssl turns them off on
  purpose (`DropProgressNotice`, used by ray_data_logging.yaml).
- Ray logs a notice about token authentication each time it starts a local cluster; the
  embedded cluster is private to the command (`starting_ray`).
- Ray Train logs every report at INFO, and Tune each checkpoint and restore: rayssl prints
  its own one-line progress instead (`report_logs`, `trial_logs`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def setup_worker() -> None:
    """Ray's `worker_process_setup_hook` of the local cluster rayssl starts itself. Its
    processes learn their own cluster's address: Ray Train's placement-group cleaner asks
    Ray's state API, which without RAY_ADDRESS looks for Ray instances on the host and
    fails with a traceback when it finds several (another user's `ray start`)."""
    import os

    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*exclude_resources.*")


class DropProgressNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


@contextlib.contextmanager
def starting_ray() -> Iterator[None]:
    """Ray's own loggers at ERROR while `ray.init` starts a local cluster, then as they were."""
    quiet = [logging.getLogger(n) for n in ("ray", "ray._private", "ray._common")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def report_logs(local: bool = False) -> None:
    """Ray Train logs every report at INFO under a logger named after its source file, which
    its LoggingConfig does not reach. (Private module path: guarded, only the log level
    depends on it.) `local`: local mode logs through the "ray.train" loggers of this process."""
    if local:
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def trial_logs() -> None:
    """Tune logs each checkpoint and restore at INFO in an in-process trial's process."""
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
