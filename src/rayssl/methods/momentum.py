"""The momentum (EMA) copy of a network that BYOL, MoCo v3 and DINO keep: frozen, and moved
towards the online network after every optimizer step. The momentum's own schedule is
`rayssl.optim.schedules.cosine_schedule`."""

from __future__ import annotations

import torch
from torch import nn


def deactivate_requires_grad(model: nn.Module) -> None:
    """Freeze every parameter of `model`."""
    for p in model.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """model_ema = m * model_ema + (1 - m) * model, for parameters and float buffers, as one
    fused multi-tensor op per group (no per-parameter Python loop)."""
    ema_params = list(model_ema.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - m)
    ema_buffers, buffers = [], []
    for b_ema, b in zip(model_ema.buffers(), model.buffers(), strict=True):
        if b.is_floating_point():
            ema_buffers.append(b_ema)
            buffers.append(b)
        else:
            b_ema.copy_(b)  # e.g. BatchNorm's num_batches_tracked
    if ema_buffers:
        torch._foreach_lerp_(ema_buffers, buffers, 1.0 - m)
