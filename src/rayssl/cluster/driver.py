"""`rayssl train` on the driver: check the inputs before Ray starts, start the run on Ray
Train, keep the run record, and write the summary.

    fit(cfg)                  # a new run
    fit(cfg, resume=True)     # the newest run of this name, from its latest checkpoint
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayssl.cluster.checks import preflight
from rayssl.cluster.entry import train_func
from rayssl.cluster.faults import CRASH_ENV
from rayssl.cluster.quiet import report_logs
from rayssl.cluster.records import draw_curves, open_mlflow, summarize, worker_error
from rayssl.cluster.start import init_ray
from rayssl.cluster.trainer import build_trainer
from rayssl.config import ConfigError, TrainConfig
from rayssl.data import Splits
from rayssl.errors import first_line
from rayssl.runs.state import DamagedCheckpoint
from rayssl.runs.storage import (
    RUN_RECORD,
    Storage,
    check_resumable,
    driver_alive,
    pick_run_name,
)


class RunFailed(RuntimeError):
    """The run failed after it started: exit code 1, or 2 when `bad_input` (a data file)."""

    def __init__(self, message: str, bad_input: bool = False):
        super().__init__(message)
        self.bad_input = bad_input


def fit(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    train_fn: Callable[[dict[str, Any]], Any] = train_func,
    crash_after_epoch: int | None = None,
    launched_at: float | None = None,
    dashboard: bool = False,
) -> dict[str, Any]:
    """Validate inputs, run the TorchTrainer, write `summary.json`; return the summary.

    `dashboard`: start the Ray dashboard with an embedded local Ray (off: faster start).
    `launched_at` (time.time() when the command started; default: now) is what the reported
    `start_to_first_step_s` counts from. `crash_after_epoch` (default: the
    RAYSSL_CRASH_AFTER_EPOCH environment variable) is fault injection for tests: the first
    attempt's workers fail after that epoch."""
    entered = time.time()
    claim: list = []  # the lock on the run's folder, held until this function returns
    # the start-up timeline (engine/metrics.py: STARTUP_MARKS); the workers get it with the
    # marks made before trainer.fit
    marks = {"launched": launched_at or entered, "imported": entered}
    try:
        return _fit(cfg, resume, train_fn, crash_after_epoch, marks, dashboard, claim)
    finally:
        for handle in claim:
            if handle is not None:  # None: an object store, which has no lock
                os.close(handle)


@dataclass
class Prepared:
    """A run ready to start: its config as it will train (a resume's settled by its
    checkpoint), its data, its storage, and for a resume its folder and where Ray Train
    starts from."""

    cfg: TrainConfig
    splits: Splits
    storage: Storage
    run: str | None = None  # a new run's folder is reserved once the cluster is up
    initial: Any = None  # a checkpoint Ray Train would not restore itself
    skip: str | None = None  # Ray Train's newest checkpoint, when it is damaged


def _fit(cfg, resume, train_fn, crash_after_epoch, marks, dashboard, claim) -> dict:
    import ray

    ready = _prepare_resume(cfg, claim) if resume else _prepare_new_run(cfg)
    cfg, splits, storage = ready.cfg, ready.splits, ready.storage
    marks["checked"] = time.time()
    local, ray_logs = cfg.num_workers == 0, None
    if local:  # local mode needs no Ray cluster at all; rayssl prints its own progress
        report_logs(local=True)
    else:
        ray_logs = init_ray(cfg, dashboard=dashboard, streaming=splits.reads_storage)
    marks["ray_started"] = time.time()
    run = ready.run
    if run is None:  # reserves the new run's folder: only once the inputs and cluster passed
        run = pick_run_name(cfg, storage, resume=False)
        claim.append(storage.claim(run))
    if crash_after_epoch is None:
        crash_after_epoch = int(os.environ.get(CRASH_ENV, "0") or 0)
    mlflow_run = open_mlflow(cfg, run)
    trainer = build_trainer(
        cfg,
        splits if local else ray.put(splits),  # 2. the data, once, in the object store
        storage,
        run,
        train_fn=train_fn,
        stream=splits.stream,
        crash_after_epoch=crash_after_epoch,
        marks=marks,  # the same dict: _run_and_record adds fit_called before the fit
        initial_checkpoint=ready.initial,
        initial_is_resume=ready.initial is not None,
        skip_checkpoint=ready.skip,
        mlflow=(cfg.tracking.mlflow_uri, mlflow_run.run_id) if mlflow_run else None,
        wandb=cfg.tracking.wandb.model_dump() if cfg.tracking and cfg.tracking.wandb else None,
        # a checkpoint mid-epoch on a preemption notice (not under Tune: its trials'
        # reports are epochs, and ASHA and PBT act on each)
        preemption_checkpoints=True,
    )
    return _run_and_record(cfg, trainer, storage, run, mlflow_run, local, ray_logs, marks)


