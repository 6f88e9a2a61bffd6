"""Pydantic models of a training run: YAML in, validated config (or one clear line) out."""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A user error in a config, a command-line value or an input file (exit code 2)."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ViewP = float | list[float]  # a probability, or one per view ([view0, view1]: BYOL)


class LocalCropsConfig(Strict):
    """Multi-crop (DINO): small crops added after the global views, for methods that take
    them. Each is a random resized crop of `scale` at `size`, then the view pipeline's
    jitter and grayscale, blur with `blur_p`, solarize with `solarize_p`."""

    number: int = Field(6, ge=0, description="local crops per sample; 0: none")
    size: int | None = Field(
        None, ge=2, description="their side in pixels; null: 3/7 of the global views' side"
    )
    scale: tuple[float, float] = Field((0.05, 0.4), description="area fraction range")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="blur probability")
    solarize_p: float = Field(0.0, ge=0.0, le=1.0, description="solarize probability")

    @model_validator(mode="after")
    def _scale(self) -> LocalCropsConfig:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError("augment.image.local_crops.scale must be [low, high] in (0, 1]")
        return self


class ImageViewsConfig(Strict):
    """SimCLR / BYOL views of (C, H, W) images in [0, 1] (see `rayssl.data.image_views`).
    Probabilities may be a pair [view0, view1], for asymmetric views."""

    size: int | None = Field(None, ge=1, description="output side; null: the input's")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area fraction range")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="aspect ratio range")
    flip_p: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    jitter_p: ViewP = Field(0.8, description="colour jitter probability (ops in random order)")
    brightness: float = Field(0.4, ge=0.0, description="jitter: factor in [1-b, 1+b]")
    contrast: float = Field(0.4, ge=0.0, description="jitter: factor in [1-c, 1+c]")
    saturation: float = Field(0.2, ge=0.0, description="jitter: factor in [1-s, 1+s]")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="jitter: hue shift in [-h, h] turns")
    grayscale_p: ViewP = Field(0.2, description="grayscale probability")
    blur_p: ViewP = Field(0.5, description="Gaussian blur probability")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="blur sigma range")
    solarize_p: ViewP = Field(0.0, description="solarize probability")
    solarize_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="solarize inverts pixels above this"
    )
    local_crops: LocalCropsConfig | None = Field(
        None, description="multi-crop: smaller local crops after the global views (DINO)"
    )

    @model_validator(mode="after")
    def _ranges(self) -> ImageViewsConfig:
        for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not values or any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"augment.image.{name} must be in [0, 1] (or a list of such)")
        for name, (low, high) in (
            ("crop_scale", self.crop_scale),
            ("crop_ratio", self.crop_ratio),
            ("blur_sigma", self.blur_sigma),
        ):
            if not 0 < low <= high:
                raise ValueError(f"augment.image.{name} must be [low, high] with 0 < low <= high")
        if self.crop_scale[1] > 1:
            raise ValueError("augment.image.crop_scale must lie within (0, 1]")
        return self


# The papers' view parameters (as lightly ships them); `augment.image` keys override them.
VIEW_PRESETS: dict[str, dict[str, Any]] = {
    "simclr": {
        "brightness": 0.8,
        "contrast": 0.8,
        "saturation": 0.8,
        "hue": 0.2,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": 0.5,
        "solarize_p": 0.0,
    },
    "byol": {
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": [1.0, 0.1],
        "solarize_p": [0.0, 0.2],
    },
}


class AugmentConfig(Strict):
    """Batched, seeded augmentations applied to training inputs (see `rayssl.data.augment`)."""

    shift: int = Field(0, ge=0, description="max circular-free shift along the last axis")
    scale: float = Field(0.0, ge=0.0, lt=1.0, description="amplitude scaling in [1-s, 1+s]")
    jitter: float = Field(0.0, ge=0.0, description="std of additive Gaussian noise")
    flip: bool = Field(False, description="random horizontal flip (images)")
    stretch: float = Field(0.0, ge=0.0, lt=1.0, description="time-stretch by [1-s, 1+s]")
    mask: int = Field(0, ge=0, description="zero a random window of up to this many steps")
    crop: int = Field(0, ge=0, description="images: random crop after padding by this much")
    preset: Literal["simclr", "byol"] | None = Field(
        None, description="image views with the paper's parameters (fills `image`)"
    )
    image: ImageViewsConfig | None = Field(None, description="SimCLR/BYOL image views")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in VIEW_PRESETS:
            image = data.get("image") or {}
            if isinstance(image, dict):
                data = {**data, "image": {**VIEW_PRESETS[data["preset"]], **image}}
        return data


