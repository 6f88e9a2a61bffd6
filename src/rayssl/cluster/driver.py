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
from typing import Any

import torch

from rayssl import seeds
from rayssl.build import build_method
from rayssl.cluster.faults import CRASH_ENV
from rayssl.cluster.quiet import report_logs
from rayssl.cluster.records import draw_curves, open_mlflow, summarize, worker_error
from rayssl.cluster.start import init_ray
from rayssl.cluster.trainer import build_trainer, train_func
from rayssl.config import PROBE_METRICS, ConfigError, TrainConfig
from rayssl.data import Splits, input_normalizer, load_splits
from rayssl.engine.inputs import Inputs
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
    try:
        return _fit(
            cfg, resume, train_fn, crash_after_epoch, launched_at or entered, dashboard, claim
        )
    finally:
        for handle in claim:
            if handle is not None:  # None: an object store, which has no lock
                os.close(handle)


def _fit(cfg, resume, train_fn, crash_after_epoch, launched_at, dashboard, claim) -> dict:
    import ray

    local = cfg.num_workers == 0
    storage = run = saved = initial = ray_logs = chosen = None
    if resume:  # the run's own record decides what its config left open
        storage, run, saved, chosen = _saved_run(cfg, claim)
    # a resumed run's backbone weights are in its checkpoint: init_from is not read again
    splits, method_state = preflight(cfg, read_init_from=saved is None)
    if resume:
        initial = _state_ray_never_saw(cfg, storage, run, saved, method_state, chosen)
    else:  # a storage_path that cannot be written fails here, before Ray starts
        storage = Storage.resolve(cfg.storage_path)
    if local:  # local mode needs no Ray cluster at all; rayssl prints its own progress
        report_logs(local=True)
    else:
        ray_logs = init_ray(cfg, dashboard=dashboard, streaming=splits.reads_storage)
    if not resume:  # reserves the run's folder: only once the inputs and the cluster passed
        run = pick_run_name(cfg, storage, resume)
        claim.append(storage.claim(run))
    if crash_after_epoch is None:
        crash_after_epoch = int(os.environ.get(CRASH_ENV, "0") or 0)
    if resume:
        _drop_unregistered_checkpoints(storage, run)
    mlflow_run = open_mlflow(cfg, run)
    trainer = build_trainer(
        cfg,
        splits if local else ray.put(splits),  # 2. the data, once, in the object store
        storage,
        run,
        train_fn=train_fn,
        stream=splits.stream,
        crash_after_epoch=crash_after_epoch,
        launched_at=launched_at,
        initial_checkpoint=initial,
        initial_is_resume=initial is not None,
        # Ray Train restores its newest checkpoint; a damaged one is passed over for `initial`
        skip_checkpoint=storage.latest_checkpoint(run) if resume and initial else None,
        mlflow=(cfg.tracking.mlflow_uri, mlflow_run.run_id) if mlflow_run else None,
        # a checkpoint mid-epoch on a preemption notice (not under Tune: its trials'
        # reports are epochs, and ASHA and PBT act on each)
        preemption_checkpoints=True,
    )
    return _run_and_record(cfg, trainer, storage, run, mlflow_run, local, ray_logs)


def _saved_run(cfg: TrainConfig, claim: list) -> tuple[Storage, str, dict, str]:
    """The newest run of this name, claimed for this driver before anything else (two
    resumes started together: one trains, the other is one line), and its latest state;
    the state settles what this config leaves open."""
    storage = Storage.resolve(cfg.storage_path)
    run = pick_run_name(cfg, storage, True)
    claim.append(storage.claim(run))
    record = storage.read_json(run, RUN_RECORD)
    if record.get("status") == "running" and driver_alive(record):
        raise ConfigError(
            f"--resume: run '{run}' is still running (its driver is process {record['pid']} "
            "on this host); wait for it to end or stop it, then resume"
        )
    saved, chosen = _newest_readable_state(storage, run)
    if cfg.data.normalize is None and saved["config"]["data"].get("normalize"):
        cfg.data.normalize = saved["config"]["data"]["normalize"]  # e.g. init_from's
    cfg.settle_older_checkpoint(saved["config"])  # options added since it was written
    return storage, run, saved, chosen


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
    cfg, trainer, storage: Storage, run: str, mlflow_run, local: bool, ray_logs: str | None
) -> dict:
    """Run the trainer between two run records ("running", then "finished" or "failed"),
    then write the summary. The records come first: a picture or a tracking store that
    fails must not leave a finished run reading "running" (the extras warn, never raise)."""
    from ray.train import TrainingFailedError

    started = time.time()
    record = _start_record(cfg, storage, run, started)
    try:
        try:
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


# ============================================================================ preflight


def preflight(
    cfg: TrainConfig, read_init_from: bool = True
) -> tuple[Splits, dict[str, torch.Tensor]]:
    """Load the data and push two samples through the method on the driver, so bad data or a
    backbone that cannot take it fails with one line before Ray starts. Reads
    `backbone.init_from` (unless `read_init_from` is off: a resume has the weights) and
    adopts its normalisation where the config sets none."""
    splits = load_splits(cfg.data, cfg.seed)
    if cfg.backbone.init_from and read_init_from:
        from rayssl.runs import pretrained

        splits.pretrained = pretrained.read(cfg.backbone.init_from)
        adopt_normalization(cfg, splits.pretrained.normalize)
    input_normalizer(cfg.data, splits)  # its channel count is checked against the data
    _check_data_fits_run(cfg, splits)
    if cfg.tracking is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tracking.mlflow_uri needs MLflow, an optional extra: pip install -e "
                "'.[mlflow]' (or pip install mlflow), or remove tracking"
            ) from None
    return splits, _two_samples_through_the_method(cfg, splits)


