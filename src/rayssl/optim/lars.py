"""LARS (You et al. 2017), the large-batch optimizer of the SimCLR, BYOL and Barlow Twins
recipes.

Hand-written: torch ships none; timm's and lightly's need a torchvision built for the same
torch (rayssl depends on neither), and torchlars is a CUDA-only extension from 2020.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step per parameter tensor is scaled by a trust ratio.

    For a weight w with gradient g: u = g + weight_decay * w; when |w| > 0 and |u| > 0,
    u <- u * trust_coefficient * |w| / |u|; then buf <- momentum * buf + u and
    w <- w - lr * buf. Tensors with one dimension or fewer (biases, BatchNorm and LayerNorm
    parameters) are excluded: no weight decay and no trust ratio, as in the papers' code.
    A group may set `exclude: False` to adapt everything in it.

    Like torch's fused optimizers it can skip a step on the device: with `found_inf` (a
    0-dim tensor, 1.0 to skip) set on it, a skipped step leaves the weights and momentum
    buffers as they were (and a first step creates the buffer at zero), without reading the
    flag back; `grad_scale`, if set, divides the gradients first. GradScaler and
    rayssl's step (`engine/step.py`) set both.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "exclude": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip, scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad if scale is None else p.grad / scale
                if not (group["exclude"] and p.ndim <= 1):
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * w_norm / u_norm
                    ok = (w_norm > 0) & (u_norm > 0)
                    update = update.mul(torch.where(ok, ratio, torch.ones_like(ratio)))
                state = self.state[p]
                if skip is None:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(update).detach()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                    p.add_(state["momentum_buffer"], alpha=-group["lr"])
                    continue
                keep = skip == 0  # torch.where: no NaN of a skipped step leaks through
                old = state.get("momentum_buffer", torch.zeros_like(p))
                buf = torch.where(keep, old * group["momentum"] + update, old)
                state["momentum_buffer"] = buf
                p.add_(torch.where(keep, buf, torch.zeros_like(buf)), alpha=-group["lr"])
        return loss
