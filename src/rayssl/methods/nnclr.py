"""NNCLR (Dwibedi et al. 2021): contrastive learning whose positive for a view is the
nearest neighbour of its projection in a support set of past projections."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.methods.base import Method
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import NNCLRLoss, nearest_neighbours
from rayssl.methods.queue import EmbeddingQueue


class NNCLR(Method):
    """backbone -> projector (z, ending in BatchNorm) -> predictor (p, a plain Linear
    last: the paper's heads). Each view's projection is replaced by its nearest neighbour in
    the support set (cosine similarity, no gradient), which must pick out the other view's
    prediction among the global batch's: loss = (L(NN(z0), p1) + L(NN(z1), p0)) / 2
    (`NNCLRLoss`). The support set is a queue of the first view's projections of the last
    `queue_length` samples of every rank (`EmbeddingQueue`: the same on every rank,
    checkpointed); while it is empty a projection is its own anchor. Batches are
    `((view0, view1), y)`; y is ignored."""

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        prediction_head: nn.Module | None = None,
        temperature: float = 0.1,
        queue_length: int = 98304,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        features = infer_features(backbone) if projection_head is None else None
        self.projection_head = projection_head or MLPHead(
            [features, 2048, 2048, 256], output_batch_norm=True
        )
        self.prediction_head = prediction_head or MLPHead([256, 4096, 256])
        self.criterion = NNCLRLoss(temperature)
        self.support = EmbeddingQueue(queue_length)
        self.take_setup(setup)

    def _loss(self, views, gather: bool, update: bool = False) -> torch.Tensor:
        v0, v1 = views
        z = self.projection_head(self.backbone(torch.cat([v0, v1])).flatten(1))
        p0, p1 = self.prediction_head(z).chunk(2)
        z0, z1 = z.chunk(2)
        a0, a1 = self._anchor(z0), self._anchor(z1)
        loss = 0.5 * (self.criterion(a0, p1, gather) + self.criterion(a1, p0, gather))
        if update and self.support.length:
            self.support.push(F.normalize(z0.detach(), dim=1).unsqueeze(0))
        return loss

    def _anchor(self, z: torch.Tensor) -> torch.Tensor:
        """The nearest neighbour of each projection in the support set so far (itself while
        the set is empty), without gradient."""
        if self.support.filled == 0:
            return z.detach()
        return nearest_neighbours(z, self.support.rows()[0])

    def training_step(self, batch):
        return {"loss": self._loss(batch[0], gather=True, update=True)}

    def validation_step(self, batch):
        """Against the support set as it stands; the batch does not enter it."""
        return {"loss": self._loss(batch[0], gather=False)}

    def extra_state(self) -> dict[str, Any]:
        return self.support.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.support.load_state_dict(state, next(self.parameters()).device)
