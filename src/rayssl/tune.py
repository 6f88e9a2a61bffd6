"""`rayssl tune`: a Ray Tune search whose every trial runs the same per-worker loop.

A search YAML names a base training config, a space over config paths, the metric, the
scheduler and the budget. Two trial paths, same metrics and checkpoint format:

- `workers_per_trial: 1` (the default): the trial is a Tune function trainable holding the
  trial's resources, running `Loop` in its own process. It reports every epoch with
  `ray.tune.report(metrics, checkpoint=...)` and restores from `ray.tune.get_checkpoint()`,
  so ASHA, PBT and `Tuner.restore` work natively, with no Ray Train start-up per trial.
- more workers: the trial (a token CPU) builds and fits a `TorchTrainer` reporting to Tune
  through `TuneReportCallback`; its checkpoints stay under the search's `trials/` folder.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from rayssl.config import (
    ConfigError,
    Strict,
    TrainConfig,
    deep_merge,
    format_validation_error,
    parse_overrides,
    read_yaml,
    validate_train_config,
)


class Domain(Strict):
    """One searched value: exactly one of loguniform / uniform / randint / choice / grid."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Domain:
        kinds = [
            k
            for k in ("loguniform", "uniform", "randint", "choice", "grid")
            if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError("give exactly one of loguniform, uniform, randint, choice, grid")
        kind = kinds[0]
        value = getattr(self, kind)
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("loguniform", "uniform", "randint"):
            low, high = value
            if not low < high:
                raise ValueError(
                    f"{kind} range [{low}, {high}] is empty or inverted; give [low, high]"
                )
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> str:
        return next(
            k
            for k in ("loguniform", "uniform", "randint", "choice", "grid")
            if getattr(self, k) is not None
        )

    def samples(self) -> list[Any]:
        """Representative values, used to check the path against the training config."""
        value = getattr(self, self.kind)
        return list(value)

    def to_tune(self) -> Any:
        from ray import tune

        value = getattr(self, self.kind)
        return {
            "loguniform": lambda: tune.loguniform(*value),
            "uniform": lambda: tune.uniform(*value),
            "randint": lambda: tune.randint(value[0], value[1] + 1),
            "choice": lambda: tune.choice(value),
            "grid": lambda: tune.grid_search(value),
        }[self.kind]()


# What PBT may change in a running trial: values the loop can take over from another
# trial's checkpoint without rebuilding the network (see Loop.adopt_hyperparameters).
PBT_MUTABLE = ("optimizer.lr", "optimizer.weight_decay", "byol.base_momentum")


class SchedulerConfig(Strict):
    name: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = Field(2, ge=1, description="asha: epochs every trial runs")
    reduction_factor: float = Field(2.0, gt=1.0, description="asha")
    perturbation_interval: int = Field(
        2, ge=1, description="pbt: epochs between copying a better trial and perturbing"
    )
    quantile_fraction: float = Field(
        0.25, gt=0.0, le=0.5, description="pbt: share of trials that copy the top share"
    )
    resample_probability: float = Field(
        0.25, ge=0.0, le=1.0, description="pbt: chance to resample instead of perturb"
    )
    synch: bool = Field(
        False, description="pbt: wait for every trial at each interval before exploiting"
    )


class ResourcesConfig(Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    data_cpus_per_trial: float = Field(
        1.0,
        gt=0.0,
        description="streamed data (Parquet, large image folders), 1-worker trials: CPUs "
        "each trial reserves for Ray Data's read and decode tasks",
    )


class SearchConfig(Strict):
    base: str = Field(description="training config, relative to this file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="set on every trial")
    space: dict[str, Domain] = Field(min_length=1)
    metric: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    num_samples: int = Field(8, ge=1)
    scheduler: SchedulerConfig = SchedulerConfig()
    search: Literal["random", "optuna"] = "random"
    resources: ResourcesConfig = ResourcesConfig()
    max_concurrent_trials: int = Field(2, ge=1)
    storage_path: str = "./tune_runs"
    name: str | None = None


def load_search(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[SearchConfig, dict]:
    """Validate a search YAML and its base config before Ray starts; return both."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides))
    raw.setdefault("name", Path(path).stem)
    try:
        search = SearchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if search.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                "search: 'optuna' is not installed; pip install optuna, or use random"
            ) from None
    base_path = (Path(path).parent / search.base).resolve()
    try:
        base = read_yaml(base_path)
    except ConfigError as exc:
        raise ConfigError(f"base: {exc}") from None
    base = deep_merge(base, search.overrides)
    res = search.resources
    base = deep_merge(
        base,
        {
            "num_workers": res.workers_per_trial,
            "cpus_per_worker": res.cpus_per_worker,
            "use_gpu": res.gpus_per_worker > 0,
        },
    )
    validate_train_config(base)
    if search.scheduler.name == "pbt":
        for key, domain in search.space.items():
            if key not in PBT_MUTABLE:
                raise ConfigError(
                    f"space.{key}: scheduler 'pbt' changes only {', '.join(PBT_MUTABLE)} "
                    "during a trial; fix this value in overrides or use scheduler asha"
                )
            if domain.kind == "grid":
                raise ConfigError(
                    f"space.{key}: scheduler 'pbt' samples and perturbs values; use choice "
                    "instead of grid"
                )
    _check_metric_cadence(search, validate_train_config(base))
    for key, domain in search.space.items():
        for value in domain.samples():
            try:
                validate_train_config(
                    deep_merge(base, parse_overrides([f"{key}={yaml.safe_dump(value).strip()}"]))
                )
            except ConfigError as exc:
                raise ConfigError(f"space.{key}: {exc}") from None
    return search, base


PROBE_METRICS = ("knn_acc", "linear_acc")  # measured only every eval.every epochs


def _check_metric_cadence(search: SearchConfig, cfg: TrainConfig) -> None:
    """A probe metric exists only on probe epochs; the scheduler must decide on those."""
    if search.metric not in PROBE_METRICS or cfg.method == "supervised":
        return
    every, s = cfg.eval.every, search.scheduler
    if s.name == "fifo":
        return
    field, value = (
        ("grace_period", s.grace_period)
        if s.name == "asha"
        else ("perturbation_interval", s.perturbation_interval)
    )
    if every == 0 or value % every:
        raise ConfigError(
            f"scheduler.{field} ({value}) must be a multiple of eval.every ({every}): "
            f"{search.metric} is measured only every eval.every epochs (0: only at the end); "
            "set eval.every in overrides"
        )
    if s.name == "asha" and s.reduction_factor != int(s.reduction_factor):
        raise ConfigError(
            f"scheduler.reduction_factor ({s.reduction_factor}) must be a whole number with "
            f"metric {search.metric}, so that every ASHA rung falls on a probe epoch"
        )


def trial_config(base: dict, params: dict[str, Any]) -> dict:
    """The training config of one trial: the base with each searched path set."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return deep_merge(base, nested)


def run_trial_in_process(config: dict[str, Any]) -> None:
    """Tune function trainable of a 1-worker trial: the loop in this process, a report and
    a checkpoint to Tune every epoch. A restored checkpoint may be another trial's (PBT's
    exploit): its state continues under this trial's values (`adopt_hyperparameters`)."""
    started = time.time()
    import logging
    import tempfile

    import ray
    import ray.tune
    import torch

    # Tune logs each checkpoint and restore at INFO in the trial's process: noise beside
    # rayssl's own lines (the search's table and Tune's status are what users read).
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from rayssl.loop import build_loop  # not rayssl.train: no Ray Train import per trial
    from rayssl.state import load_state, save_state

    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = TrainConfig.model_validate(trial_config(config["_base"], params))
    splits = ray.get(config["_splits"])
    shard = None
    if splits.stream is not None:  # parquet: this trial streams every row itself
        _data_in_this_trials_bundle()
        shard = splits.stream.dataset(cfg.data.read_concurrency).iterator()
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    loop = build_loop(cfg, splits, device=device, train_shard=shard)
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        loop.load_state_dict(state)
        loop.adopt_hyperparameters(state["config"])  # a no-op for the trial's own state
        loop.state.resumed_at.append(loop.state.epoch)
    if loop.is_over():
        ray.tune.report(loop.state.history[-1])  # restored after its end: report it again
        return
    loop.launched_at = started  # start_to_first_step_s: this trial's own overhead
    for metrics in loop.epochs():
        with tempfile.TemporaryDirectory() as tmp:
            save_state(loop.state_dict(), tmp)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def _data_in_this_trials_bundle() -> None:
    """Ray Data schedules its tasks with an explicit strategy ("SPREAD"), so they leave the
    trial's placement group and need CPUs no trial holds. Point them at the trial's own
    group (the data bundle `tune` reserves), with Ray Data's public DataContext."""
    import ray.data
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = get_current_placement_group()
    if group is None:
        return
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    context = ray.data.DataContext.get_current()
    context.scheduling_strategy = context.scheduling_strategy_large_args = strategy


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable of a multi-worker trial: one Ray Train run of the loop,
    reporting every epoch."""
    started = time.time()
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayssl.storage import Storage
    from rayssl.train import build_trainer

    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = TrainConfig.model_validate(trial_config(config["_base"], params))
    context = ray.tune.get_context()
    storage = Storage(config["_trials_storage"])
    run = f"{context.get_trial_name()}"
    stream = ray.get(config["_splits"]).stream
    if config.get("_pbt"):
        _run_checkpointed_trial(cfg, config["_splits"], storage, run, stream)
        return
    trainer = build_trainer(
        cfg,
        config["_splits"],
        storage,
        run,
        callbacks=[TuneReportCallback()],
        stream=stream,
        launched_at=started,
    )
    trainer.fit()


def _run_checkpointed_trial(cfg: TrainConfig, splits_ref, storage, trial: str, stream) -> None:
    """A trial that hands its checkpoints to Tune, as PBT needs: PBT restarts a weak trial
    from a strong trial's Tune checkpoint with perturbed values. Each (re)start is a fresh
    Ray Train run that begins from that checkpoint; the worker's reports are forwarded to
    Tune together with their checkpoints by this function's own thread."""
    import threading

    import ray.tune
    from ray.train import UserCallback
    from ray.util.queue import Queue

    from rayssl.train import build_trainer

    class ForwardReports(UserCallback):
        """Runs in the Train controller: pass each report and its checkpoint to the trial."""

        def __init__(self, queue: Queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint) -> None:
            self.queue.put((dict(metrics[0]), checkpoint))

    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = build_trainer(
        cfg,
        splits_ref,
        storage,
        f"{trial}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000}",
        callbacks=[ForwardReports(reports)],
        stream=stream,
        initial_checkpoint=ray.tune.get_checkpoint(),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial's thread below
            failure.append(exc)
        finally:
            reports.put(None)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while (item := reports.get()) is not None:
        metrics, checkpoint = item
        if checkpoint is not None:  # Tune keeps its own copy, which PBT hands to others
            checkpoint = ray.tune.Checkpoint(checkpoint.path, checkpoint.filesystem)
        ray.tune.report(metrics, checkpoint=checkpoint)
    thread.join()
    if failure:
        raise failure[0]


def tune(
    path: str,
    overrides: tuple[str, ...] = (),
    resume: bool = False,
    points: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search in `path`; write results.csv, best.yaml, metric.png.
    `points`: configurations (space path -> value) to try first, e.g. to compare schedulers
    on the same trials (benchmarks/asha_vs_full.py)."""
    import ray
    from ray import tune as ray_tune

    from rayssl.storage import Storage
    from rayssl.train import init_ray, preflight

    search, base = load_search(path, overrides)
    # Storage: local folders and URIs (s3://, gs://, file://) alike, as training runs do
    storage = Storage.resolve(search.storage_path)
    name = search.name
    if resume and not ray_tune.Tuner.can_restore(storage.path(name)):
        raise ConfigError(f"--resume: no search '{search.name}' under '{storage.uri}' to resume")
    if not resume and name in storage.runs():
        name = f"{search.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = storage.path(name)
    cfg = validate_train_config(base)
    splits, _ = preflight(cfg)  # seeds numpy: a new search samples reproducibly from cfg.seed
    if resume:
        # Trials not yet sampled must not repeat the first samples of the original driver.
        np.random.seed()
    try:  # checks that one trial's workers fit the cluster
        init_ray(cfg, streaming=splits.stream is not None)
    except ConfigError as exc:
        raise ConfigError(
            f"resources: {exc} (resources.workers_per_trial / cpus_per_worker)"
        ) from None
    res = search.resources
    if splits.stream is not None and res.workers_per_trial == 1:
        need = res.cpus_per_worker + res.data_cpus_per_trial
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise ConfigError(
                f"resources: a streamed trial needs cpus_per_worker + data_cpus_per_trial = "
                f"{need:g} CPUs, the cluster has {have:g}; lower them"
            )
    trials_storage = storage.make_dir(name, "trials")
    param_space = {k: d.to_tune() for k, d in search.space.items()}
    param_space.update(
        _base=base,
        _splits=ray.put(splits),
        _trials_storage=trials_storage,
        _pbt=search.scheduler.name == "pbt",
    )
    if res.workers_per_trial == 1:
        trial = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
        # Streamed data: Ray Data's tasks run in a bundle of the trial's own placement group
        # (run_trial_in_process points Ray Data there). Without it they wait for CPUs
        # outside every trial's reservation, and a search whose trials fill the cluster
        # waits forever.
        bundles = [trial, {"CPU": res.data_cpus_per_trial}] if splits.stream else [trial]
        trainable = ray_tune.with_resources(
            run_trial_in_process, ray_tune.PlacementGroupFactory(bundles)
        )
        concurrent = search.max_concurrent_trials
    else:
        trainable = ray_tune.with_resources(run_trial, {"cpu": 0.01})
        concurrent = _concurrency_that_fits(search)
    # Every epoch reports (progress, plots); probe metrics only on probe epochs, which the
    # cadence check above lines up with the scheduler's decisions.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Short epochs snapshot the experiment often; Tune warns about it at every sync.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        tuner = ray_tune.Tuner.restore(
            experiment, trainable=trainable, param_space=param_space, resume_errored=True
        )
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=ray_tune.TuneConfig(
                metric=search.metric,
                mode=search.mode,
                num_samples=search.num_samples,
                scheduler=_scheduler(search, cfg.epochs),
                search_alg=_search_alg(search, points),
                max_concurrent_trials=concurrent,
                reuse_actors=True,  # later trials skip the imports (torch) of a new process
            ),
            run_config=ray_tune.RunConfig(
                name=name,
                storage_path=storage.uri,
                # PBT hands a trial's checkpoint to another one later: keep a few more.
                checkpoint_config=ray_tune.CheckpointConfig(
                    num_to_keep=4 if search.scheduler.name == "pbt" else 2
                ),
                callbacks=_mlflow_callbacks(cfg),
            ),
        )
    results = tuner.fit()
    return report(results, search, base, cfg.epochs, experiment)


def _mlflow_callbacks(cfg) -> list:
    """`tracking` in the base config: one MLflow run per trial, through Ray's own MLflow
    callback (params: the trial's sampled values; metrics: every report)."""
    if cfg.tracking is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class SampledParams(MLflowLoggerCallback):
        """Logs only the sampled values as params: the rest of a trial's config is rayssl's
        plumbing (the base config, an object-store reference to the data)."""

        def log_trial_start(self, trial):
            hidden = {k: trial.config.pop(k) for k in list(trial.config) if k.startswith("_")}
            try:
                super().log_trial_start(trial)
            finally:
                trial.config.update(hidden)

    return [
        SampledParams(
            tracking_uri=cfg.tracking.mlflow_uri,
            experiment_name=cfg.tracking.experiment,
            save_artifact=False,
        )
    ]


def _concurrency_that_fits(search: SearchConfig) -> int:
    """Multi-worker trials hold a token CPU each and start their Ray Train workers later:
    more of them at once than the cluster can host would leave worker groups waiting until
    their start-up timeout. Run at most as many as fit, and say so."""
    import ray

    res, cluster = search.resources, ray.cluster_resources()
    per_trial = res.workers_per_trial * res.cpus_per_worker
    fit = int(cluster.get("CPU", 0) // per_trial)
    if res.gpus_per_worker:
        fit = min(fit, int(cluster.get("GPU", 0) // (res.workers_per_trial * res.gpus_per_worker)))
    fit = max(1, fit)
    if search.max_concurrent_trials > fit:
        print(
            f"[rayssl] max_concurrent_trials {search.max_concurrent_trials} lowered to {fit}: "
            f"that many trials of {res.workers_per_trial} workers fit this cluster",
            flush=True,
        )
    return min(search.max_concurrent_trials, fit)


def _scheduler(search: SearchConfig, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = search.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    if s.name == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={k: d.to_tune() for k, d in search.space.items()},
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            synch=s.synch,
            require_attrs=False,  # probe metrics come every eval.every epochs
        )
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_epochs,
        grace_period=min(s.grace_period, max_epochs),
        reduction_factor=s.reduction_factor,
    )


def _search_alg(search: SearchConfig, points: list[dict[str, Any]] | None = None):
    if search.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=points)
    if points:
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=points)
    return None


def report(results, search: SearchConfig, base: dict, max_epochs: int, experiment: str) -> dict:
    """Print and save the results table, the best config as YAML and the metric plot into
    `experiment` (a folder or a URI)."""
    import io
    import tempfile

    from rayssl.storage import Storage

    parent, name = str(experiment).rstrip("/").rsplit("/", 1)
    storage = Storage(parent)
    rows = []
    for result in results:
        history = result.metrics_dataframe
        params = {k: result.config[k] for k in search.space}
        reported = (
            history[["epoch", search.metric]].dropna()
            if history is not None and search.metric in history and "epoch" in history
            else None
        )
        values = list(reported[search.metric]) if reported is not None else []
        best = (max(values) if search.mode == "max" else min(values)) if len(values) else math.nan
        epochs = int(history["epoch"].max()) if history is not None and "epoch" in history else 0
        startup = (
            history["start_to_first_step_s"].dropna()
            if history is not None and "start_to_first_step_s" in history
            else []
        )
        rows.append(
            {
                "trial": (result.metrics or {}).get("trial_id", Path(result.path).name),
                **params,
                search.metric: best,
                "epochs": epochs,
                "stopped_early": epochs < max_epochs,
                "error": type(result.error).__name__ if result.error else "",
                # trial start -> its first optimizer step (first attempt)
                "start_to_first_step_s": float(startup.iloc[0]) if len(startup) else math.nan,
                # (epoch, value) of every report of the metric: the plot's x is the epoch
                "_history": (
                    list(zip(reported["epoch"].astype(int), reported[search.metric], strict=True))
                    if reported is not None
                    else []
                ),
                "_label": ", ".join(
                    f"{_short(k)} {_legend_value(result.config[k])}" for k in search.space
                ),
            }
        )
    ranked = sorted(
        rows,
        key=lambda r: (
            math.isnan(r[search.metric]),
            -r[search.metric] if search.mode == "max" else r[search.metric],
        ),
    )
    columns = [c for c in ranked[0] if not c.startswith("_")]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ranked)
    storage.write_text(name, "results.csv", table.getvalue())
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in ranked)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in ranked:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in columns))
    best = ranked[0]
    best_cfg = trial_config(base, {k: best[k] for k in search.space})
    best_cfg["name"] = f"{search.name}-best"
    best_path = storage.write_text(name, "best.yaml", yaml.safe_dump(best_cfg, sort_keys=False))
    with tempfile.TemporaryDirectory() as tmp:
        picture = Path(tmp) / f"{search.metric}.png"
        _plot(ranked, search, picture)
        storage.write_bytes(name, picture.name, picture.read_bytes())
    print(f"best {search.metric} {best[search.metric]:.4f}: {best_path}")
    return {"rows": ranked, "best": best, "experiment": str(experiment)}


def _short(key: str) -> str:
    """A searched key as a legend names it: its last part (optimizer.lr -> lr,
    simclr.temperature -> T)."""
    last = key.rsplit(".", 1)[-1]
    return {"temperature": "T", "weight_decay": "wd", "base_momentum": "m"}.get(last, last)


def _legend_value(value: Any) -> str:
    if isinstance(value, float) and value and not 0.01 <= abs(value) < 1000:
        return f"{value:.1e}".replace("e-0", "e-")  # 1.8e-3
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], search: SearchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        epochs = [e for e, _ in r["_history"]]
        ax.plot(epochs, [v for _, v in r["_history"]], marker="o", label=r["_label"])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(search.metric)
    ax.set_title(f"{search.name}: {search.metric} per epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
