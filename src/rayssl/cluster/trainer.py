"""The TorchTrainer of one run (`rayssl train`, and one per multi-worker Tune trial); the
typed arguments its workers get are in `entry.py`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayssl.cluster.entry import WorkerArgs, train_func
from rayssl.cluster.start import RAY_TRAIN_ENV, allocator_env

if TYPE_CHECKING:
    from rayssl.config import TrainConfig
    from rayssl.runs.storage import Storage


def build_trainer(
    cfg: TrainConfig,
    splits_ref: Any,
    storage: Storage,
    run: str,
    callbacks: list | None = None,
    *,
    train_fn: Callable[[dict[str, Any]], Any] = train_func,
    stream: Any = None,
    **worker: Any,
):
    """The TorchTrainer of one run. `stream` (a `data.Stream`) adds the Ray Data dataset
    whose shards the workers train on; `worker` sets the other `WorkerArgs` fields.
    `cfg.num_workers == 0` is Ray Train's local mode: the loop runs in this process and
    rayssl writes the run's checkpoints itself (local mode keeps them only in memory)."""
    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    args = WorkerArgs(
        config=cfg.record(),
        splits=splits_ref,
        run_dir=storage.path(run),
        local_run=(storage.uri, run) if cfg.num_workers == 0 else None,
        # local storage only: fault injection is for tests on one machine
        crash_marker=str(Path(storage.uri) / run / ".rayssl-crash-injected"),
        **worker,
    )
    ck = cfg.checkpoint
    gpu = {"GPU": 1} if cfg.use_gpu else {}
    elastic = {"elastic_resize_monitor_interval_s": cfg.elastic_check_s} if cfg.elastic else {}
    return TorchTrainer(  # 3. Ray Train: one worker group of the run, restarted on failure
        train_fn,
        train_loop_config={"args": args},
        datasets=None if stream is None else {"train": stream.dataset(cfg.data.read_concurrency)},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            **elastic,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **gpu},
        ),
        run_config=RunConfig(
            name=run,
            storage_path=storage.uri,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=ck.num_to_keep,
                checkpoint_score_attribute=ck.score_attribute,
                checkpoint_score_order=ck.score_order,
            ),
            callbacks=callbacks,
            # glibc's malloc as the training step wants it (cluster/start.py: ALLOCATOR_ENV);
            # worker_runtime_env is Ray Train's DeveloperAPI, public
            worker_runtime_env={"env_vars": allocator_env()},
            # Ray Train's per-report INFO lines drown rayssl's own progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
