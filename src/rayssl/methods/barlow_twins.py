"""Barlow Twins (Zbontar et al. 2021): make the two views' embeddings' cross-correlation the
identity: invariant per dimension, redundant across none."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.joint import JointEmbedding
from rayssl.methods.losses import BarlowTwinsLoss


class BarlowTwinsConfig(MethodConfig):
    """The paper's defaults: a 3-layer 8192-wide projector, lambda 0.0051."""

    proj_hidden: int = Field(8192, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(8192, ge=2, description="projector output width")
    lambda_offdiag: float = Field(0.0051, ge=0.0, description="weight of the off-diagonal term")


DEFAULTS = BarlowTwinsConfig()  # the class's defaults are its section's


def projector(features: int, c: BarlowTwinsConfig) -> nn.Module:
    return MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim])


class BarlowTwins(JointEmbedding):
    """backbone -> projector -> Barlow Twins loss over the global batch (see BarlowTwinsLoss).

    The paper's projector is three linear layers of 8192 with BatchNorm + ReLU between
    them, and lambda = 0.0051. Batches are `((view0, view1), y)`; y is ignored."""

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        lambda_offdiag: float = DEFAULTS.lambda_offdiag,
        flatten: bool = True,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see JointEmbedding)."""
        if projection_head is None:
            projection_head = projector(infer_features(backbone), DEFAULTS)
        super().__init__(
            backbone, projection_head, BarlowTwinsLoss(lambda_offdiag), flatten=flatten, **setup
        )


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    head = projector(parts.features, parts.section)
    return BarlowTwins(parts.backbone, head, **parts.options_for(BarlowTwins), **parts.setup)


BUILTIN = Builtin(
    "barlow_twins", BarlowTwins, BarlowTwinsConfig, build, "Barlow Twins (Zbontar et al. 2021)"
)
