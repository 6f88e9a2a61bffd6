"""Starting (or joining) Ray, and refusing a run the cluster cannot place, in one line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING

from rayssl.cluster.quiet import RAY_DATA_LOGGING, starting_ray
from rayssl.errors import ConfigError

if TYPE_CHECKING:
    from rayssl.config import TrainConfig

DATA_CPUS = 1  # Ray Data's read / decode tasks take 1 CPU each; one must be free beside workers

# Ray Train's controller collects worker reports when it polls them (every 2 s by default),
# and a worker's report blocks until collected: with short epochs that poll dominated the run.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Without this, Ray Train routes print() through a logger that echoes it a second time.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}

# glibc's malloc in the processes that train, through its own tunables (read from the
# environment as a process starts: nothing to install; jemalloc or tcmalloc, which CPU tuning
# guides suggest, would have to be). By default glibc maps each block above its threshold
# (128 KB, rising to 32 MB) on its own and unmaps it when freed, so every step faults in and
# zero-fills its activations again; and a thread other than a process's first, where Ray
# Train and Tune run the training function, allocates from an arena of its own, whose 64-MB
# heaps glibc gives back as they empty. Here: one arena, blocks up to 32 MB (glibc's largest
# threshold) from the heap, which is never trimmed: an iBOT step in a thread went from 1.22x
# a bare loop's to 1.00x (`benchmarks/loop_vs_bare.py --thread`, BENCHMARKS.md). Larger
# blocks stay mapped on their own and go back when freed: taking those from the heap too
# (MALLOC_MMAP_MAX_=0, until 2026-12-07) held an iBOT demo worker at 8.5 GB, where its step
# peaks at 6.8 GB with this threshold (benchmarks/worker_rss.sh). The cost: a training
# process keeps the memory of its largest step's blocks under 32 MB. A value set in the
# driver's environment wins (glibc's defaults: a threshold of 128 KB rising with freed
# blocks, MALLOC_TRIM_THRESHOLD_ twice the threshold, MALLOC_ARENA_MAX eight per core).
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
}


def allocator_env() -> dict[str, str]:
    """ALLOCATOR_ENV, each value as the driver's environment sets it if it does."""
    return {key: os.environ.get(key, value) for key, value in ALLOCATOR_ENV.items()}