class NormalizeConfig(Strict):
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> NormalizeConfig:
        if len(self.mean) != len(self.std) or any(v <= 0 for v in self.std):
            raise ValueError("data.normalize needs mean and std of equal length, std > 0")
        return self


class DataConfig(Strict):
    name: Literal["mnist1d", "digits", "synthetic", "npz", "parquet", "images"] = "mnist1d"
    path: str | None = Field(
        None,
        description="npz: a file with x, y (optional x_test, y_test); parquet: a file, folder "
        "or s3:// / gs:// URI of the training rows, streamed to the workers by Ray Data; "
        "images: a folder (or URI) of images, one subfolder per class or flat (no labels)",
    )
    test_path: str | None = Field(
        None, description="parquet, images: test rows / images (held in memory)"
    )
    val_path: str | None = Field(
        None, description="parquet, images: validation rows / images (held in memory)"
    )
    x_column: str = Field(
        "x", description="parquet: column of flattened float samples, or of encoded images"
    )
    y_column: str = Field("y", description="parquet: column of integer labels")
    probe_samples: int = Field(
        4096, ge=2, description="parquet: train rows held in memory for probes / LFR selection"
    )
    shuffle_buffer: int = Field(
        2048, ge=0, description="parquet: rows in each worker's shuffle buffer (0: no shuffle)"
    )
    image_size: int | tuple[int, int] | None = Field(
        None, description="images: resize every image to this side (or [H, W]); null: as stored"
    )
    color: Literal["rgb", "grayscale"] = Field("rgb", description="images: decoded channels")
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="images: decode once and hold in memory (true), stream from storage "
        "(false), or auto: in memory when the decoded training set fits in 1 GiB",
    )
    eval_limit_mb: int = Field(
        1024,
        ge=1,
        description="images: val and test splits are decoded on the driver and shared with "
        "every worker; a split larger than this (MiB, as float32) is refused before decoding",
    )
    prefetch_batches: int = Field(2, ge=0, description="parquet: batches fetched ahead")
    pin_memory: bool = Field(False, description="parquet + use_gpu: page-locked host batches")
    read_concurrency: int | None = Field(None, ge=1, description="parquet: Ray Data read tasks")
    batch_size: int = Field(128, ge=1, description="global batch, split evenly across workers")
    eval_batch_size: int = Field(1024, ge=1, description="per-worker batch of val / test")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of train held out")
    cache_dir: str | None = Field(None, description="where generated MNIST-1D is cached")
    shape: list[int] = Field(
        [1, 40], min_length=1, description="synthetic, parquet: one sample's shape"
    )
    num_samples: int = Field(1024, ge=2, description="synthetic: number of train samples")
    num_classes: int = Field(10, ge=2, description="synthetic: number of classes")
    augment: AugmentConfig = AugmentConfig()
    normalize: Literal["dataset"] | NormalizeConfig | None = Field(
        None,
        description="per-channel (x - mean) / std of every input, training views and "
        "evaluation alike: 'dataset' (computed from the training split) or {mean, std}",
    )

    @model_validator(mode="after")
    def _path_for_npz(self) -> DataConfig:
        if self.name in ("npz", "parquet", "images") and not self.path:
            raise ValueError(f"data.path is required when data.name is '{self.name}'")
        if any(s < 1 for s in self.shape):
            raise ValueError(f"data.shape must hold positive sizes, got {self.shape}")
        size = self.image_size
        if size is not None and min([size] if isinstance(size, int) else size) < 1:
            raise ValueError(f"data.image_size must be positive, got {size}")
        return self


