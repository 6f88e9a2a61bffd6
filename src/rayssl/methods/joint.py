"""The shape SimCLR, Barlow Twins and VICReg share: backbone -> projector -> a loss between
the embeddings of two views. Each method is this plus its loss and its heads' defaults."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rayssl.methods.base import Method


class JointEmbedding(Method):
    """backbone -> projection head -> `loss_fn(z0, z1, gather=...)` over the two views.

    Training gathers embeddings across ranks (the losses' batch statistics or negatives span
    the global batch); evaluation scores each rank's rows alone, because ranks may hold
    different numbers of them. Batches are `((view0, view1), y)`; y is ignored."""

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module,
        loss_fn: nn.Module,
        flatten: bool = True,
        learning_rate: float = 1e-3,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_scheduler: Any = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head
        self.flatten = flatten
        self.loss_fn = loss_fn
        self.take_setup(
            learning_rate, optimizer, optimizer_kwargs, lr_scheduler, lr_scheduler_kwargs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        if self.flatten:
            features = features.flatten(1)
        return self.projection_head(features)

    def _loss(self, views, gather: bool) -> torch.Tensor:
        v0, v1 = views
        z0, z1 = self(torch.cat([v0, v1])).chunk(2)  # one pass: BatchNorm sees both views
        return self.loss_fn(z0, z1, gather=gather)

    def training_step(self, batch):
        return {"loss": self._loss(batch[0], gather=True)}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0], gather=False)}
