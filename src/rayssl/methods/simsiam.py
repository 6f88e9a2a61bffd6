"""SimSiam (Chen and He 2021): two views through one network; each view's prediction
regresses the other's projection, whose gradient is stopped. No negatives, no momentum
network."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import NegativeCosineSimilarity
from rayssl.optim.groups import unscheduled


class SimSiamConfig(MethodConfig):
    """The paper's defaults (ResNet-50): a 3-layer 2048-wide projector ending in BatchNorm, a
    2048-512-2048 predictor trained at a fixed lr."""

    proj_hidden: int = Field(2048, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(2048, ge=2, description="projector output width")
    pred_hidden: int = Field(512, ge=1, description="predictor bottleneck width")
    fixed_predictor_lr: bool = Field(
        True,
        description="the predictor trains at optimizer.lr throughout, outside lr_scheduler "
        "(the paper's --fix-pred-lr)",
    )


DEFAULTS = SimSiamConfig()  # the class's defaults are its section's


def projector(features: int, c: SimSiamConfig) -> nn.Module:
    return MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim], output_batch_norm=True)


def predictor(c: SimSiamConfig) -> nn.Module:
    return MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])


class SimSiam(Method):
    """backbone -> projector (z) -> predictor (p);
    loss = (D(p0, stopgrad(z1)) + D(p1, stopgrad(z0))) / 2 with D the negative cosine.

    The stop-gradient is what keeps it from collapsing (the paper's finding); the predictor
    trains at the optimizer's lr outside its schedule when `fixed_predictor_lr` (the paper's
    `--fix-pred-lr`, which it finds a little better). Batches are `((view0, view1), y)`;
    y is ignored."""

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        prediction_head: nn.Module | None = None,
        fixed_predictor_lr: bool = DEFAULTS.fixed_predictor_lr,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head or projector(infer_features(backbone), DEFAULTS)
        self.prediction_head = prediction_head or predictor(DEFAULTS)
        self.criterion = NegativeCosineSimilarity()
        self.fixed_predictor_lr = fixed_predictor_lr
        self.take_setup(**setup)

    def _loss(self, views) -> torch.Tensor:
        """Each view through the network on its own, as the paper's code: its BatchNorms
        (which SimSiam's projector and predictor rely on) normalise over one view's batch."""
        z0, z1 = (self.projection_head(self.backbone(v).flatten(1)) for v in views)
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))

    def training_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def param_groups(self) -> list[dict[str, Any]]:
        encoder = [*self.backbone.parameters(), *self.projection_head.parameters()]
        predictor = {"params": list(self.prediction_head.parameters())}
        if self.fixed_predictor_lr:
            predictor = unscheduled(predictor)
        return [{"params": encoder}, predictor]


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    heads = {
        "projection_head": projector(parts.features, parts.section),
        "prediction_head": predictor(parts.section),
    }
    return SimSiam(parts.backbone, **heads, **parts.options_for(SimSiam), **parts.setup)


BUILTIN = Builtin("simsiam", SimSiam, SimSiamConfig, build, "SimSiam (Chen and He 2021)")
