"""MoCo v3 (Chen, Xie and He 2021): queries from an online network contrast against keys
from its momentum encoder, the other samples of the global batch as negatives."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rayssl.methods.byol import BYOL
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import MoCoInfoNCELoss


class MoCo(BYOL):
    """BYOL's two networks (online backbone + projector + predictor; momentum copies of
    backbone and projector, the fused EMA after every optimizer step with the momentum on a
    cosine from `base_momentum` to 1 over global steps), with MoCo v3's symmetric InfoNCE
    in place of BYOL's regression: loss = ctr(q0, k1) + ctr(q1, k0), keys gathered from every
    rank. The reference's heads (ResNet): projector 4096-256 ending in BatchNorm without
    scale and shift, predictor 4096-256 ending in a Linear; momentum 0.99; temperature 0.2
    (ViT) to 1.0 (ResNet-50). Batches are `((view0, view1), y)`."""

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        prediction_head: nn.Module | None = None,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        schedule: int | None = None,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see BYOL)."""
        if projection_head is None:  # the reference's ResNet projector
            projection_head = MLPHead(
                [infer_features(backbone), 4096, 256], output_batch_norm=True, output_affine=False
            )
        if prediction_head is None:
            prediction_head = MLPHead([256, 4096, 256])
        setup.setdefault("optimizer_kwargs", {})
        super().__init__(
            backbone,
            projection_head=projection_head,
            prediction_head=prediction_head,
            schedule=schedule,
            base_momentum=base_momentum,
            criterion=MoCoInfoNCELoss(temperature),
            **setup,
        )

    def _loss(self, views: tuple[torch.Tensor, torch.Tensor], gather: bool = True):
        v0, v1 = views
        both = torch.cat([v0, v1])  # one pass per network for both views
        q0, q1 = self(both).chunk(2)
        k0, k1 = self.forward_momentum(both).chunk(2)
        return self.criterion(q0, k1, gather=gather) + self.criterion(q1, k0, gather=gather)

    def training_step(self, batch):
        return {"loss": self._loss(batch[0], gather=True)}

    def validation_step(self, batch):
        # each rank's rows alone: ranks may hold different numbers of evaluation rows
        return {"loss": self._loss(batch[0], gather=False)}
