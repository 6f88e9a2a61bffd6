"""Run the per-worker loop on Ray Train: `train_func` on every worker, `fit` on the driver."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rayssl.build import build_method
from rayssl.config import ConfigError, TrainConfig
from rayssl.data import Splits, input_normalizer, load_splits
from rayssl.errors import first_line
from rayssl.faults import CRASH_ENV, after_epoch_hook
from rayssl.loop import PROBE_METRICS, Loop, build_loop
from rayssl.state import load_state, save_state, seed_everything
from rayssl.storage import RUN_RECORD, Storage, check_resumable, pick_run_name


class RunFailed(RuntimeError):
    """The training run failed after it started (exit code 1)."""


# ============================================================================ workers


def train_func(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point (returns nothing: Ray would pickle a return value)."""
    run_worker(config)


def run_worker(config: dict[str, Any]) -> Loop:
    """Build, restore, train, report every epoch; return the finished loop (for wrappers
    that inspect a worker's final state)."""
    import ray.train

    loop = build_worker_loop(config)
    cfg, rank, world_size = loop.cfg, loop.rank, loop.world_size
    checkpoint = ray.train.get_checkpoint()
    # A state to start from when Ray Train has none of its own: PBT's donor, or a --resume
    # of a checkpoint that rayssl's local mode wrote (Ray never registered it).
    initial = config.get("initial_checkpoint")
    if checkpoint is not None or initial is not None:
        with (checkpoint or initial).as_directory() as directory:
            state = load_state(directory)
        loop.load_state_dict(state)
        if checkpoint is None and not config.get("initial_is_resume"):
            loop.adopt_hyperparameters(state["config"])
        else:
            loop.state.resumed_at.append(loop.state.epoch)  # a restart or --resume
    first_epoch = loop.state.epoch
    if loop.is_over():
        # Restarted after its last checkpoint (early stop, the method's own stop, or a Tune
        # trial whose driver died before it saw the final report): train nothing, report the
        # final metrics once more so the caller has them.
        ray.train.report(loop.state.history[-1])
        return loop
    loop.launched_at = config.get("launched_at")
    local_run = config.get("local_run")  # local mode: (storage uri, run), rayssl persists
    curves = mlflow_run = None
    if rank == 0 and config.get("run_dir"):
        from rayssl.tracking import MLflowRun, TensorBoard

        curves = TensorBoard(config["run_dir"], loop.state.history)
        if config.get("mlflow"):
            mlflow_run = MLflowRun(*config["mlflow"])
            mlflow_run.sync(loop.state.history)  # epochs an earlier attempt did not log

    if config.get("preemption_checkpoints") and local_run is None:
        loop.preemption_notice = lambda: ray.train.get_preemption_info() is not None
        loop.save_now = lambda: _save_on_preemption(loop)

    started = time.perf_counter()
    for metrics in loop.epochs():
        rng_states = _gather(loop.rank_state(), world_size)
        if local_run is not None:
            storage = Storage(local_run[0])
            storage.save_local_checkpoint(
                local_run[1], loop.state_dict(rng_states), cfg.checkpoint.num_to_keep
            )
            ray.train.report(metrics)  # local mode would only keep a checkpoint in memory
        else:
            _report_checkpoint(loop, metrics, rng_states)
        if rank == 0:
            print(progress_line(metrics, cfg, loop.state.epoch - first_epoch, started), flush=True)
        if curves is not None:  # after the checkpoint: a restart rewrites from its history
            curves.log(metrics)
        if mlflow_run is not None:
            mlflow_run.sync(loop.state.history)
        after_epoch_hook(config, loop.state.epoch, rank)  # TEST HOOK: no-op unless asked
    if curves is not None:
        curves.close()
    return loop


