"""Learning-rate and weight-decay schedules over optimizer steps (pure functions plus thin
torch wrappers)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, StepLR

from rayssl.optim import groups


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then cosine down to `floor`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """Picklable LambdaLR function (LambdaLR checkpoints its attributes)."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float):
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, total_steps, floor

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.floor)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    warmup = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, WarmupCosine(warmup, total_steps, min_lr_ratio))


def onecycle(
    optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.3
) -> OneCycleLR:
    """One-cycle policy peaking at the optimizer's configured lr."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)


def step_decay(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, step_epochs: int, gamma: float
) -> StepLR:
    return StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


def cosine_schedule(
    step: int, max_steps: int, start_value: float, end_value: float, period: int | None = None
) -> float:
    """Cosine from `start_value` at step 0 to `end_value` at `max_steps` (held after)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    period = period or max_steps
    progress = min(step, max_steps) / period
    return end_value - (end_value - start_value) * (math.cos(math.pi * progress) + 1) / 2


class WeightDecaySchedule:
    """Weight decay on a cosine from `start` (optimizer.weight_decay) to `end` over the run's
    optimizer steps, as DINO's recipe (0.04 -> 0.4). torch's schedulers drive the learning
    rate only, hence this. Each param group keeps its own weight decay as its base
    (`groups.INITIAL_WEIGHT_DECAY`) and is scaled by value / start, so a group a method exempts
    (weight decay 0) stays at 0 (LARS still spares biases and norms itself). Set from the
    global step before each optimizer step, and the base lives in the optimizer's
    state_dict: a resumed run continues the same curve."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, start: float, end: float, total_steps: int
    ):
        if start <= 0:
            raise ValueError("a weight-decay schedule needs a positive starting weight decay")
        self.optimizer, self.start, self.end, self.total_steps = optimizer, start, end, total_steps
        groups.note_initial_weight_decay(optimizer)

    def set(self, step: int) -> float:
        """Weight decay of optimizer step `step` (0-based); returns the scheduled value."""
        value = cosine_schedule(step, max(1, self.total_steps - 1), self.start, self.end)
        groups.scale_weight_decay(self.optimizer, value / self.start)
        return value


# What sets a schedule's length, in torch's schedulers' state dicts: OneCycleLR's step
# count and phase ends, LambdaLR's function (WarmupCosine: its warm-up and total steps).
SCHEDULE_LENGTH_KEYS = ("total_steps", "_schedule_phases", "lr_lambdas")


def schedule_of_this_run(fresh: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """The saved scheduler state (its position, its base lrs, a PBT rescale) with the
    length of the schedule this config builds (`fresh`). Equal for a resume of the same
    config; a finished run resumed with more epochs continues its curve stretched over the
    new total instead of stepping past the old one (OneCycleLR raises there)."""
    return {**saved, **{k: fresh[k] for k in SCHEDULE_LENGTH_KEYS if k in fresh and k in saved}}
