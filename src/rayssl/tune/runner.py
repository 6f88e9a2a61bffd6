"""`rayssl tune` on the driver: preflight, the Tuner with its scheduler, search algorithm,
resources and callbacks, then the results. The numbered comments mark each call into Ray."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from rayssl.config import ConfigError, deep_merge, validate_train_config
from rayssl.tune.results import write_results
from rayssl.tune.search import SearchConfig, load_search
from rayssl.tune.trials import run_trial, run_trial_in_process


def run_search(
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

    from rayssl.cluster import init_ray, preflight
    from rayssl.runs.storage import Storage

    search, base = load_search(path, overrides)
    # Storage: local folders and URIs (s3://, gs://, file://) alike, as training runs do
    storage = Storage.resolve(search.storage_path)
    name = search.name
    if resume and not ray_tune.Tuner.can_restore(storage.path(name)):
        raise ConfigError(f"--resume: no search '{search.name}' under '{storage.uri}' to resume")
    if not resume and name in storage.runs():
        name = f"{search.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg, splits, _ = preflight(validate_train_config(base))  # seeds numpy: samples from seed
    shown = _trial_base(base, cfg)
    if resume:
        # Trials not yet sampled must not repeat the first samples of the original driver.
        np.random.seed()
    try:  # checks that one trial's workers fit the cluster
        # 1. start or join Ray; in-process trials step in a thread of Tune's trial actor
        in_process = search.resources.workers_per_trial == 1
        init_ray(cfg, streaming=splits.reads_storage, allocator=in_process)
    except ConfigError as exc:
        raise ConfigError(
            f"resources: {exc} (resources.workers_per_trial / cpus_per_worker)"
        ) from None
    _check_streamed_trial_fits(search, splits)
    param_space = {k: d.to_tune() for k, d in search.space.items()}
    param_space.update(
        _base=shown,
        _splits=ray.put(splits),  # 2. the data, once, in the object store
        _trials_storage=storage.make_dir(name, "trials"),
        _pbt=search.scheduler.name == "pbt",
    )
    trainable, concurrent = _trainable(search, streamed=splits.stream is not None)
    # Every epoch reports (progress, plots); probe metrics only on probe epochs, which the
    # cadence check above lines up with the scheduler's decisions.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Short epochs snapshot the experiment often; Tune warns about it at every sync.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    experiment = storage.path(name)
    if resume:
        tuner = ray_tune.Tuner.restore(  # 3. the search as the killed driver left it
            experiment, trainable=trainable, param_space=param_space, resume_errored=True
        )
    else:
        tuner = _tuner(search, cfg, trainable, param_space, concurrent, name, storage, points)
    results = tuner.fit()  # 4. every trial, to its end or its scheduler's stop
    return write_results(results, search, shown, cfg.epochs, experiment)


def _check_streamed_trial_fits(search: SearchConfig, splits) -> None:
    import ray

    res = search.resources
    if splits.stream is not None and res.workers_per_trial == 1:
        need = res.cpus_per_worker + res.data_cpus_per_trial
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise ConfigError(
                f"resources: a streamed trial needs cpus_per_worker + data_cpus_per_trial = "
                f"{need:g} CPUs, the cluster has {have:g}; lower them"
            )


def _trainable(search: SearchConfig, streamed: bool) -> tuple[Any, int]:
    """The trial function with the resources it holds, and how many may run at once."""
    from ray import tune as ray_tune

    res = search.resources
    if res.workers_per_trial == 1:
        trial = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
        # Streamed data: Ray Data's tasks run in a bundle of the trial's own placement group
        # (run_trial_in_process points Ray Data there). Without it they wait for CPUs
        # outside every trial's reservation, and a search whose trials fill the cluster
        # waits forever.
        bundles = [trial, {"CPU": res.data_cpus_per_trial}] if streamed else [trial]
        trainable = ray_tune.with_resources(
            run_trial_in_process, ray_tune.PlacementGroupFactory(bundles)
        )
        return trainable, search.max_concurrent_trials
    trainable = ray_tune.with_resources(run_trial, {"cpu": 0.01})
    return trainable, _concurrency_that_fits(search)


def _tuner(search: SearchConfig, cfg, trainable, param_space, concurrent, name, storage, points):
    """A new search's Tuner."""
    from ray import tune as ray_tune

    return ray_tune.Tuner(
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
            callbacks=[*_mlflow_callbacks(cfg), *_wandb_callbacks(cfg, name, storage.uri)],
        ),
    )


def _trial_base(base: dict, cfg) -> dict:
    """The base config as Ray stores it with each trial and best.yaml is written from it:
    the tracking URI's credentials redacted (the MLflow callback on the driver keeps the
    real URI, cfg.tracking), and the normalisation preflight took from
    `backbone.init_from` where the search's base sets none, so every trial trains on inputs
    normalised as the backbone was trained (`cfg`: the base after preflight)."""
    update: dict = {}
    if cfg.tracking is not None:
        update["tracking"] = cfg.record()["tracking"]
    if base.get("data", {}).get("normalize") is None and cfg.data.normalize is not None:
        update["data"] = {"normalize": cfg.record()["data"]["normalize"]}
    return deep_merge(base, update)


def _mlflow_callbacks(cfg) -> list:
    """`tracking` in the base config: one MLflow run per trial, through Ray's own MLflow
    callback (params: the trial's sampled values; metrics: every report)."""
    if cfg.tracking is None or not cfg.tracking.mlflow_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [
        _sampled_only(MLflowLoggerCallback)(
            tracking_uri=cfg.tracking.mlflow_uri,
            experiment_name=cfg.tracking.experiment,
            save_artifact=False,
        )
    ]


def _wandb_callbacks(cfg, search_name: str, storage_uri: str) -> list:
    """`tracking.wandb` in the base config: one W&B run per trial, through Ray's own W&B
    callback (its id the trial's; its group the config's, else the search's name; its config
    the trial's sampled values; every report's metrics). W&B writes its files into the
    search's folder where that is local, unless `tracking.wandb.dir` says otherwise."""
    if cfg.tracking is None or cfg.tracking.wandb is None:
        return []
    from pathlib import Path

    from ray.air.integrations.wandb import WandbLoggerCallback

    w = cfg.tracking.wandb
    if w.mode == "offline":  # Ray's callback asks for an API key unless WANDB_MODE says so
        os.environ.setdefault("WANDB_MODE", "offline")
    local = "://" not in storage_uri
    folder = Path(storage_uri).resolve() / search_name if local else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    directory = w.dir or (str(folder) if folder else None)
    group = w.group or search_name
    callback = _sampled_only(WandbLoggerCallback)
    return [callback(project=w.project, group=group, mode=w.mode, dir=directory)]


def _sampled_only(callback: type) -> type:
    """A Ray Tune logger callback that sees only a trial's sampled values as its config: the
    rest is rayssl's plumbing (keys starting with "_": the base config, an object-store
    reference to the data)."""

    class SampledOnly(callback):
        def log_trial_start(self, trial):
            hidden = {k: trial.config.pop(k) for k in list(trial.config) if k.startswith("_")}
            try:
                super().log_trial_start(trial)
            finally:
                trial.config.update(hidden)

    return SampledOnly


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
