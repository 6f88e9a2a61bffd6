"""The config of a run, one room per section:

    base.py     ConfigError (a user's mistake, exit 2) and the strict model every section uses
    data.py     data:, its views (augment:) and normalisation
    model.py    backbone:, head:, model: and each method's own section
    run.py      optimizer:, lr_scheduler:, early_stopping:, checkpoint:, eval:, tracking:,
                performance:
    train.py    TrainConfig: the whole run and the checks that span sections
    loading.py  YAML and --set overrides in, a TrainConfig or one line out
    reference.py  docs/configuration.md, generated from the Field descriptions

Everything public is importable from `rayssl.config`.
"""

from rayssl.config.base import ConfigError, Strict, check_run_name
from rayssl.config.data import (
    VIEW_PRESETS,
    AugmentConfig,
    DataConfig,
    ImageViewsConfig,
    LocalCropsConfig,
    NormalizeConfig,
    ViewP,
)
from rayssl.config.loading import (
    deep_merge,
    format_validation_error,
    load_train_config,
    nested,
    parse_overrides,
    read_yaml,
    validate_train_config,
)
from rayssl.config.model import (
    BarlowTwinsConfig,
    BYOLConfig,
    DINOConfig,
    LFRConfig,
    MoCoConfig,
    ModelConfig,
    NetConfig,
    NNCLRConfig,
    SimCLRConfig,
    SimSiamConfig,
    SSLHeadConfig,
    SupervisedConfig,
    SwAVConfig,
    VICRegConfig,
    check_kwargs,
    import_factory,
)
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
from rayssl.config.train import BUILTIN_METHODS, METHOD_INFERRED, TrainConfig

__all__ = [
    "nested",
    "PROBE_METRICS",
    "ConfigError",
    "Strict",
    "check_run_name",
    "ViewP",
    "LocalCropsConfig",
    "ImageViewsConfig",
    "VIEW_PRESETS",
    "AugmentConfig",
    "NormalizeConfig",
    "DataConfig",
    "NetConfig",
    "import_factory",
    "check_kwargs",
    "SupervisedConfig",
    "SSLHeadConfig",
    "BYOLConfig",
    "SimCLRConfig",
    "BarlowTwinsConfig",
    "VICRegConfig",
    "MoCoConfig",
    "NNCLRConfig",
    "DINOConfig",
    "SimSiamConfig",
    "SwAVConfig",
    "ModelConfig",
    "LFRConfig",
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
