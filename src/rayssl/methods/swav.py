"""SwAV (Caron et al. 2020): each view's assignment to a set of prototypes, balanced over
the global batch by Sinkhorn-Knopp, is predicted from every other view; multi-crop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.losses import SwAVLoss
from rayssl.methods.base import Method
from rayssl.methods.heads import MLPHead, backbone_by_crop_size, infer_features


class SwAV(Method):
    """backbone -> projector -> L2 normalisation -> prototypes (a bias-free Linear whose
    rows are renormalised to unit length before every step, as the paper's code does).

    Codes come from the two global crops only, through Sinkhorn-Knopp with its sums
    all-reduced over ranks (`SwAVLoss`), and every crop, local ones included, predicts the
    codes of the global crops other than itself. The prototypes do not learn during the
    first `freeze_prototypes_epochs` epochs (the paper freezes them for its first
    iterations). No queue: the paper adds one when the global batch is small (256) for its
    3,000 prototypes; here lower `num_prototypes` with the batch instead. Batches are
    `((global0, global1, local0, ...), y)`; y is ignored."""

    num_views = 2  # global crops; the loop appends the local ones
    multi_crop = True

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        num_prototypes: int = 3000,
        proj_dim: int = 128,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_epochs: int = 1,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head or MLPHead(
            [infer_features(backbone), 2048, proj_dim]
        )
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.criterion = SwAVLoss(temperature, epsilon, sinkhorn_iterations)
        self.freeze_prototypes_epochs, self.epoch = freeze_prototypes_epochs, 0
        self.take_setup(setup)

    def _loss(self, views, gather: bool) -> torch.Tensor:
        crops = list(views)
        z = F.normalize(self.projection_head(backbone_by_crop_size(self.backbone, crops)), dim=1)
        scores = self.prototypes(z).split(len(crops[0]))
        return self.criterion(list(scores), globals_=2, gather=gather)

    def training_step(self, batch):
        with torch.no_grad():  # unit-length prototypes, before the step that uses them
            weight = self.prototypes.weight
            weight.copy_(F.normalize(weight, dim=1))
        return {"loss": self._loss(batch[0], gather=True)}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0], gather=False)}

    def on_training_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_after_backward(self) -> None:
        """The prototypes' first-epochs freeze: their gradients are dropped (the optimizer
        skips them, weight decay included). Keyed to the epoch the loop announces, so a
        resumed run agrees."""
        if self.epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None
