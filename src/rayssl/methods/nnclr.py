"""NNCLR (Dwibedi et al. 2021): contrastive learning whose positive for a view is the
nearest neighbour of its projection in a support set of past projections."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.losses import NNCLRLoss, nearest_neighbours
from rayssl.methods.queue import EmbeddingQueue


class NNCLRConfig(MethodConfig):
    """The paper's defaults: a 3-layer 2048-wide projector to 256 ending in BatchNorm, a
    2-layer 4096-wide predictor whose last layer has no BatchNorm or activation;
    temperature 0.1; a support set of 98,304 projections."""

    older_runs_lack: ClassVar[dict[str, Any]] = {"predictor_output_batch_norm": True}

    proj_hidden: int = Field(2048, ge=1, description="projector hidden width (two layers)")
    proj_dim: int = Field(256, ge=2, description="projector and predictor output width")
    pred_hidden: int = Field(4096, ge=1, description="predictor hidden width")
    predictor_output_batch_norm: bool = Field(
        False,
        description="a BatchNorm after the predictor's last layer (not the paper's; rayssl "
        "before 2026-12-06, kept so those runs resume)",
    )
    temperature: float = Field(0.1, gt=0.0)
    queue_length: int = Field(
        98304,
        ge=0,
        description="projections in the support set the nearest neighbours come from (keep it "
        "below the training set's size); 0: each projection is its own anchor",
    )


DEFAULTS = NNCLRConfig()  # the class's defaults are its section's


def projector(features: int, c: NNCLRConfig) -> nn.Module:
    return MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim], output_batch_norm=True)


def predictor(c: NNCLRConfig) -> nn.Module:
    return MLPHead(
        [c.proj_dim, c.pred_hidden, c.proj_dim], output_batch_norm=c.predictor_output_batch_norm
    )


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
        temperature: float = DEFAULTS.temperature,
        queue_length: int = DEFAULTS.queue_length,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head or projector(infer_features(backbone), DEFAULTS)
        self.prediction_head = prediction_head or predictor(DEFAULTS)
        self.criterion = NNCLRLoss(temperature)
        self.support = EmbeddingQueue(queue_length)
        self.take_setup(**setup)

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


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    heads = {
        "projection_head": projector(parts.features, parts.section),
        "prediction_head": predictor(parts.section),
    }
    return NNCLR(parts.backbone, **heads, **parts.options_for(NNCLR), **parts.setup)


BUILTIN = Builtin("nnclr", NNCLR, NNCLRConfig, build, "NNCLR (Dwibedi et al. 2021)")
