"""What Ray Train hands every worker: the typed arguments (`WorkerArgs`) and the function
it runs (`train_func`). Kept free of heavy imports: Ray Train's controller and each worker
unpickle these before anything else, and whatever this module imports, each of those
processes imports first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerArgs:
    """What every Ray Train worker of a run gets (as `train_loop_config["args"]`)."""

    config: dict[str, Any]  # the TrainConfig as JSON types
    splits: Any  # the data: an object-store reference (workers) or the Splits (local mode)
    run_dir: str  # the run's folder: TensorBoard curves (rank 0)
    local_run: tuple[str, str] | None = None  # local mode: (storage uri, run); rayssl saves
    marks: dict[str, float] = field(default_factory=dict)  # the driver's start-up timeline
    initial_checkpoint: Any = None  # a state to start from when Ray Train has none
    initial_is_resume: bool = False  # ... and it is this run's own (else PBT's donor)
    skip_checkpoint: str | None = None  # Ray's newest, damaged: start from initial instead
    mlflow: tuple[str, str] | None = None  # (tracking URI, MLflow run id): rank 0 logs
    wandb: dict[str, Any] | None = None  # tracking.wandb of a `rayssl train` run: rank 0 logs
    preemption_checkpoints: bool = False  # a checkpoint mid-epoch on a preemption notice
    crash_after_epoch: int | None = None  # fault injection for tests (faults.py)
    crash_marker: str = ""


def train_func(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point (returns nothing: Ray would pickle a return value)."""
    from rayssl.cluster.worker import run_worker

    run_worker(config)
