"""SwAV (Caron et al. 2020): each view's assignment to a set of prototypes, balanced over
the global batch by Sinkhorn-Knopp, is predicted from every other view; multi-crop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, backbone_by_crop_size, infer_features
from rayssl.methods.losses import SwAVLoss
from rayssl.methods.queue import EmbeddingQueue


class SwAVConfig(MethodConfig):
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

    def check_run(self, cfg: Any) -> None:
        """The queue takes whole global batches, so every rank's share of it is equal."""
        queue, batch = self.queue_length, cfg.data.batch_size
        if queue % batch:
            raise ValueError(
                f"swav.queue_length ({queue}) must be a multiple of data.batch_size "
                f"({batch}): whole global batches enter the queue; use e.g. "
                f"{batch * max(1, round(queue / batch))}"
            )


DEFAULTS = SwAVConfig()  # the class's defaults are its section's


def projector(features: int, c: SwAVConfig) -> nn.Module:
    return MLPHead([features, c.proj_hidden, c.proj_dim])


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
        num_prototypes: int = DEFAULTS.num_prototypes,
        proj_dim: int = DEFAULTS.proj_dim,
        temperature: float = DEFAULTS.temperature,
        epsilon: float = DEFAULTS.epsilon,
        sinkhorn_iterations: int = DEFAULTS.sinkhorn_iterations,
        freeze_prototypes_epochs: int = DEFAULTS.freeze_prototypes_epochs,
        queue_length: int = DEFAULTS.queue_length,
        queue_start_epoch: int = DEFAULTS.queue_start_epoch,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head or projector(
            infer_features(backbone), DEFAULTS.model_copy(update={"proj_dim": proj_dim})
        )
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.criterion = SwAVLoss(temperature, epsilon, sinkhorn_iterations)
        self.freeze_prototypes_epochs, self.epoch = freeze_prototypes_epochs, 0
        self.queue_length, self.queue_start_epoch = queue_length, queue_start_epoch
        # One queue per global crop, the same on every rank; each rank brings its share to
        # Sinkhorn, whose sums span the ranks, so the codes are those of one process on the
        # whole queue. Checkpointed through extra_state.
        self.queue = EmbeddingQueue(queue_length, groups=2)
        self.take_setup(**setup)

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


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    head = projector(parts.features, parts.section)
    return SwAV(parts.backbone, head, **parts.options_for(SwAV), **parts.setup)


BUILTIN = Builtin("swav", SwAV, SwAVConfig, build, "SwAV (Caron et al. 2020), multi-crop")
