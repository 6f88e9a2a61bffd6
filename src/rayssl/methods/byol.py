"""BYOL (Grill et al. 2020): an online network predicts a momentum target's projection."""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import NegativeCosineSimilarity
from rayssl.methods.momentum import deactivate_requires_grad, update_momentum
from rayssl.optim.schedules import cosine_schedule

# Minerva's module held these three; they stay importable from here
__all__ = ["BYOL", "BYOLConfig", "cosine_schedule", "deactivate_requires_grad", "update_momentum"]


class BYOL(Method):
    """Online = backbone + projection + prediction; target = momentum copies of backbone and
    projection, updated after every optimizer step with momentum following a cosine from
    `base_momentum` to 1 over `schedule` optimizer steps (global steps; None: the whole run).
    Batches are `((view0, view1), y)`; y is ignored."""

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        prediction_head: nn.Module | None = None,
        learning_rate: float = 1e-3,
        schedule: int | None = 90000,
        criterion: nn.Module | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        base_momentum: float = 0.996,
        lr_scheduler: Any = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
        self.backbone = backbone
        features = infer_features(backbone) if projection_head is None else None
        self.projection_head = projection_head or MLPHead([features, 4096, 256])
        self.prediction_head = prediction_head or MLPHead([256, 4096, 256])
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = criterion or NegativeCosineSimilarity()
        self.schedule_length = schedule
        self.base_momentum = base_momentum
        self.take_setup(
            learning_rate,
            optimizer,
            {"weight_decay": 1e-6} if optimizer_kwargs is None else optimizer_kwargs,
            lr_scheduler,
            lr_scheduler_kwargs,
        )
        self.momentum = base_momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))

    @torch.no_grad()
    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(1))

    def _loss(self, views: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        v0, v1 = views
        both = torch.cat([v0, v1])  # one pass per network for both views
        p0, p1 = self(both).chunk(2)
        z0, z1 = self.forward_momentum(both).chunk(2)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def training_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def param_groups(self):
        online = [self.backbone, self.projection_head, self.prediction_head]
        return [{"params": [p for m in online for p in m.parameters()]}]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_schedule(step, self.schedule_length or total_steps, self.base_momentum, 1.0)

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """The target's momentum after the epoch's last step (a curve worth watching)."""
        return {"momentum": float(self.momentum)} if stage == "train" else {}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.momentum = self.momentum_at(step, total_steps)
        update_momentum(self.backbone, self.backbone_momentum, self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, self.momentum)

    def extra_state(self):
        return {"momentum": self.momentum}

    def load_extra_state(self, state):
        self.momentum = state["momentum"]


class BYOLConfig(MethodConfig):
    proj_hidden: int = Field(512, ge=1, description="projector hidden width")
    proj_dim: int = Field(128, ge=1, description="projector output width")
    base_momentum: float = Field(
        0.996, ge=0.0, le=1.0, description="target momentum at step 0, rising to 1 on a cosine"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")
    pred_hidden: int = Field(512, ge=1, description="predictor hidden width")


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    c, backbone, features, setup = parts.section, parts.backbone, parts.features, parts.setup
    return BYOL(
        backbone,
        projection_head=MLPHead([features, c.proj_hidden, c.proj_dim]),
        prediction_head=MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim]),
        schedule=c.schedule,
        base_momentum=c.base_momentum,
        **setup,
    )


BUILTIN = Builtin("byol", BYOL, BYOLConfig, build, "Bootstrap Your Own Latent (Grill et al. 2020)")