class NetConfig(Strict):
    """A network: a built-in name or an importable factory "package.module:function".

    Every other key is passed to the factory as a keyword argument and is checked against
    its signature, so a misspelt width fails here rather than inside a Ray worker.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field(
        description="built-in (backbone: mlp | cnn1d | cnn2d | resnet18 | resnet50; head: "
        "linear | mlp) or an importable factory 'package.module:function'"
    )
    init_from: str | None = Field(
        None,
        description="backbone only: start from the backbone of a run folder, a checkpoint "
        "folder or a `rayssl export` file (local or a URI)",
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def factory(self, builtins: dict[str, Any]) -> Any:
        if self.name in builtins:
            return builtins[self.name]
        return import_factory(self.name)


def import_factory(path: str) -> Any:
    """Resolve "package.module:function" to the callable, with a one-line error if it fails."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"'{path}' is neither a built-in nor of the form 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}' ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module '{module_name}' has no attribute '{attr}'") from None


def check_kwargs(factory: Any, kwargs: dict[str, Any], inferred: tuple[str, ...]) -> None:
    """Fail on keyword arguments the factory does not accept (unless it takes **kwargs)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n not in inferred]
    for key in kwargs:
        if key not in params or key in inferred:
            raise ValueError(f"unknown option '{key}'; accepted: {', '.join(accepted) or 'none'}")


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd", "lars"] = Field(
        "adamw",
        description="lars: SGD with layer-wise trust ratios for large batches; biases and "
        "normalisation parameters get neither adaptation nor weight decay",
    )
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled for adamw, L2 otherwise")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and lars")
    trust_coefficient: float = Field(
        0.001, gt=0.0, le=1.0, description="lars: eta in lr_layer = eta * |w| / |update|"
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw")
    backbone_lr_scale: float = Field(
        1.0, gt=0.0, le=10.0, description="supervised: backbone lr = lr x this (fine-tuning)"
    )


class LRSchedulerConfig(Strict):
    name: Literal["none", "onecycle", "warmup_cosine", "step"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0, description="warmup_cosine")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: share of steps rising")
    step_epochs: int = Field(30, ge=1, description="step: decay every this many epochs")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="warmup_cosine: floor of lr/lr0")


class EarlyStoppingConfig(Strict):
    monitor: str = Field("val_loss", description="any metric the run reports")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest change that counts")


class CheckpointConfig(Strict):
    num_to_keep: int | None = Field(2, ge=1, description="null keeps every checkpoint")
    score_attribute: str | None = Field(None, description="keep the best by this metric")
    score_order: Literal["min", "max"] = "max"
    preemption_check_steps: int = Field(
        10,
        ge=0,
        description="every this many optimizer steps the workers ask Ray Train whether a "
        "node of theirs is being preempted, and save a checkpoint mid-epoch if so; 0: never",
    )


class SupervisedConfig(Strict):
    flatten: bool = Field(True, description="flatten backbone features before the head")
    freeze_backbone: bool = Field(
        False, description="train the head only (linear evaluation), BatchNorm statistics too"
    )
    standardize_features: bool | None = Field(
        None,
        description="a BatchNorm1d(affine=False) on the flattened features before the head, "
        "as the linear probes of SSL papers; null: on when freeze_backbone is",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy smoothing")
    metrics: list[Literal["accuracy", "f1", "precision", "recall"]] = Field(
        ["accuracy"], description="reported per split; f1 / precision / recall are macro"
    )


class SSLHeadConfig(Strict):
    proj_hidden: int = Field(512, ge=1, description="projector hidden width")
    proj_dim: int = Field(128, ge=1, description="projector output width")


class BYOLConfig(SSLHeadConfig):
    base_momentum: float = Field(
        0.996, ge=0.0, le=1.0, description="target momentum at step 0, rising to 1 on a cosine"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")
    pred_hidden: int = Field(512, ge=1, description="predictor hidden width")


class SimCLRConfig(SSLHeadConfig):
    temperature: float = Field(0.5, gt=0.0, description="NT-Xent temperature")


class BarlowTwinsConfig(Strict):
    """The paper's defaults: a 3-layer 8192-wide projector, lambda 0.0051."""

    proj_hidden: int = Field(8192, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(8192, ge=2, description="projector output width")
    lambda_offdiag: float = Field(0.0051, ge=0.0, description="weight of the off-diagonal term")


class VICRegConfig(Strict):
    """The paper's defaults: a 3-layer 8192-wide expander, weights 25 / 25 / 1."""

    proj_hidden: int = Field(8192, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(8192, ge=2, description="projector output width")
    sim_weight: float = Field(25.0, ge=0.0, description="invariance (mean squared error)")
    var_weight: float = Field(25.0, ge=0.0, description="variance hinge per dimension")
    cov_weight: float = Field(1.0, ge=0.0, description="off-diagonal covariance")


class MoCoConfig(Strict):
    """MoCo v3's defaults (ResNet heads): projector 4096-4096-256, predictor 4096-256."""

    proj_hidden: int = Field(4096, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(256, ge=1, description="projector and predictor output width")
    pred_hidden: int = Field(4096, ge=1, description="predictor hidden width")
    temperature: float = Field(0.2, gt=0.0, description="InfoNCE temperature")
    base_momentum: float = Field(
        0.99, ge=0.0, le=1.0, description="key encoder momentum at step 0, rising to 1"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")


class DINOConfig(Strict):
    """DINO's defaults (Caron et al. 2021, ResNet-50 / ViT-S recipes)."""

    out_dim: int = Field(65536, ge=2, description="prototypes of the head's last layer")
    hidden_dim: int = Field(2048, ge=1, description="head MLP width")
    bottleneck_dim: int = Field(256, ge=1, description="head output before the prototypes")
    norm_last_layer: bool = Field(True, description="prototype weights of norm 1 (frozen g)")
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.04, gt=0.0, description="after the warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0.0, description="at step 0")
    warmup_teacher_temp_steps: int = Field(
        0, ge=0, description="global optimizer steps of the linear teacher-temperature warm-up"
    )
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="of the teacher's centre")
    base_momentum: float = Field(
        0.996, ge=0.0, le=1.0, description="teacher momentum at step 0, rising to 1"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")


class ModelConfig(Strict):
    """Whole-model options, whatever the method."""

    sync_batchnorm: bool = Field(
        False,
        description="BatchNorm statistics over the global batch under DDP (torch's "
        "SyncBatchNorm on GPUs, rayssl's equivalent on CPU workers)",
    )


class LFRConfig(Strict):
    num_projectors: int = Field(16, ge=1, description="random target networks drawn")
    num_targets: int | None = Field(None, ge=1, description="DPP-selected subset; null: all")
    proj_dim: int = Field(64, ge=1, description="output width of each random projector")
    projector: Literal["backbone", "mlp"] = Field(
        "backbone", description="random target nets: a fresh copy of the backbone, or an MLP"
    )
    proj_hidden: int = Field(256, ge=1, description="hidden width of the projectors' MLP")
    pred_hidden: int = Field(256, ge=1, description="predictors' hidden width")
    predictor_training_epochs: int = Field(
        0, description="frozen-backbone epochs after each backbone epoch; 0 or less: none"
    )
    max_backbone_training_steps: int | None = Field(
        None, ge=1, description="end the run after this many backbone steps; null: no limit"
    )
    selection_batch_size: int = Field(
        128, ge=2, description="samples the DPP target selection looks at"
    )

    @model_validator(mode="after")
    def _targets_fit(self) -> LFRConfig:
        if self.num_targets is not None and self.num_targets > self.num_projectors:
            raise ValueError(
                f"lfr.num_targets ({self.num_targets}) cannot exceed lfr.num_projectors "
                f"({self.num_projectors})"
            )
        return self


class EvalConfig(Strict):
    """kNN / linear-probe evaluation of the frozen backbone (self-supervised methods)."""

    every: int = Field(0, ge=0, description="also every N epochs; 0: only at the end")
    knn_k: int = Field(20, ge=1, description="neighbours of the cosine kNN probe")
    linear_probe: bool = Field(
        True, description="also fit a logistic regression on standardised frozen features"
    )
    online_linear: bool = Field(
        False,
        description="train a linear classifier on detached backbone features alongside the "
        "method (labeled data); online_linear_acc every epoch, scored where the probes score",
    )
    online_linear_lr: float = Field(1e-3, gt=0.0, description="its AdamW learning rate")


class TrackingConfig(Strict):
    """MLflow, optional (`pip install -e '.[mlflow]'`): one MLflow run per rayssl run."""

    mlflow_uri: str = Field(
        description="tracking URI: sqlite:///mlflow.db, http://host:5000; a relative file "
        "or sqlite path is relative to the directory the command runs in"
    )
    experiment: str = Field("rayssl", min_length=1)

    @field_validator("mlflow_uri")
    @classmethod
    def _absolute(cls, uri: str) -> str:
        # Ray Train workers run in a working directory of their own: a relative store
        # would open a fresh, empty one there. Resolved where the config is read.
        return absolute_tracking_uri(uri)


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///mlflow.db`, `file:mlruns` or `mlruns` made absolute against the current
    directory; server URIs (http://, databricks, ...) and absolute paths unchanged."""
    for scheme in ("sqlite:///", "file://", "file:"):
        if uri.startswith(scheme):
            path = uri[len(scheme) :]
            if scheme == "file://" and not path.startswith("/"):
                return uri  # file://host/...: not ours to change
            if path and not path.startswith("/") and path != ":memory:":
                return (
                    f"{'sqlite:///' if scheme == 'sqlite:///' else 'file://'}{Path(path).resolve()}"
                )
            return uri
    if uri in ("databricks", "databricks-uc", "uc"):
        return uri  # MLflow's names for hosted stores
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return str(Path(uri).resolve())  # a plain folder: MLflow's file store
    return uri


class PerformanceConfig(Strict):
    """Speed switches, all off by default (on CPU they rarely help; see BENCHMARKS.md)."""

    amp: Literal["none", "bf16"] = Field(
        "none", description="bf16: autocast forward passes to bfloat16 (weights stay float32)"
    )
    channels_last: bool = Field(
        False, description="image (C, H, W) data: model and batches in channels_last layout"
    )
    compile: bool = Field(False, description="torch.compile the training step")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    compile_backend: str = Field("inductor", description="torch.compile backend")


BUILTIN_METHODS = (
    "supervised",
    "byol",
    "simclr",
    "lfr",
    "barlow_twins",
    "vicreg",
    "moco",
    "dino",
)
# what rayssl passes to an import-path method's constructor when it names them
METHOD_INFERRED = (
    "features",
    "num_classes",
    "input_shape",
    "learning_rate",
    "optimizer",
    "optimizer_kwargs",
    "lr_scheduler",
    "lr_scheduler_kwargs",
)


class TrainConfig(Strict):
    """One training run. Every field has a default, so `{}` is a valid (supervised MNIST-1D) run."""

    method: str = Field(
        "supervised",
        description="supervised | byol | simclr | lfr | barlow_twins | vicreg | moco | dino, or a "
        "Method subclass 'package.module:Class'",
    )
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of an import-path method's class"
    )
    name: str | None = Field(None, description="run name; default: the config file's stem")
    seed: int = Field(0, ge=0, description="seeds weights, data order, views and probes")
    epochs: int = Field(10, ge=1, description="passes over the training split")
    num_workers: int | tuple[int, int] = Field(
        2,
        description="Ray Train workers; 0: local mode, the loop runs in this process; "
        "[MIN, MAX]: elastic, runs on as many as fit and resizes when nodes come and go",
    )
    elastic_check_s: float = Field(
        60.0, gt=0, description="elastic runs: how often Ray Train looks for room to grow"
    )
    cpus_per_worker: float = Field(
        1.0, gt=0.0, description="CPUs Ray reserves per worker; also its torch thread count"
    )
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); false: CPU on gloo")
    storage_path: str = Field(
        "./runs",
        description="run folders: a local path, a shared filesystem or an s3:// / gs:// URI",
    )
    max_failures: int = Field(0, ge=-1, description="-1: retry forever")
    grad_clip: float | None = Field(
        None, gt=0.0, description="clip the global gradient norm to this; null: no clipping"
    )
    data: DataConfig = DataConfig()
    backbone: NetConfig = NetConfig(name="cnn1d")
    head: NetConfig = NetConfig(name="linear")
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_scheduler: LRSchedulerConfig = LRSchedulerConfig()
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = CheckpointConfig()
    supervised: SupervisedConfig = SupervisedConfig()
    byol: BYOLConfig = BYOLConfig()
    simclr: SimCLRConfig = SimCLRConfig()
    lfr: LFRConfig = LFRConfig()
    barlow_twins: BarlowTwinsConfig = BarlowTwinsConfig()
    vicreg: VICRegConfig = VICRegConfig()
    moco: MoCoConfig = MoCoConfig()
    dino: DINOConfig = DINOConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()
    performance: PerformanceConfig = PerformanceConfig()
    tracking: TrackingConfig | None = None

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers_shape(cls, value: Any) -> Any:
        """A count or a [MIN, MAX] pair, said in one message (not one per union member)."""
        given = value
        if isinstance(value, bool):
            value = None  # refused below: True is not a count
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # --set num_workers=4
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
        raise ValueError(f"expected a count (2) or an elastic range [MIN, MAX], got {given!r}")

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        self._check_workers()
        if self.num_workers == 0 and (
            self.data.name == "parquet" or (self.data.name == "images" and not self.data.in_memory)
        ):
            raise ValueError(
                "num_workers 0 (local mode) holds data in memory; streamed data (parquet, "
                "images with in_memory false) goes through Ray Data to Ray Train workers: "
                "set num_workers >= 1"
            )
        if not self.elastic and self.data.batch_size % max(1, self.num_workers):
            raise ValueError(
                f"data.batch_size ({self.data.batch_size}) must be divisible by num_workers "
                f"({self.num_workers}): it is the global batch, split evenly across workers"
            )
        self._check_method()
        self._check_local_crops()
        self._check_monitor()
        if self.head.init_from is not None:
            raise ValueError("head.init_from: only the backbone starts from another run")
        if self.optimizer.backbone_lr_scale != 1.0 and self.method != "supervised":
            raise ValueError(
                f"optimizer.backbone_lr_scale scales a supervised run's backbone lr; a "
                f"{self.method} run trains its backbone at optimizer.lr: remove it"
            )
        from rayssl import nets

        for section, registry in (("backbone", nets.BACKBONES), ("head", nets.HEADS)):
            spec: NetConfig = getattr(self, section)
            try:
                check_kwargs(spec.factory(registry), spec.kwargs, inferred=nets.INFERRED_ARGS)
            except ValueError as exc:
                raise ValueError(f"{section}.name '{spec.name}': {exc}") from None
        return self

    def _check_workers(self) -> None:
        """`num_workers`: a count >= 0, or an elastic [MIN, MAX] range with 1 <= MIN <= MAX
        whose every worker count divides the global batch (a resize keeps the global batch
        and splits it evenly: no gradient accumulation, which would split SimCLR's negatives
        and BatchNorm's statistics into micro-batches and so change the training)."""
        if not self.elastic:
            if self.num_workers < 0:
                raise ValueError(f"num_workers: {self.num_workers} must be >= 0")
            return
        low, high = self.num_workers
        if not 1 <= low <= high:
            raise ValueError(
                f"num_workers: [{low}, {high}] must be [MIN, MAX] with 1 <= MIN <= MAX "
                "(local mode, 0, cannot resize)"
            )
        batch = self.data.batch_size
        odd = [n for n in range(low, high + 1) if batch % n]
        if odd:
            need = math.lcm(*range(low, high + 1))
            raise ValueError(
                f"data.batch_size ({batch}) must be divisible by every worker count "
                f"num_workers [{low}, {high}] allows ({', '.join(map(str, odd))} "
                f"{'does' if len(odd) == 1 else 'do'} not divide it): a resize keeps the "
                f"global batch and splits it evenly; use a multiple of {need} (e.g. "
                f"{need * max(1, round(batch / need))}) or a narrower range"
            )
        if self.max_failures == 0:
            raise ValueError(
                f"num_workers [{low}, {high}] (elastic) continues on fewer workers through a "
                "restart after a node is lost, which max_failures 0 forbids: set max_failures "
                "to a count or -1 (preemption notices do not count against it)"
            )

    @property
    def builtin_method(self) -> bool:
        return self.method in BUILTIN_METHODS

    def _check_method(self) -> None:
        """A built-in name, or an importable Method subclass whose constructor takes every
        `method_options` key (checked here, before Ray starts)."""
        if self.builtin_method:
            if self.method_options:
                raise ValueError(
                    f"method_options: only for a method given by import path; '{self.method}' "
                    f"takes its options from its own section ({self.method}: ...)"
                )
            return
        if ":" not in self.method:
            raise ValueError(
                f"method: '{self.method}' is neither one of {', '.join(BUILTIN_METHODS)} nor of "
                "the form 'package.module:ClassName'"
            )
        from rayssl.methods import Method

        try:
            cls = import_factory(self.method)
        except ValueError as exc:
            raise ValueError(f"method: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"method: '{self.method}' is not a subclass of rayssl's Method")
        params = inspect.signature(cls).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(self.method_options) - set(params) - set(METHOD_INFERRED))
            if unknown:
                takes = [n for n in params if n not in ("backbone", *METHOD_INFERRED)]
                raise ValueError(
                    f"method_options: {', '.join(unknown)} not taken by {self.method} "
                    f"(it takes: {', '.join(takes) or 'nothing'})"
                )

    def _check_local_crops(self) -> None:
        """Multi-crop views only for a method that takes them (DINO, or an import-path
        method whose class sets `multi_crop = True`): the others' losses pair two views."""
        image = self.data.augment.image
        if image is None or image.local_crops is None or not image.local_crops.number:
            return
        cls = None if self.builtin_method else import_factory(self.method)
        if self.method == "dino" or getattr(cls, "multi_crop", False):
            return
        raise ValueError(
            f"data.augment.image.local_crops: {self.method} pairs two views and takes no "
            "local crops (dino does, and an import-path Method with multi_crop = True): "
            "remove local_crops or set its number to 0"
        )

    def reported_metrics(self) -> list[str]:
        """The per-epoch metrics this config's run reports, that early stopping can watch."""
        names = ["train_loss"]
        d = self.data
        has_val = d.val_path if d.name == "parquet" else d.val_path or d.val_fraction > 0
        if has_val:
            names.append("val_loss")
        if self.method == "supervised":
            names += [f"train_{m}" for m in self.supervised.metrics]
            if has_val:
                names += [f"val_{m}" for m in self.supervised.metrics]
        else:
            names += ["knn_acc", *(["linear_acc"] if self.eval.linear_probe else [])]
            names += ["online_linear_acc"] if self.eval.online_linear else []
        return names

    def _check_monitor(self) -> None:
        es = self.early_stopping
        if es is None:
            return
        reported = self.reported_metrics()
        if es.monitor not in reported:
            raise ValueError(
                f"early_stopping.monitor '{es.monitor}' is not reported by this "
                f"{self.method} run; choose one of: {', '.join(reported)}"
            )
        if es.monitor in ("knn_acc", "linear_acc"):
            every = self.eval.every
            if not every or es.patience % every:
                raise ValueError(
                    f"early_stopping.monitor '{es.monitor}' is measured every eval.every "
                    f"({every}) epochs: set eval.every >= 1 and early_stopping.patience "
                    f"({es.patience}) to a multiple of it"
                )


# --------------------------------------------------------------------------- loading


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, joined: 'field.path: message (got value)'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(TrainConfig, err["loc"][:-1])
            accepted = ", ".join(model.model_fields) if model else "see the README"
            msg = f"unknown key; accepted keys here: {accepted}"
        elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
            got = err["input"]
            if not isinstance(got, (dict, list)):
                msg = f"{msg} (got {got!r})"
        if err["type"] == "value_error" and not err["loc"]:
            parts.append(msg)
        else:
            parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn ["optimizer.lr=3e-4", "data.augment.shift=4"] into a nested dict (values are YAML)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set optimizer.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': '{part}' is set twice with different kinds")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of keys, got {type(raw).__name__}"
        )
    return raw


def validate_train_config(raw: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_train_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Read, override and validate a training config; the run name defaults to the file stem."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides))
    raw.setdefault("name", Path(path).stem)
    return validate_train_config(raw)