def tune_this_process() -> bool:
    """ALLOCATOR_ENV for the process already running (`rayssl train` in local mode trains in
    the command's own main thread, whose arena is glibc's first: only the other two apply),
    through glibc's `mallopt`, for what is allocated from now on. `mallopt` takes a C int,
    so the trim threshold is at most 2 GiB here. A variable set in the environment is left
    as it is; where glibc is not the C library, nothing changes. True if anything did."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    changed = False
    for name, option in (("MALLOC_MMAP_THRESHOLD_", -3), ("MALLOC_TRIM_THRESHOLD_", -1)):
        if name not in os.environ:
            value = min(int(ALLOCATOR_ENV[name]), 2**31 - 1)
            changed |= bool(libc.mallopt(option, value))
    return changed


# the folder of Ray's own logs of each Ray this process started or joined, by its address
_STARTED: dict[str, str | None] = {}


def init_ray(
    cfg: TrainConfig | None,
    dashboard: bool = False,
    streaming: bool = False,
    min_cpus: float = 0,
    allocator: bool = False,
) -> str | None:
    """Join the cluster in RAY_ADDRESS (set for jobs), else start a local Ray: quietly (no
    INFO banner, no token-auth notice) and without a dashboard unless `dashboard`. Returns
    the folder of Ray's own logs (None if Ray was initialised here other than by this function).

    `streaming`: the run reads its training data through Ray Data, whose read and decode
    tasks need a CPU beside the workers' (Ray Train keeps the workers' CPUs from Ray Data):
    a local Ray then gets one logical CPU more than the workers take if this machine has
    none to spare (the tasks share the cores with the workers), and a cluster must have it.
    Without a `cfg` (`rayssl embed`; the shard index joining RAY_ADDRESS's cluster early) a
    local Ray gets at least `min_cpus` logical CPUs.
    `allocator`: every process of a local Ray gets `allocator_env()` (Tune's in-process
    trials, whose actors take no runtime environment of their own; Ray Train's workers get
    it from `build_trainer` wherever they run)."""
    import ray

    logs = None
    if not ray.is_initialized():
        joining = bool(os.environ.get("RAY_ADDRESS"))
        options: dict = {}
        if not joining:  # a local Ray gets this machine's CPUs: refuse before starting it
            cpus = float(os.cpu_count() or 1)
            os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
            # No node of a Ray started here can be preempted: Ray Train's preemption watcher
            # (an actor per worker group, which logs an error line from Ray's C++ core as it
            # starts) has nothing to watch. On a cluster it stays on.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            if cfg is None:
                cpus = max(cpus, min_cpus)
            else:
                check_fits(cfg, {"CPU": cpus}, gpus_known=False)
            if streaming and cfg is not None:
                cpus = max(cpus, cfg.max_workers * cfg.cpus_per_worker + DATA_CPUS)
            options = {
                # "local": a Ray of this command's own, even when `ray start --head` runs on
                # this host (ray.init() would join that one, where num_cpus is refused)
                "address": "local",
                "include_dashboard": dashboard,
                "num_cpus": int(cpus),
                "runtime_env": {
                    "worker_process_setup_hook": "rayssl.cluster.quiet.setup_worker",
                    "env_vars": {
                        "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING),
                        **(allocator_env() if allocator else {}),
                    },
                },
            }
        with starting_ray():  # 1. start a local Ray, or join the cluster in RAY_ADDRESS
            with core_stderr(held=joining) as said:
                try:
                    context = ray.init(log_to_driver=True, logging_level=logging.WARNING, **options)
                except Exception as exc:  # Ray raises many types for a cluster it cannot join
                    if not joining:
                        raise
                    said.failed = True
                    raise ConfigError(
                        cannot_join(os.environ["RAY_ADDRESS"], exc, said.text())
                    ) from None
        session = (getattr(context, "address_info", None) or {}).get("session_dir")
        logs = f"{session}/logs" if session else None
        _STARTED[ray.get_runtime_context().gcs_address] = logs
    else:  # started or joined by an earlier call of this command (e.g. to index shards)
        logs = _STARTED.get(ray.get_runtime_context().gcs_address)
    if cfg is not None:
        check_fits(cfg, ray.cluster_resources(), streaming=streaming)
    return logs


class _Held:
    def __init__(self, file):
        self.file, self.failed = file, False

    def text(self) -> str:
        if self.file is None:
            return ""
        self.file.seek(0)
        return self.file.read().decode(errors="replace")


@contextlib.contextmanager
def core_stderr(held: bool):
    """While joining a cluster, hold what Ray's C++ core writes to stderr (it retries a
    refused token once a second, a line each time): replayed if the join succeeds, read
    for the one-line reason if it fails. Hand-written: the core writes to file descriptor
    2 directly, past Python's logging."""
    if not held:
        yield _Held(None)
        return
    sys.stderr.flush()
    saved, file = os.dup(2), tempfile.TemporaryFile()
    said = _Held(file)
    os.dup2(file.fileno(), 2)
    try:
        yield said
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if not said.failed:
            sys.stderr.write(said.text())
        file.close()


def cannot_join(address: str, exc: BaseException, core_said: str = "") -> str:
    """One line for a cluster in RAY_ADDRESS that ray.init cannot join: what it said, and
    the usual fix (a token-auth cluster needs its token)."""
    from rayssl.errors import first_line

    reason = first_line(exc)[:240]
    told = f"{exc} {core_said}".lower()
    if "authenticat" in told or "token" in told:
        reason = "it refused this process's authentication token"
        fix = (
            "the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
            "(or RAY_AUTH_TOKEN_PATH) to its token"
        )
    else:
        fix = "check that the cluster runs and RAY_ADDRESS names its head (host:port)"
    return f"RAY_ADDRESS '{address}': cannot join that Ray cluster ({reason}); {fix}"


def check_fits(
    cfg: TrainConfig, resources: dict[str, float], gpus_known: bool = True, streaming=False
) -> None:
    """One line (exit 2) when the run's workers (and, `streaming`, one Ray Data task) cannot
    all be placed on the cluster. An elastic run needs room for its minimum."""
    cpus_needed = cfg.min_workers * cfg.cpus_per_worker
    if streaming and cpus_needed + DATA_CPUS > resources.get("CPU", 0):
        raise ConfigError(
            f"num_workers x cpus_per_worker = {cpus_needed:g} CPUs leaves none of the Ray "
            f"cluster's {resources.get('CPU', 0):g} for streaming the training data (Ray Data "
            "needs 1); lower num_workers or cpus_per_worker, or set data.in_memory: true"
        )
    if cpus_needed > resources.get("CPU", 0):
        raise ConfigError(
            f"num_workers x cpus_per_worker = {cpus_needed:g} CPUs, but the Ray cluster has "
            f"{resources.get('CPU', 0):g}; lower num_workers or cpus_per_worker"
        )
    if gpus_known and cfg.use_gpu and cfg.min_workers > resources.get("GPU", 0):
        raise ConfigError(
            f"use_gpu with num_workers={cfg.min_workers} needs {cfg.min_workers} GPUs, the Ray "
            f"cluster has {resources.get('GPU', 0):g}; lower num_workers or set use_gpu: false"
        )