def _save_on_preemption(loop: Loop) -> None:
    """Every rank: a node of this run is being preempted; report a checkpoint of the state
    mid-epoch now, so the restart (on the nodes left, or a resized group) loses at most the
    steps since. The report carries the last epoch's metrics (a keep-best checkpoint policy
    needs its score) and the step it was taken at."""

    rng_states = _gather(loop.rank_state(), loop.world_size)
    state = loop.state
    metrics = {**(state.history[-1] if state.history else {}), "step": state.global_step}
    metrics["preemption_checkpoint_step_in_epoch"] = state.step_in_epoch
    ck = loop.cfg.checkpoint
    if ck.score_attribute and ck.score_attribute not in metrics:
        metrics[ck.score_attribute] = float("-inf" if ck.score_order == "max" else "inf")
    _report_checkpoint(loop, metrics, rng_states)
    if loop.rank == 0:
        print(
            f"[rayssl] preemption notice: checkpoint saved at epoch {state.epoch + 1}, step "
            f"{state.step_in_epoch} of {loop.steps_per_epoch}",
            flush=True,
        )


def _report_checkpoint(loop: Loop, metrics: dict[str, Any], rng_states: list[Any]) -> None:
    """Every rank reports `metrics`; rank 0 attaches the checkpoint of the loop's state."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if loop.rank == 0:
            save_state(loop.state_dict(rng_states), tmp)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def build_worker_loop(config: dict[str, Any]) -> Loop:
    """This Ray Train worker's `Loop`: its rank, device and DDP wrapping from Ray Train."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["config"])
    _quiet_report_logs(local=cfg.num_workers == 0)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    splits = config["splits"]
    if not isinstance(splits, Splits):  # an object-store reference (workers), else local mode
        splits = ray.get(splits)
    return build_loop(
        cfg,
        splits,
        rank=rank,
        world_size=world_size,
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,
        train_shard=ray.train.get_dataset_shard("train") if splits.stream else None,
    )


