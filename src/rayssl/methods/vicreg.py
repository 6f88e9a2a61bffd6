"""VICReg (Bardes et al. 2022): invariance between views, variance kept up per dimension,
covariance between dimensions pushed down; no negatives, no momentum encoder."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.joint import JointEmbedding
from rayssl.methods.losses import VICRegLoss


class VICRegConfig(MethodConfig):
    """The paper's defaults: a 3-layer 8192-wide expander, weights 25 / 25 / 1."""

    proj_hidden: int = Field(8192, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(8192, ge=2, description="projector output width")
    sim_weight: float = Field(25.0, ge=0.0, description="invariance (mean squared error)")
    var_weight: float = Field(25.0, ge=0.0, description="variance hinge per dimension")
    cov_weight: float = Field(1.0, ge=0.0, description="off-diagonal covariance")


DEFAULTS = VICRegConfig()  # the class's defaults are its section's


def projector(features: int, c: VICRegConfig) -> nn.Module:
    return MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim])


class VICReg(JointEmbedding):
    """backbone -> expander -> VICReg loss, whose variance and covariance are those of the
    global batch (see VICRegLoss).

    The paper's expander is three linear layers of 8192 with BatchNorm + ReLU between them;
    its weights are invariance 25, variance 25, covariance 1. Batches are
    `((view0, view1), y)`; y is ignored."""

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        sim_weight: float = DEFAULTS.sim_weight,
        var_weight: float = DEFAULTS.var_weight,
        cov_weight: float = DEFAULTS.cov_weight,
        flatten: bool = True,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see JointEmbedding)."""
        if projection_head is None:
            projection_head = projector(infer_features(backbone), DEFAULTS)
        loss = VICRegLoss(sim_weight, var_weight, cov_weight)
        super().__init__(backbone, projection_head, loss, flatten=flatten, **setup)


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    head = projector(parts.features, parts.section)
    return VICReg(parts.backbone, head, **parts.options_for(VICReg), **parts.setup)


BUILTIN = Builtin("vicreg", VICReg, VICRegConfig, build, "VICReg (Bardes et al. 2022)")
