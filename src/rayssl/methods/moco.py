"""MoCo v3 (Chen, Xie and He 2021): queries from an online network contrast against keys
from its momentum encoder, the other samples of the global batch as negatives."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.byol import BYOL
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import MoCoInfoNCELoss


class MoCoConfig(MethodConfig):
    """MoCo v3's defaults (its ResNet heads): a 2-layer projector 4096-256 ending in
    BatchNorm without scale and shift, a 2-layer predictor 4096-256 ending in a Linear."""

    older_runs_lack: ClassVar[dict[str, Any]] = {"proj_layers": 3, "proj_output_batch_norm": False}

    proj_layers: int = Field(
        2,
        ge=2,
        le=3,
        description="projector Linear layers: 2, the reference's ResNet projector; 3, its "
        "ViT projector (rayssl before 2026-12-06, kept so those runs resume)",
    )
    proj_output_batch_norm: bool = Field(
        True,
        description="BatchNorm1d(affine=False) after the projector's last layer, as the "
        "reference (false: rayssl before 2026-12-06)",
    )
    proj_hidden: int = Field(4096, ge=1, description="projector hidden width")
    proj_dim: int = Field(256, ge=1, description="projector and predictor output width")
    pred_hidden: int = Field(4096, ge=1, description="predictor hidden width")
    temperature: float = Field(0.2, gt=0.0, description="InfoNCE temperature")
    base_momentum: float = Field(
        0.99, ge=0.0, le=1.0, description="key encoder momentum at step 0, rising to 1"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")


DEFAULTS = MoCoConfig()  # the class's defaults are its section's


def projector(features: int, c: MoCoConfig) -> nn.Module:
    return MLPHead(
        [features, *[c.proj_hidden] * (c.proj_layers - 1), c.proj_dim],
        output_batch_norm=c.proj_output_batch_norm,
        output_affine=False,
    )


def predictor(c: MoCoConfig) -> nn.Module:
    return MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])


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
        temperature: float = DEFAULTS.temperature,
        base_momentum: float = DEFAULTS.base_momentum,
        schedule: int | None = DEFAULTS.schedule,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs` (see BYOL)."""
        if projection_head is None:  # the reference's ResNet projector
            projection_head = projector(infer_features(backbone), DEFAULTS)
        if prediction_head is None:
            prediction_head = predictor(DEFAULTS)
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


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    heads = {
        "projection_head": projector(parts.features, parts.section),
        "prediction_head": predictor(parts.section),
    }
    return MoCo(parts.backbone, **heads, **parts.options_for(MoCo), **parts.setup)


BUILTIN = Builtin("moco", MoCo, MoCoConfig, build, "MoCo v3 (Chen et al. 2021)")
