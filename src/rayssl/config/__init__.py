"""The config of a run, one room per section:

    base.py     ConfigError (a user's mistake, exit 2) and the strict model every section uses
    data.py     data:, its views (augment:) and normalisation
    model.py    backbone:, head:, model: (each built-in method's own section lives in its
                module, rayssl/methods/, and registers itself in methods/registry.py)
    run.py      optimizer:, lr_scheduler:, early_stopping:, checkpoint:, eval:, tracking:,
                performance:
    train.py    TrainConfig: the whole run and the checks that span sections
    loading.py  YAML and --set overrides in, a TrainConfig or one line out
    reference.py  docs/configuration.md, generated from the Field descriptions

Everything public is importable from `rayssl.config`. The names from `train.py` and
`loading.py` load on first use (PEP 562): `TrainConfig` takes its method sections from the
methods' modules, which import `rayssl.config.base`, so importing them here eagerly would be
a cycle.
"""

from rayssl.config.base import ConfigError, Strict, check_run_name
from rayssl.config.data import (
    VIEW_PRESETS,
    AugmentConfig,
    DataConfig,
    EraseConfig,
    ImageViewsConfig,
    LocalCropsConfig,
    NormalizeConfig,
    RandAugmentConfig,
    ViewP,
)
from rayssl.config.model import ModelConfig, NetConfig, check_kwargs, import_factory
from rayssl.config.run import (
    PROBE_METRICS,
    CheckpointConfig,
    EarlyStoppingConfig,
    EvalConfig,
    LRSchedulerConfig,
    OptimizerConfig,
    PerformanceConfig,
    TrackingConfig,
    absolute_tracking_uri,
    redact_uri,
)

__all__ = [
    "nested",
    "PROBE_METRICS",
    "ConfigError",
    "Strict",
    "check_run_name",
    "ViewP",
    "EraseConfig",
    "LocalCropsConfig",
    "RandAugmentConfig",
    "ImageViewsConfig",
    "VIEW_PRESETS",
    "AugmentConfig",
    "NormalizeConfig",
    "DataConfig",
    "NetConfig",
    "import_factory",
    "check_kwargs",
    "ModelConfig",
    "OptimizerConfig",
    "LRSchedulerConfig",
    "EarlyStoppingConfig",
    "CheckpointConfig",
    "EvalConfig",
    "TrackingConfig",
    "absolute_tracking_uri",
    "redact_uri",
    "PerformanceConfig",
    "BUILTIN_METHODS",
    "METHOD_INFERRED",
    "TrainConfig",
    "format_validation_error",
    "parse_overrides",
    "deep_merge",
    "read_yaml",
    "validate_train_config",
    "load_train_config",
]

# loaded on first use, see the module docstring
_LAZY = {
    "BUILTIN_METHODS": "train",
    "METHOD_INFERRED": "train",
    "TrainConfig": "train",
    "deep_merge": "loading",
    "format_validation_error": "loading",
    "load_train_config": "loading",
    "nested": "loading",
    "parse_overrides": "loading",
    "read_yaml": "loading",
    "validate_train_config": "loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"rayssl.config.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rayssl.config' has no attribute '{name}'")
