"""The optimizer set-up every method takes: one default, and the five arguments a config
gives (`optimizer_setup`). `Method.take_setup` is where a method takes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rayssl.optim import schedules
from rayssl.optim.lars import LARS

if TYPE_CHECKING:
    from rayssl.config import TrainConfig

# the one default, for a method built without a config
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_OPTIMIZER: type[torch.optim.Optimizer] = torch.optim.Adam

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "lars": LARS,
}


def optimizer_setup(cfg: TrainConfig) -> dict[str, Any]:
    """The configured `learning_rate`, `optimizer` (a class), `optimizer_kwargs`,
    `lr_scheduler` (a factory) and `lr_scheduler_kwargs`, as every method takes them."""
    opt = cfg.optimizer
    kwargs: dict[str, Any] = {"weight_decay": opt.weight_decay}
    if opt.name == "sgd":
        kwargs["momentum"] = opt.momentum
    elif opt.name == "lars":
        kwargs.update(momentum=opt.momentum, trust_coefficient=opt.trust_coefficient)
    else:
        kwargs["betas"] = tuple(opt.betas)
    if opt.name != "lars":
        # torch's fused kernels (CPU and CUDA) skip a step on the device when told to, so
        # the step never waits on the device for its non-finite check (engine/guard.py)
        kwargs["fused"] = True
    sched = cfg.lr_scheduler
    scheduler, scheduler_kwargs = {
        "none": (None, {}),
        "onecycle": (schedules.onecycle, {"pct_start": sched.pct_start}),
        "warmup_cosine": (
            schedules.warmup_cosine,
            {"warmup_epochs": sched.warmup_epochs, "min_lr_ratio": sched.min_lr_ratio},
        ),
        "step": (schedules.step_decay, {"step_epochs": sched.step_epochs, "gamma": sched.gamma}),
    }[sched.name]
    return {
        "learning_rate": opt.lr,
        "optimizer": OPTIMIZERS[opt.name],
        "optimizer_kwargs": kwargs,
        "lr_scheduler": scheduler,
        "lr_scheduler_kwargs": scheduler_kwargs,
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, keeping how this optimizer runs (`fused`,
    `foreach`): a state saved by a non-fused optimizer (rayssl before its step skipped on
    the device) would otherwise turn a fused one back into the per-tensor kernels."""
    groups = [dict(g) for g in state["param_groups"]]
    for mine, theirs in zip(optimizer.param_groups, groups, strict=True):
        for key in ("fused", "foreach"):
            if key in mine:
                theirs[key] = mine[key]
    optimizer.load_state_dict({**state, "param_groups": groups})
