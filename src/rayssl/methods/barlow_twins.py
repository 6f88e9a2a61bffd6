"""Barlow Twins (Zbontar et al. 2021): make the two views' embeddings' cross-correlation the
identity: invariant per dimension, redundant across none."""

from __future__ import annotations

from typing import Any

from torch import nn

from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.joint import JointEmbedding
from rayssl.methods.losses import BarlowTwinsLoss


class BarlowTwins(JointEmbedding):
    """backbone -> projector -> Barlow Twins loss over the global batch (see BarlowTwinsLoss).

    The paper's projector is three linear layers of 8192 with BatchNorm + ReLU between
    them, and lambda = 0.0051. Batches are `((view0, view1), y)`; y is ignored."""

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        lambda_offdiag: float = 0.0051,
        flatten: bool = True,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see JointEmbedding)."""
        if projection_head is None:
            projection_head = MLPHead([infer_features(backbone), 8192, 8192, 8192])
        super().__init__(
            backbone, projection_head, BarlowTwinsLoss(lambda_offdiag), flatten=flatten, **setup
        )
