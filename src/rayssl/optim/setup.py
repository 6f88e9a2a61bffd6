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