def _prepare_new_run(cfg: TrainConfig) -> Prepared:
    """A new run: its inputs checked (and `backbone.init_from` read) before Ray starts, and
    its storage_path written to (a folder that cannot take a run fails here)."""
    cfg, splits, _ = preflight(cfg)
    return Prepared(cfg, splits, Storage.resolve(cfg.storage_path))


def _prepare_resume(cfg: TrainConfig, claim: list) -> Prepared:
    """A resume: the newest run of this name claimed for this driver before anything else
    (two resumes started together: one trains, the other is one line), its newest readable
    state read, the config settled by it, the inputs checked against it (the backbone's
    weights are in the checkpoint: `init_from` is not read again), and the checkpoint
    folders nothing registered removed."""
    storage = Storage.resolve(cfg.storage_path)
    run = pick_run_name(cfg, storage, resume=True)
    claim.append(storage.claim(run))
    record = storage.read_json(run, RUN_RECORD)
    if record.get("status") == "running" and driver_alive(record):
        raise ConfigError(
            f"--resume: run '{run}' is still running (its driver is process {record['pid']} "
            "on this host); wait for it to end or stop it, then resume"
        )
    saved, chosen = _newest_readable_state(storage, run)
    cfg = _settled_by(cfg, saved["config"])
    cfg, splits, method_state = preflight(cfg, read_init_from=False)
    initial = _state_ray_never_saw(cfg, storage, run, saved, method_state, chosen)
    _drop_unregistered_checkpoints(storage, run)
    # Ray Train restores its newest checkpoint; a damaged one is passed over for `initial`
    skip = storage.latest_checkpoint(run) if initial else None
    return Prepared(cfg, splits, storage, run, initial, skip)


