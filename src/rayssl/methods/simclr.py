"""SimCLR (Chen et al. 2020): contrast two views of each sample against the global batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rayssl.losses import NTXentLoss
from rayssl.methods.base import Method
from rayssl.methods.heads import MLPHead, infer_features


class SimCLR(Method):
    """backbone -> projection head -> NT-Xent over both views. Under DDP, negatives come from
    every rank (see NTXentLoss). Batches are `((view0, view1), y)`; y is ignored."""

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        flatten: bool = True,
        temperature: float = 0.5,
        learning_rate: float = 1e-3,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_scheduler: Any = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        lr: float | None = None,
    ):
        """`lr` is Minerva's name for `learning_rate` (accepted as an alias)."""
        super().__init__()
        if lr is not None:
            if learning_rate not in (1e-3, lr):
                raise ValueError(f"give lr ({lr}) or learning_rate ({learning_rate}), not both")
            learning_rate = lr
        self.backbone = backbone
        if projection_head is None:
            features = infer_features(backbone)
            projection_head = MLPHead([features, features, 128])
        self.projection_head = projection_head
        self.flatten = flatten
        self.loss_fn = NTXentLoss(temperature)
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_kwargs = dict(lr_scheduler_kwargs or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        if self.flatten:
            features = features.flatten(1)
        return self.projection_head(features)

    def _loss(self, views, gather: bool):
        v0, v1 = views
        z0, z1 = self(torch.cat([v0, v1])).chunk(2)
        return self.loss_fn(z0, z1, gather=gather)

    def training_step(self, batch):
        return {"loss": self._loss(batch[0], gather=True)}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0], gather=False)}