def _quiet_report_logs(local: bool = False) -> None:
    """Ray Train logs every report at INFO under a logger named after its source file, which
    its LoggingConfig does not reach; rayssl prints its own one-line progress instead.
    (Private module path: guarded, only the log level depends on it.)"""
    import logging

    if local:  # local mode logs through the "ray.train" loggers of this process
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def preflight_views(cfg: TrainConfig, splits: Splits, method) -> Any:
    """Two training samples through the configured views and normalisation, as the loop
    makes them: a pipeline that cannot take the data is one line here, not a worker's
    traceback (image views on non-image data, an `augment.image.size` the backbone
    cannot take is caught by the method's step right after)."""
    from rayssl.data import Augment

    x = splits.train[0][:2].float()
    augment = Augment(cfg.data.augment)
    normalize = input_normalizer(cfg.data, splits) or (lambda t: t)
    g = torch.Generator().manual_seed(cfg.seed)
    try:
        if method.num_views > 1:
            multi_crop = getattr(method, "multi_crop", False)
            return tuple(normalize(v) for v in augment.views(x, g, method.num_views, multi_crop))
        return normalize(augment(x, g) if augment.active else x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        image = " (image views need (C, H, W) images)" if cfg.data.augment.image else ""
        raise ConfigError(
            f"data.augment cannot make views of samples of shape {splits.sample_shape} from "
            f"data '{cfg.data.name}'{image}: {first_line(exc, with_type=False)}"
        ) from None


def adopt_normalization(cfg: TrainConfig, stats: dict[str, list[float]] | None) -> None:
    """A pretrained backbone saw inputs normalised by `stats`: a config without
    `data.normalize` uses them too (said in one line); one that sets other values is
    warned about, and its own values are kept."""
    if not stats:
        return
    wanted = cfg.data.normalize
    if wanted is None:
        cfg.data.normalize = {"mean": stats["mean"], "std": stats["std"]}
        print(
            f"[rayssl] note: data.normalize from backbone.init_from: mean {stats['mean']}, "
            f"std {stats['std']}",
            flush=True,
        )
    elif wanted == "dataset" or [wanted.mean, wanted.std] != [stats["mean"], stats["std"]]:
        print(
            f"[rayssl] warning: backbone.init_from was trained on inputs normalised with mean "
            f"{stats['mean']}, std {stats['std']}; this run's data.normalize differs",
            flush=True,
        )


def progress_line(metrics: dict[str, float], cfg: TrainConfig, done: int, started: float) -> str:
    """One short line per epoch: loss, the headline metric, throughput and ETA."""
    epoch = int(metrics["epoch"])
    per_epoch = (time.perf_counter() - started) / max(done, 1)
    eta = per_epoch * (cfg.epochs - epoch)
    parts = [f"[rayssl] epoch {epoch}/{cfg.epochs}", f"train_loss {metrics['train_loss']:.4f}"]
    for key in ("val_accuracy", "val_loss", "test_accuracy", "knn_acc", "linear_acc"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    parts += [f"{metrics['samples_per_s']:,.0f} samples/s", f"ETA {eta:.0f}s"]
    return "  ".join(parts)


# ============================================================================ driver


def preflight(
    cfg: TrainConfig, read_init_from: bool = True
) -> tuple[Splits, dict[str, torch.Tensor]]:
    """Load the data and push two samples through the method on the driver, so bad data or a
    backbone that cannot take it fails with one line before Ray starts. Reads
    `backbone.init_from` (unless `read_init_from` is off: a resume has the weights) and
    adopts its normalisation where the config sets none."""
    splits = load_splits(cfg.data, cfg.seed)
    if cfg.backbone.init_from and read_init_from:
        from rayssl import pretrained

        splits.pretrained = pretrained.read(cfg.backbone.init_from)
        adopt_normalization(cfg, splits.pretrained.normalize)
    input_normalizer(cfg.data, splits)  # its channel count is checked against the data
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
    if cfg.method != "supervised" and splits.probe_sets(cfg.seed) is None:
        from rayssl.evaluate import no_probe_reason

        reason = no_probe_reason(splits)
        if cfg.early_stopping and cfg.early_stopping.monitor in PROBE_METRICS:
            raise ConfigError(f"early_stopping.monitor '{cfg.early_stopping.monitor}': {reason}")
        print(f"[rayssl] note: probes skipped: {reason}", flush=True)
    if cfg.performance.channels_last and len(splits.sample_shape) != 3:
        raise ConfigError(
            f"performance.channels_last needs image samples (C, H, W); data '{cfg.data.name}' "
            f"gives {splits.sample_shape}: set performance.channels_last=false"
        )
    if cfg.tracking is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tracking.mlflow_uri needs MLflow, an optional extra: pip install -e "
                "'.[mlflow]' (or pip install mlflow), or remove tracking"
            ) from None
    try:
        seed_everything(cfg.seed)
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
    return splits, method.state_dict()


def init_ray(cfg: TrainConfig, dashboard: bool = False, streaming: bool = False) -> str | None:
    """Join the cluster in RAY_ADDRESS (set for jobs), else start a local Ray: quietly (no
    INFO banner, no token-auth notice) and without a dashboard unless `dashboard`. Returns
    the folder of Ray's own logs (None if Ray was already initialised here).

    `streaming`: the run reads its training data through Ray Data, whose read and decode
    tasks need a CPU beside the workers' (Ray Train keeps the workers' CPUs from Ray Data):
    a local Ray then gets one logical CPU more than the workers take if this machine has
    none to spare (the tasks share the cores with the workers), and a cluster must have it."""
    import logging

    import ray

    logs = None
    if not ray.is_initialized():
        joining = bool(os.environ.get("RAY_ADDRESS"))
        cpus = float(os.cpu_count() or 1)
        if not joining:  # a local Ray gets this machine's CPUs: refuse before starting it
            os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
            # No node of a Ray started here can be preempted: Ray Train's preemption watcher
            # (an actor per worker group, which logs an error line from Ray's C++ core as it
            # starts) has nothing to watch. On a cluster it stays on.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            _check_fits(cfg, {"CPU": cpus}, gpus_known=False)
            if streaming:
                cpus = max(cpus, cfg.max_workers * cfg.cpus_per_worker + DATA_CPUS)
        # Ray logs a notice about token authentication each time it starts a local cluster;
        # rayssl's embedded cluster is private to this command, so keep the notice in Ray's
        # log files only. (Logger names are Ray's; a rename only brings the notice back.)
        quiet = [logging.getLogger(n) for n in ("ray", "ray._private", "ray._common")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            context = ray.init(
                log_to_driver=True,
                logging_level=logging.WARNING,
                **(
                    {}
                    if joining
                    else {
                        "include_dashboard": dashboard,
                        "num_cpus": int(cpus),
                        "runtime_env": {
                            "worker_process_setup_hook": "rayssl.quiet.setup_worker",
                            "env_vars": {"RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING)},
                        },
                    }
                ),
            )
        finally:
            for lg, level in zip(quiet, levels, strict=True):
                lg.setLevel(level)
        session = (getattr(context, "address_info", None) or {}).get("session_dir")
        logs = f"{session}/logs" if session else None
    _check_fits(cfg, ray.cluster_resources(), streaming=streaming)
    return logs


RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
DATA_CPUS = 1  # Ray Data's read / decode tasks take 1 CPU each; one must be free beside workers


def _check_fits(
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


# Ray Train's controller collects worker reports when it polls them (every 2 s by default),
# and a worker's report blocks until collected: with short epochs that poll dominated the run.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Without this, Ray Train routes print() through a logger that echoes it a second time.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def build_trainer(
    cfg: TrainConfig,
    splits_ref: Any,
    storage: Storage,
    run: str,
    callbacks: list | None = None,
    *,
    train_fn: Callable[[dict[str, Any]], Any] = train_func,
    crash_after_epoch: int | None = None,
    launched_at: float | None = None,
    stream: Any = None,
    initial_checkpoint: Any = None,
    initial_is_resume: bool = False,
):
    """The TorchTrainer of one run (also used by `rayssl tune`, one per trial). `stream`
    (a `data.Stream`) adds the Ray Data dataset whose shards the workers train on;
    `initial_checkpoint` is a state to start from when the run has none of its own (PBT's
    donor; or, with `initial_is_resume`, this run's own checkpoint that Ray never saw).
    `cfg.num_workers == 0` is Ray Train's local mode: the loop runs in this process and
    rayssl writes the run's checkpoints itself (local mode keeps them only in memory)."""
    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ck = cfg.checkpoint
    datasets = None
    if stream is not None:
        datasets = {"train": stream.dataset(cfg.data.read_concurrency)}
    return TorchTrainer(
        train_fn,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "splits": splits_ref,
            "crash_after_epoch": crash_after_epoch,
            # local storage only: fault injection is for tests on one machine
            "crash_marker": str(Path(storage.uri) / run / ".rayssl-crash-injected"),
            "launched_at": launched_at,
            "initial_checkpoint": initial_checkpoint,
            "initial_is_resume": initial_is_resume,
            "local_run": (storage.uri, run) if cfg.num_workers == 0 else None,
            "run_dir": storage.path(run),  # TensorBoard curves (rank 0)
        },
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            **({"elastic_resize_monitor_interval_s": cfg.elastic_check_s} if cfg.elastic else {}),
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
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
            # Ray Train's per-report INFO lines drown rayssl's own progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


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
    `start_to_first_step_s` counts from.

    `crash_after_epoch` (default: the RAYSSL_CRASH_AFTER_EPOCH environment variable) is
    fault injection for tests: the first attempt's workers fail after that epoch."""
    entered = time.time()
    import ray
    from ray.train import Checkpoint, TrainingFailedError

    local = cfg.num_workers == 0
    ray_logs = None
    saved = None
    if resume:  # the run's own record decides what its config left open
        storage = Storage.resolve(cfg.storage_path)
        run = pick_run_name(cfg, storage, resume)
        saved = storage.read_state(run, storage.latest_checkpoint(run))
        if cfg.data.normalize is None and saved["config"]["data"].get("normalize"):
            cfg.data.normalize = saved["config"]["data"]["normalize"]  # e.g. init_from's
        if "standardize_features" not in saved["config"].get("supervised", {}):
            cfg.supervised.standardize_features = False  # written before the option existed
    # a resumed run's backbone weights are in its checkpoint: init_from is not read again
    splits, method_state = preflight(cfg, read_init_from=saved is None)
    if not resume:  # a storage_path that cannot be written fails here, before Ray starts
        storage = Storage.resolve(cfg.storage_path)
    initial = None
    if resume:
        check_resumable(cfg, saved, run, method_state)
        latest = storage.latest_checkpoint(run)
        if local or not storage.registered_by_ray(run, latest):
            initial = Checkpoint(storage.path(run, latest))
    if local:  # local mode needs no Ray cluster at all; rayssl prints its own progress
        import logging

        logging.getLogger("ray.train").setLevel(logging.WARNING)
    else:
        ray_logs = init_ray(cfg, dashboard=dashboard, streaming=splits.stream is not None)
    if not resume:  # reserves the run's folder: only once the inputs and the cluster passed
        run = pick_run_name(cfg, storage, resume)
    if crash_after_epoch is None:
        crash_after_epoch = int(os.environ.get(CRASH_ENV, "0") or 0)
    mlflow_run = open_mlflow(cfg, run)
    trainer = build_trainer(
        cfg,
        splits if local else ray.put(splits),
        storage,
        run,
        train_fn=train_fn,
        crash_after_epoch=crash_after_epoch,
        launched_at=launched_at or entered,
        stream=splits.stream,
        initial_checkpoint=initial,
        initial_is_resume=initial is not None,
    )
    if mlflow_run is not None:  # rank 0 logs each epoch into it
        trainer.train_loop_config["mlflow"] = (cfg.tracking.mlflow_uri, mlflow_run.run_id)
    # a checkpoint mid-epoch on a preemption notice (not under Tune: its trials' reports
    # are epochs, and ASHA and PBT act on each)
    trainer.train_loop_config["preemption_checkpoints"] = True
    started = time.time()
    record = {
        "status": "running",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "config": cfg.model_dump(mode="json"),
    }
    storage.write_text(run, RUN_RECORD, json.dumps(record))
    try:
        try:
            trainer.fit()
        except TrainingFailedError as exc:
            raise RunFailed(f"run '{run}' failed: {worker_error(exc)}") from None
        except Exception as exc:  # local mode: the loop's own error, raised in this process
            if not local:
                raise
            raise RunFailed(f"run '{run}' failed: {first_line(exc)}") from None
    except RunFailed as exc:
        record.update(status="failed", error=str(exc), wall_time_s=time.time() - started)
        storage.write_text(run, RUN_RECORD, json.dumps(record))
        if mlflow_run is not None:
            mlflow_run.close(None, error=str(exc))
        raise
    # The records first: a picture or a tracking store that fails must not leave a finished
    # run reading "running" (the extras below warn in one line and never raise).
    summary = summarize(cfg, run, storage, wall_s=time.time() - started)
    summary["ray_logs"] = ray_logs
    summary["curves"] = storage.path(run, "curves.png")
    summary["path"] = storage.write_text(run, "summary.json", json.dumps(summary, indent=2))
    record.update(status="finished", wall_time_s=summary["wall_time_s"])
    storage.write_text(run, RUN_RECORD, json.dumps(record))
    if not _draw_curves(storage, run, summary["history"]):
        summary["curves"] = None
    if mlflow_run is not None:
        mlflow_run.close(summary)
    return summary


def open_mlflow(cfg: TrainConfig, run: str):
    """The run's MLflow run (`tracking`), opened on the driver; None without `tracking`."""
    if cfg.tracking is None:
        return None
    from rayssl.tracking import MLflowRun

    try:
        return MLflowRun.open(
            cfg.tracking.mlflow_uri, cfg.tracking.experiment, run, cfg.model_dump(mode="json")
        )
    except Exception as exc:  # MLflow raises its own types for a bad URI or store
        raise ConfigError(
            f"tracking.mlflow_uri '{cfg.tracking.mlflow_uri}' cannot be used "
            f"({first_line(exc, with_type=False)})"
        ) from None


def _draw_curves(storage: Storage, run: str, history: list[dict[str, float]]) -> str | None:
    """`curves.png` in the run folder (drawn locally, then copied: storage may be a URI)."""
    from rayssl.plots import plot_runs

    try:
        with tempfile.TemporaryDirectory() as tmp:
            picture = plot_runs([(run, history)], Path(tmp) / "curves.png")
            return storage.write_bytes(run, "curves.png", picture.read_bytes())
    except Exception as exc:  # matplotlib or the store: the run itself is recorded already
        print(f"rayssl: warning: curves.png not drawn ({first_line(exc)})", flush=True)
        return None


RAYSSL_ERROR_LINE = re.compile(r"\s*rayssl\.(?:\w+\.)*(\w+Error: .*)$")


def worker_error(exc: Exception) -> str:
    """The first worker's own error line, without Ray's traceback around it."""
    failures = getattr(exc, "worker_failures", None) or {}
    for _, failure in sorted(failures.items()):
        # an error raised by rayssl's code in another Ray process (a Ray Data task decoding
        # an image) reaches us only as text inside Ray's wrapper: its own line names the file
        own = [m.group(1) for m in map(RAYSSL_ERROR_LINE.match, str(failure).splitlines()) if m]
        if own:
            return own[-1]
        cause = getattr(failure, "cause", None) or failure
        text = f"{type(cause).__name__}: {cause}"
        return text.strip().splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
    return str(exc).strip().splitlines()[-1]


def summarize(cfg: TrainConfig, run: str, storage: Storage, wall_s: float) -> dict:
    """The run's summary, from its newest registered checkpoint (Ray's or rayssl's)."""
    checkpoint = storage.latest_checkpoint(run)
    state = storage.read_state(run, checkpoint)
    history: list[dict[str, float]] = state["loop"]["history"]
    if cfg.early_stopping is not None:
        monitor, mode = cfg.early_stopping.monitor, cfg.early_stopping.mode
    else:
        reported = {k for h in history for k in h}
        monitor, mode = next(
            (m, mode)
            for m, mode in (
                ("linear_acc", "max"),
                ("knn_acc", "max"),
                ("val_accuracy", "max"),
                ("val_loss", "min"),
                ("train_loss", "min"),
            )
            if m in reported
        )
    scored = [h for h in history if monitor in h]
    best = (max if mode == "max" else min)(scored, key=lambda h: h[monitor]) if scored else None
    final = history[-1]
    return {
        "run": run,
        "method": cfg.method,
        "epochs_run": int(final["epoch"]),
        "global_steps": int(final["step"]),
        "stopped_early": int(final["epoch"]) < cfg.epochs,
        # epochs from which an attempt continued a checkpoint: a worker-group restart after
        # a failure, or `--resume`
        "resumed_at": state["loop"].get("resumed_at", []),
        # each change of the number of workers: {"epoch", "step", "from", "to"}
        "resizes": state["loop"].get("resizes", []),
        "final_metrics": final,
        "best": {
            "metric": monitor,
            "mode": mode,
            "value": best[monitor] if best else None,
            "epoch": int(best["epoch"]) if best else None,
        },
        "wall_time_s": wall_s,
        "mean_samples_per_s": sum(h["samples_per_s"] for h in history) / len(history),
        "start_to_first_step_s": next(
            (h["start_to_first_step_s"] for h in history if "start_to_first_step_s" in h), None
        ),
        "checkpoint": storage.path(run, checkpoint),
        "config": cfg.model_dump(mode="json"),
        "history": history,
    }
