"""VICReg (Bardes et al. 2022): invariance between views, variance kept up per dimension,
covariance between dimensions pushed down; no negatives, no momentum encoder."""

from __future__ import annotations

from typing import Any

from torch import nn

from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.joint import JointEmbedding
from rayssl.methods.losses import VICRegLoss


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
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        flatten: bool = True,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see JointEmbedding)."""
        if projection_head is None:
            projection_head = MLPHead([infer_features(backbone), 8192, 8192, 8192])
        loss = VICRegLoss(sim_weight, var_weight, cov_weight)
        super().__init__(backbone, projection_head, loss, flatten=flatten, **setup)
