"""The search YAML: its schema, its checks against the base training config (before Ray
starts), and each trial's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rayssl.config import (
    PROBE_METRICS,
    ConfigError,
    Strict,
    TrainConfig,
    check_run_name,
    deep_merge,
    format_validation_error,
    nested,
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

    _name = field_validator("name")(classmethod(lambda cls, v: check_run_name(v)))


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
    cfg = validate_train_config(base)
    _check_metric_reported(search, cfg)
    if search.scheduler.name == "pbt":
        _check_pbt_space(search)
    _check_metric_cadence(search, validate_train_config(base))
    _check_space_values(search, base)
    return search, base


def _check_metric_reported(search: SearchConfig, cfg: TrainConfig) -> None:
    """Every trial would run to its end and rank nothing on a metric no trial reports. An
    import-path method may report its own (`Method.epoch_metrics`): not checked then."""
    reported = cfg.reported_metrics()
    if ":" in cfg.method or search.metric in reported:
        return
    raise ConfigError(
        f"metric: '{search.metric}' is not reported by this search's runs; they report "
        f"{', '.join(reported)}"
    )


def _check_pbt_space(search: SearchConfig) -> None:
    """PBT changes values inside running trials: only those the loop can take over."""
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


def _check_space_values(search: SearchConfig, base: dict) -> None:
    """Every searched path takes its representative values in the base config."""
    for key, domain in search.space.items():
        for value in domain.samples():
            try:
                validate_train_config(
                    deep_merge(base, parse_overrides([f"{key}={yaml.safe_dump(value).strip()}"]))
                )
            except ConfigError as exc:
                raise ConfigError(f"space.{key}: {exc}") from None


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
    return deep_merge(base, nested(params))
