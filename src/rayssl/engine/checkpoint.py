"""What a checkpoint holds besides tensors (`LoopState`), how a loop's whole state is saved
and restored, and what changes when a restore crosses a change of hyperparameters (PBT) or
of the number of workers (an elastic resize)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rayssl import seeds
from rayssl.runs.state import capture_rng, restore_rng

if TYPE_CHECKING:
    from rayssl.engine.loop import Loop

FORMAT = 1  # the checkpoint format; a run folder of any rayssl since format 1 resumes


@dataclass
class LoopState:
    """Counters a checkpoint carries besides tensors."""

    epoch: int = 0  # epochs finished = the 0-based index of the next epoch to run
    global_step: int = 0
    best: float | None = None  # best value of the early-stopping metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False  # the run reached its end (schedule, early stop, method's stop)
    resumed_at: list[int] = field(default_factory=list)  # epochs at which an attempt resumed
    # A checkpoint saved mid-epoch (a preemption notice): the steps of epoch `epoch` already
    # done, and the epoch's training loss so far over all ranks as [sum, count].
    step_in_epoch: int = 0
    partial_loss: list[float] | None = None
    # Each change of the number of workers between attempts (an elastic resize, or a
    # --resume with another num_workers): {"epoch", "step", "from", "to"}.
    resizes: list[dict[str, int]] = field(default_factory=list)


def rank_state(loop: Loop) -> dict[str, Any]:
    """This rank's random state: its RNGs and the view generator (a mid-epoch checkpoint
    resumes the views where they were). The caller gathers one per rank."""
    return {**capture_rng(), "views": loop.generator.get_state()}


def state_dict(loop: Loop, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every piece of training state. `rng_states` holds one entry per rank (the caller
    gathers them); without it, this process's RNG state is stored for rank 0."""
    probe = loop.evaluation.online_probe
    scheduler = loop.step.lr_scheduler
    return {
        "format": FORMAT,
        "method": type(loop.method).__name__,
        "config": loop.cfg.record(),
        "model": loop.method.state_dict(),
        "optimizer": loop.step.optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict() if scheduler else None,
        "loop": asdict(loop.state),
        "sampler_epoch": loop.train_batches.epoch,
        "method_extra": loop.method.extra_state(),
        "rng": rng_states if rng_states is not None else [rank_state(loop)],
        "world_size": loop.world_size,
        "input": loop.inputs.record,
        **({"online_probe": probe.state_dict()} if probe else {}),
    }


# What sets a schedule's length, in torch's schedulers' state dicts: OneCycleLR's step
# count and phase ends, LambdaLR's function (WarmupCosine: its warm-up and total steps).
SCHEDULE_LENGTH_KEYS = ("total_steps", "_schedule_phases", "lr_lambdas")


def schedule_of_this_run(fresh: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """The saved scheduler state (its position, its base lrs, a PBT rescale) with the
    length of the schedule this config builds (`fresh`). Equal for a resume of the same
    config; a finished run resumed with more epochs continues its curve stretched over the
    new total instead of stepping past the old one (OneCycleLR raises there)."""
    return {**saved, **{k: fresh[k] for k in SCHEDULE_LENGTH_KEYS if k in fresh and k in saved}}


def load_state_dict(loop: Loop, state: dict[str, Any]) -> None:
    """Restore what `state_dict` saved; call on every rank before training."""
    # Extra state first: it may re-apply LFR's target selection, which shapes the model.
    loop.method.load_extra_state(state["method_extra"])
    loop.method.load_state_dict(state["model"])
    loop.step.optimizer.load_state_dict(loop.method.upgrade_optimizer_state(state["optimizer"]))
    if loop.step.lr_scheduler is not None and state["lr_scheduler"] is not None:
        loop.step.lr_scheduler.load_state_dict(
            schedule_of_this_run(loop.step.lr_scheduler.state_dict(), state["lr_scheduler"])
        )
    loop.state = LoopState(**state["loop"])
    probe = loop.evaluation.online_probe
    if probe is not None and "online_probe" in state:
        probe.load_state_dict(state["online_probe"])
    loop.train_batches.set_epoch(state["sampler_epoch"], loop.state.step_in_epoch)
    rng = state["rng"]
    if len(rng) == loop.world_size:
        restore_rng(rng[loop.rank])
        views = rng[loop.rank].get("views")
        loop.resume_views = views if loop.state.step_in_epoch else None
    else:
        _resized(loop, old=len(rng))


def _resized(loop: Loop, old: int) -> None:
    """Another number of workers (an elastic resize): per-rank streams derived afresh, the
    resize recorded in the state and said in one line."""
    state = loop.state
    seeds.seed_everything(
        seeds.resized_rank(loop.cfg.seed, state.global_step, loop.rank, loop.world_size)
    )
    state.resizes.append(
        {"epoch": state.epoch, "step": state.global_step, "from": old, "to": loop.world_size}
    )
    if loop.rank == 0:
        print(
            f"[rayssl] resized from {old} to {loop.world_size} workers at epoch "
            f"{state.epoch + 1}, step {state.global_step}: the global batch, the schedules "
            "and the counters carry on; per-rank random streams are derived afresh for the "
            "new size (reproducible, not bitwise equal to a fixed size)",
            flush=True,
        )


def adopt_hyperparameters(loop: Loop, saved_config: dict[str, Any]) -> None:
    """After loading a state trained under `saved_config` (PBT copying another trial's
    checkpoint): switch to this config's learning rate and weight decay, keeping the
    schedule's position (every LR the scheduler tracks is rescaled by new / old lr).
    BYOL's momentum needs nothing here: it is recomputed from this config every step."""
    old, new = saved_config["optimizer"], loop.cfg.optimizer
    ratio = new.lr / old["lr"]
    for group in loop.step.optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr", "unscheduled_lr"):
            if key in group:
                group[key] *= ratio
        if group.get("weight_decay") == old["weight_decay"]:
            group["weight_decay"] = new.weight_decay
        if group.get("initial_weight_decay") == old["weight_decay"]:  # a scheduled decay's base
            group["initial_weight_decay"] = new.weight_decay
    scheduler = loop.step.lr_scheduler
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]


def reduce_partial_loss(loop: Loop) -> list[float]:
    """The epoch's training loss so far over all ranks, as [sum, count] (every rank)."""
    totals = torch.stack([loop.train_loss.mean_value, loop.train_loss.weight]).double()
    if loop.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    return totals.tolist()
