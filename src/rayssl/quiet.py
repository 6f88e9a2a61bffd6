"""Set up every worker process of the local Ray cluster that rayssl starts itself.

Ray Train's placement-group cleaner polls the state API, which needs Ray's dashboard; the
embedded local Ray runs without one (it starts seconds faster), so the cleaner would log
"Failed to query Ray Train Controller actor state" every second of the run. On a local
cluster that dies with the command there is nothing for it to clean up. Only its logger is
raised to ERROR; everything else Ray logs stays as it is. Ray Train 2.60's own dataset
manager also trips a deprecation warning of Ray Data (`exclude_resources`) once per run; a
user can do nothing about it, so it is filtered too. (Names are Ray's; if Ray renames them
the lines come back, nothing breaks.)
"""

import logging
import warnings

NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def setup_worker() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*exclude_resources.*")


class DropProgressNotice(logging.Filter):
    """Ray Data warns once per process that its progress bars are off; rayssl turns them off
    on purpose (its own progress line reports each epoch). Used by ray_data_logging.yaml."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")