def _settled_by(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """What the run's own checkpoint decides that this config leaves open: its
    normalisation (e.g. from init_from), and options added since it was written."""
    if cfg.data.normalize is None and saved["data"].get("normalize"):
        cfg = cfg.updated({"data": {"normalize": saved["data"]["normalize"]}})
    return cfg.with_older_options(saved)


def _newest_readable_state(storage: Storage, run: str) -> tuple[dict, str]:
    """The state of `run`'s newest registered checkpoint that reads, and its name: a
    damaged state.pt (truncated, emptied, overwritten) is passed over for the older
    checkpoint the run keeps, with one note line; none readable is one line."""
    damaged = []
    for name in storage.registered_checkpoints(run):
        try:
            state = storage.read_state(run, name)
        except DamagedCheckpoint as exc:
            damaged.append(str(exc))
            continue
        for reason in damaged:
            print(f"[rayssl] note: passed over {reason}; resuming from {name}", flush=True)
        return state, name
    raise ConfigError(
        f"--resume: run '{run}' has no readable checkpoint"
        + (f" ({damaged[0]})" if damaged else "")
        + "; start the run again without --resume"
    )


def _state_ray_never_saw(cfg, storage: Storage, run: str, saved, method_state, chosen: str):
    """Check the resume, then: the chosen checkpoint as a state to start from if Ray Train
    would not restore it itself (local mode wrote it, Ray's newest is damaged), else None."""
    from ray.train import Checkpoint

    check_resumable(cfg, saved, run, method_state)
    if cfg.num_workers == 0 or not storage.registered_by_ray(run, chosen):
        return Checkpoint(storage.path(run, chosen))
    return None


def _drop_unregistered_checkpoints(storage: Storage, run: str) -> None:
    """Delete the checkpoint folders of `run` that nothing registered (an attempt failed
    while rank 0 was uploading one), so `num_to_keep` bounds what stays on disk. Not while
    the driver that wrote the run record still runs here: its upload may be in flight."""
    record = storage.read_json(run, RUN_RECORD)
    if record.get("status") == "running" and driver_alive(record) is not False:
        return
    for name in storage.unregistered_checkpoints(run):
        storage.delete_checkpoint(run, name)
        print(
            f"[rayssl] note: removed {name} of run '{run}': written while the run failed, "
            "never registered, never resumed from",
            flush=True,
        )


def _start_record(cfg, storage: Storage, run: str, started: float) -> dict:
    """Write the run record "running" (this driver's host and pid); a disk that cannot take
    it is one line, and the run's folder goes: nothing has run, nothing is kept."""
    record = {
        "status": "running",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "config": cfg.record(),
    }
    try:
        storage.write_text(run, RUN_RECORD, json.dumps(record))
    except OSError as exc:
        storage.remove_run(run)
        raise ConfigError(
            f"storage_path '{cfg.storage_path}': the run record of '{run}' cannot be written "
            f"({first_line(exc, with_type=False)}); free some space or choose another folder"
        ) from None
    return record


def _run_and_record(
    cfg,
    trainer,
    storage: Storage,
    run: str,
    mlflow_run,
    local: bool,
    ray_logs: str | None,
    marks: dict[str, float],
) -> dict:
    """Run the trainer between two run records ("running", then "finished" or "failed"),
    then write the summary. The records come first: a picture or a tracking store that
    fails must not leave a finished run reading "running" (the extras warn, never raise)."""
    from ray.train import TrainingFailedError

    started = time.time()
    record = _start_record(cfg, storage, run, started)
    try:
        try:
            marks["fit_called"] = time.time()  # read when fit() pickles the workers' args
            trainer.fit()  # 4. the run, with its restarts, until it ends
        except TrainingFailedError as exc:
            line = worker_error(exc)  # a file that cannot be decoded: bad input (exit 2)
            raise RunFailed(f"run '{run}' failed: {line}", line.startswith("ImageDecode")) from None
        except Exception as exc:  # local mode: the loop's own error, raised in this process
            if not local:
                raise
            raise RunFailed(f"run '{run}' failed: {first_line(exc)}") from None
    except RunFailed as exc:
        record.update(status="failed", error=str(exc), wall_time_s=time.time() - started)
        try:
            storage.write_text(run, RUN_RECORD, json.dumps(record))
        except OSError as write:  # the disk filled up: the run's end still gets its line
            raise RunFailed(
                f"{exc}; its run record could not be written either "
                f"({first_line(write, with_type=False)}): rayssl runs shows it as interrupted"
            ) from None
        if mlflow_run is not None:
            mlflow_run.close(None, error=str(exc))
        raise
    summary = summarize(cfg, run, storage, wall_s=time.time() - started)
    summary["ray_logs"] = ray_logs
    summary["curves"] = storage.path(run, "curves.png")
    try:
        summary["path"] = storage.write_text(run, "summary.json", json.dumps(summary, indent=2))
        record.update(status="finished", wall_time_s=summary["wall_time_s"])
        storage.write_text(run, RUN_RECORD, json.dumps(record))
    except OSError as exc:  # the disk filled up after the last checkpoint
        raise RunFailed(
            f"run '{run}' trained every epoch (its checkpoints are kept), but its summary "
            f"cannot be written ({first_line(exc, with_type=False)}); free some space, then "
            "rayssl eval or --resume it"
        ) from None
    if not draw_curves(storage, run, summary["history"]):
        summary["curves"] = None
    if mlflow_run is not None:
        mlflow_run.close(summary)
    return summary
