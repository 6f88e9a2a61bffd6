"""The driver's checks before Ray starts: the data loads, the method takes two samples of
it through its views, the run can do what its config asks of the data (labels, probes,
image layout), and `backbone.init_from` reads; bad input is one line here, never a worker's
traceback."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from rayssl import seeds
from rayssl.config import PROBE_METRICS, ConfigError, TrainConfig
from rayssl.data import Splits, input_normalizer, load_splits
from rayssl.engine.inputs import Inputs
from rayssl.errors import first_line
from rayssl.methods.registry import build_method


def preflight(
    cfg: TrainConfig, read_init_from: bool = True
) -> tuple[TrainConfig, Splits, dict[str, torch.Tensor]]:
    """Load the data and push two samples through the method on the driver, so bad data or a
    backbone that cannot take it fails with one line before Ray starts. Reads
    `backbone.init_from` (unless `read_init_from` is off: a resume has the weights); returns
    the config with its normalisation where `cfg` sets none, the data and the method's
    initial state."""
    splits = load_splits(cfg.data, cfg.seed)
    if cfg.backbone.init_from and read_init_from:
        from rayssl.runs import pretrained

        splits.pretrained = pretrained.read(cfg.backbone.init_from)
        cfg = adopt_normalization(cfg, splits.pretrained.normalize)
    input_normalizer(cfg.data, splits)  # its channel count is checked against the data
    _check_data_fits_run(cfg, splits)
    if cfg.tracking is not None and cfg.tracking.mlflow_uri:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tracking.mlflow_uri needs MLflow, an optional extra: pip install -e "
                "'.[mlflow]' (or pip install mlflow), or remove tracking"
            ) from None
    if cfg.tracking is not None and cfg.tracking.wandb is not None:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "tracking.wandb needs Weights & Biases, an optional extra: pip install -e "
                "'.[wandb]' (or pip install wandb), or remove tracking.wandb"
            )
    return cfg, splits, _two_samples_through_the_method(cfg, splits)


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


def adopt_normalization(
    cfg: TrainConfig, stats: dict[str, list[float]] | str | None
) -> TrainConfig:
    """A pretrained backbone saw inputs normalised by `stats` ({mean, std}, or "sample":
    each input by its own): a config without `data.normalize` uses them too (said in one
    line, returned as a new config); one that sets something else is warned about, and its
    own setting is kept."""
    if not stats:
        return cfg
    wanted = cfg.data.normalize
    if stats == "sample":
        if wanted is None:
            print("[rayssl] note: data.normalize 'sample' from backbone.init_from", flush=True)
            return cfg.updated({"data": {"normalize": "sample"}})
        if wanted != "sample":
            print(
                "[rayssl] warning: backbone.init_from was trained on inputs normalised per "
                "sample (data.normalize: sample); this run's data.normalize differs",
                flush=True,
            )
        return cfg
    if wanted is None:
        print(
            f"[rayssl] note: data.normalize from backbone.init_from: mean {stats['mean']}, "
            f"std {stats['std']}",
            flush=True,
        )
        return cfg.updated({"data": {"normalize": {"mean": stats["mean"], "std": stats["std"]}}})
    if isinstance(wanted, str) or [wanted.mean, wanted.std] != [stats["mean"], stats["std"]]:
        print(
            f"[rayssl] warning: backbone.init_from was trained on inputs normalised with mean "
            f"{stats['mean']}, std {stats['std']}; this run's data.normalize differs",
            flush=True,
        )
    return cfg
