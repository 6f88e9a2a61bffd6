"""What is trained: backbone and head options (built-in or by import path), and each
method's own section."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from rayssl.config.base import Strict


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
    output_batch_norm: bool = Field(
        False,
        description="BatchNorm on the projector's output (the paper's code and lightly's "
        "SimCLRProjectionHead have it)",
    )


class SimSiamConfig(Strict):
    """The paper's defaults (ResNet-50): a 3-layer 2048-wide projector ending in BatchNorm, a
    2048-512-2048 predictor trained at a fixed lr."""

    proj_hidden: int = Field(2048, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(2048, ge=2, description="projector output width")
    pred_hidden: int = Field(512, ge=1, description="predictor bottleneck width")
    fixed_predictor_lr: bool = Field(
        True,
        description="the predictor trains at optimizer.lr throughout, outside lr_scheduler "
        "(the paper's --fix-pred-lr)",
    )


class NNCLRConfig(Strict):
    """The paper's defaults: a 3-layer 2048-wide projector to 256 ending in BatchNorm, a
    2-layer 4096-wide predictor whose last layer has no BatchNorm or activation;
    temperature 0.1; a support set of 98,304 projections."""

    proj_hidden: int = Field(2048, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(256, ge=2, description="projector and predictor output width")
    pred_hidden: int = Field(4096, ge=1, description="predictor hidden width")
    predictor_output_batch_norm: bool = Field(
        False,
        description="a BatchNorm after the predictor's last layer (not the paper's; rayssl "
        "before 2026-12-06, kept so those runs resume)",
    )
    temperature: float = Field(0.1, gt=0.0)
    queue_length: int = Field(
        98304,
        ge=0,
        description="projections in the support set the nearest neighbours come from (keep it "
        "below the training set's size); 0: each projection is its own anchor",
    )


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
    """MoCo v3's defaults (its ResNet heads): a 2-layer projector 4096-256 ending in
    BatchNorm without scale and shift, a 2-layer predictor 4096-256 ending in a Linear."""

    proj_layers: int = Field(
        2,
        ge=2,
        le=3,
        description="projector Linear layers: 2, the reference's ResNet projector; 3, its "
        "ViT projector (rayssl before 2026-12-06, kept so those runs resume)",
    )
    proj_output_batch_norm: bool = Field(
        True,
        description="BatchNorm1d(affine=False) after the projector's last layer, as the "
        "reference (false: rayssl before 2026-12-06)",
    )
    proj_hidden: int = Field(4096, ge=1, description="projector hidden width")
    proj_dim: int = Field(256, ge=1, description="projector and predictor output width")
    pred_hidden: int = Field(4096, ge=1, description="predictor hidden width")
    temperature: float = Field(0.2, gt=0.0, description="InfoNCE temperature")
    base_momentum: float = Field(
        0.99, ge=0.0, le=1.0, description="key encoder momentum at step 0, rising to 1"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")


class SwAVConfig(Strict):
    """SwAV's defaults (Caron et al. 2020, ResNet-50): projector 2048-128, 3,000 prototypes,
    temperature 0.1, Sinkhorn epsilon 0.05 over 3 iterations."""

    proj_hidden: int = Field(2048, ge=1, description="projector hidden width")
    proj_dim: int = Field(128, ge=2, description="embedding width the prototypes act on")
    num_prototypes: int = Field(3000, ge=2, description="prototypes (clusters)")
    temperature: float = Field(0.1, gt=0.0, description="of the predicted assignments")
    epsilon: float = Field(0.05, gt=0.0, description="Sinkhorn-Knopp's entropy regularisation")
    sinkhorn_iterations: int = Field(3, ge=1)
    freeze_prototypes_epochs: int = Field(
        1, ge=0, description="epochs at the start during which the prototypes do not learn"
    )
    queue_length: int = Field(
        0,
        ge=0,
        description="past samples whose embeddings join each batch in Sinkhorn-Knopp, a "
        "multiple of data.batch_size (the paper: 3,840 at batch 256); 0: no queue",
    )
    queue_start_epoch: int = Field(
        15, ge=0, description="epoch (from 0) at which the queue starts to fill; used once full"
    )


class DINOConfig(Strict):
    """DINO's defaults (Caron et al. 2021, ResNet-50 / ViT-S recipes)."""

    out_dim: int = Field(65536, ge=2, description="prototypes of the head's last layer")
    hidden_dim: int = Field(2048, ge=1, description="head MLP width")
    bottleneck_dim: int = Field(256, ge=1, description="head output before the prototypes")
    norm_last_layer: bool = Field(True, description="prototype weights of norm 1 (frozen g)")
    batch_norm: bool = Field(
        False,
        description="BatchNorm after the head's hidden layers (the reference code's "
        "use_bn_in_head); small CNNs need it (docs/methods.md)",
    )
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.04, gt=0.0, description="after the warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0.0, description="at step 0")
    warmup_teacher_temp_steps: int = Field(
        0, ge=0, description="global optimizer steps of the linear teacher-temperature warm-up"
    )
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="of the teacher's centre")
    freeze_last_layer_epochs: int = Field(
        1, ge=0, description="epochs at the start in which the prototypes do not learn"
    )
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
