"""SwAV (Caron et al. 2020): each view's assignment to a set of prototypes, balanced over
the global batch by Sinkhorn-Knopp, is predicted from every other view; multi-crop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.methods.base import Method
from rayssl.methods.heads import MLPHead, backbone_by_crop_size, infer_features
from rayssl.methods.losses import SwAVLoss
from rayssl.methods.queue import EmbeddingQueue


class SwAV(Method):
    """backbone -> projector -> L2 normalisation -> prototypes (a bias-free Linear whose
    rows are renormalised to unit length before every step, as the paper's code does).

    Codes come from the two global crops only, through Sinkhorn-Knopp with its sums
    all-reduced over ranks (`SwAVLoss`), and every crop, local ones included, predicts the
    codes of the global crops other than itself. The prototypes do not learn during the
    first `freeze_prototypes_epochs` epochs (the paper freezes them for its first
    iterations). With `queue_length` > 0, the paper's remedy for small batches: from epoch
    `queue_start_epoch` on, the global crops' embeddings of the last `queue_length` samples
    (whole global batches) are kept, and once the queue is full they join each
    batch in Sinkhorn-Knopp, scored by the current prototypes. Batches are
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
        queue_length: int = 0,
        queue_start_epoch: int = 15,
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
        self.queue_length, self.queue_start_epoch = queue_length, queue_start_epoch
        # One queue per global crop, the same on every rank; each rank brings its share to
        # Sinkhorn, whose sums span the ranks, so the codes are those of one process on the
        # whole queue. Checkpointed through extra_state.
        self.queue = EmbeddingQueue(queue_length, groups=2)
        self.take_setup(setup)

    def _loss(self, views, gather: bool, queue: bool = False) -> torch.Tensor:
        crops = list(views)
        z = F.normalize(self.projection_head(backbone_by_crop_size(self.backbone, crops)), dim=1)
        scores = self.prototypes(z).split(len(crops[0]))
        queued = self._queued_scores() if queue else None
        loss = self.criterion(list(scores), globals_=2, gather=gather, queued=queued)
        if queue and self.queue_length and self.epoch >= self.queue_start_epoch:
            self.queue.push(z[: 2 * len(crops[0])].detach().unflatten(0, (2, -1)))
        return loss

    def training_step(self, batch):
        with torch.no_grad():  # unit-length prototypes, before the step that uses them
            weight = self.prototypes.weight
            weight.copy_(F.normalize(weight, dim=1))
        return {"loss": self._loss(batch[0], gather=True, queue=True)}

    def validation_step(self, batch):
        """The batch's own loss: the queue is neither used nor filled."""
        return {"loss": self._loss(batch[0], gather=False)}

    @torch.no_grad()
    def _queued_scores(self) -> list[torch.Tensor] | None:
        """This rank's share of the full queue, scored by the current prototypes: one
        (queue_length / world, K) tensor per global crop; None until the queue is full."""
        if not self.queue.full:
            return None
        share = self.queue.share().to(self.prototypes.weight.dtype)
        return list(self.prototypes(share).unbind(0))

    def on_training_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_after_backward(self) -> None:
        """The prototypes' first-epochs freeze: their gradients are dropped (the optimizer
        skips them, weight decay included). Keyed to the epoch the loop announces, so a
        resumed run agrees."""
        if self.epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def extra_state(self) -> dict[str, Any]:
        return self.queue.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue.load_state_dict(state, self.prototypes.weight.device)