def _check_data_fits_run(cfg: TrainConfig, splits: Splits) -> None:
    """What the data must offer this run: labels, local access, probes, image layout."""
    if not splits.labeled and cfg.method == "supervised":
        raise ConfigError(
            f"data.path '{cfg.data.path}' holds images without labels (no class folders); "
            "a supervised run needs one subfolder per class"
        )
    if splits.stream is not None and cfg.num_workers == 0:
        raise ConfigError(
            f"data.path '{cfg.data.path}' decodes to more than 1 GiB, so it streams through "
            "Ray Data, which local mode (num_workers 0) cannot: set num_workers >= 1, or "
            "data.in_memory: true"
        )
    if cfg.method == "supervised" and splits.labeled and splits.num_classes < 2:
        raise ConfigError(
            f"data '{cfg.data.name}'{f' ({cfg.data.path})' if cfg.data.path else ''} has one "
            "class; supervised training needs labels of 2 or more classes (an image folder: "
            "one subfolder per class)"
        )
    if cfg.method != "supervised" and splits.probe_sets(cfg.seed) is None:
        from rayssl.inference.evaluate import no_probe_reason

        reason = no_probe_reason(splits)
        if cfg.early_stopping and cfg.early_stopping.monitor in PROBE_METRICS:
            raise ConfigError(f"early_stopping.monitor '{cfg.early_stopping.monitor}': {reason}")
        print(f"[rayssl] note: probes skipped: {reason}", flush=True)
    if cfg.performance.channels_last and len(splits.sample_shape) != 3:
        raise ConfigError(
            f"performance.channels_last needs image samples (C, H, W); data '{cfg.data.name}' "
            f"gives {splits.sample_shape}: set performance.channels_last=false"
        )


def _two_samples_through_the_method(cfg: TrainConfig, splits: Splits) -> dict:
    """Build the method and run a validation step on two training samples' views; return
    the method's initial state (a resume checks its checkpoint against it)."""
    try:
        seeds.seed_everything(cfg.seed)
        method = build_method(
            cfg,
            splits.sample_shape,
            splits.num_classes,
            selection_sample=splits.train[0],
            pretrained=splits.pretrained,
        )
        method.eval()
        with torch.no_grad():
            method.validation_step((preflight_views(cfg, splits, method), splits.train[1][:2]))
    except ConfigError:  # its own line already (backbone.init_from that does not fit)
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        size = cfg.data.augment.image.size if cfg.data.augment.image else None
        resized = f", resized to {size}x{size} by data.augment.image.size" if size else ""
        raise ConfigError(
            f"backbone '{cfg.backbone.name}' / head '{cfg.head.name}' cannot take samples of "
            f"shape {splits.sample_shape}{resized} from data '{cfg.data.name}': "
            f"{first_line(exc, with_type=False)}"
        ) from None
    return method.state_dict()


def preflight_views(cfg: TrainConfig, splits: Splits, method) -> Any:
    """Two training samples through the configured views and normalisation, as the loop
    makes them: a pipeline that cannot take the data is one line here, not a worker's
    traceback (image views on non-image data, an `augment.image.size` the backbone
    cannot take is caught by the method's step right after)."""
    x = splits.train[0][:2].float()
    g = torch.Generator().manual_seed(cfg.seed)
    try:
        return Inputs(method, cfg, splits).views(x, g)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        image = " (image views need (C, H, W) images)" if cfg.data.augment.image else ""
        raise ConfigError(
            f"data.augment cannot make views of samples of shape {splits.sample_shape} from "
            f"data '{cfg.data.name}'{image}: {first_line(exc, with_type=False)}"
        ) from None


def adopt_normalization(cfg: TrainConfig, stats: dict[str, list[float]] | str | None) -> None:
    """A pretrained backbone saw inputs normalised by `stats` ({mean, std}, or "sample":
    each input by its own): a config without `data.normalize` uses them too (said in one
    line); one that sets something else is warned about, and its own setting is kept."""
    if not stats:
        return
    wanted = cfg.data.normalize
    if stats == "sample":
        if wanted is None:
            cfg.data.normalize = "sample"
            print("[rayssl] note: data.normalize 'sample' from backbone.init_from", flush=True)
        elif wanted != "sample":
            print(
                "[rayssl] warning: backbone.init_from was trained on inputs normalised per "
                "sample (data.normalize: sample); this run's data.normalize differs",
                flush=True,
            )
        return
    if wanted is None:
        cfg.data.normalize = {"mean": stats["mean"], "std": stats["std"]}
        print(
            f"[rayssl] note: data.normalize from backbone.init_from: mean {stats['mean']}, "
            f"std {stats['std']}",
            flush=True,
        )
    elif isinstance(wanted, str) or [wanted.mean, wanted.std] != [stats["mean"], stats["std"]]:
        print(
            f"[rayssl] warning: backbone.init_from was trained on inputs normalised with mean "
            f"{stats['mean']}, std {stats['std']}; this run's data.normalize differs",
            flush=True,
        )
