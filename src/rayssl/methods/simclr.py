"""SimCLR (Chen et al. 2020): contrast two views of each sample against the global batch."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead, infer_features
from rayssl.methods.joint import JointEmbedding
from rayssl.methods.losses import NTXentLoss


class SimCLR(JointEmbedding):
    """backbone -> projection head -> NT-Xent over both views. Under DDP, negatives come from
    every rank (see NTXentLoss). Batches are `((view0, view1), y)`; y is ignored."""

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
        """`lr`: an alias of `learning_rate`."""
        if lr is not None:
            if learning_rate not in (1e-3, lr):
                raise ValueError(f"give lr ({lr}) or learning_rate ({learning_rate}), not both")
            learning_rate = lr
        if projection_head is None:
            features = infer_features(backbone)
            projection_head = MLPHead([features, features, 128])
        super().__init__(
            backbone,
            projection_head,
            NTXentLoss(temperature),
            flatten=flatten,
            learning_rate=learning_rate,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            lr_scheduler=lr_scheduler,
            lr_scheduler_kwargs=lr_scheduler_kwargs,
        )


class SimCLRConfig(MethodConfig):
    proj_hidden: int = Field(512, ge=1, description="projector hidden width")
    proj_dim: int = Field(128, ge=1, description="projector output width")
    temperature: float = Field(0.5, gt=0.0, description="NT-Xent temperature")
    output_batch_norm: bool = Field(
        False,
        description="BatchNorm on the projector's output (the paper's code and lightly's "
        "SimCLRProjectionHead have it)",
    )


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    c, backbone, features, setup = parts.section, parts.backbone, parts.features, parts.setup
    head = MLPHead([features, c.proj_hidden, c.proj_dim], output_batch_norm=c.output_batch_norm)
    return SimCLR(backbone, projection_head=head, temperature=c.temperature, **setup)


BUILTIN = Builtin(
    "simclr",
    SimCLR,
    SimCLRConfig,
    build,
    "SimCLR (Chen et al. 2020), NT-Xent over the global batch",
)
