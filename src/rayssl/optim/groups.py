"""The keys rayssl adds to torch's param groups, and every read or write of them (this module
is their one owner; nothing else names them).

    lr_schedule           a method marks a group `False` to train it at its lr throughout,
                          outside the LR schedule (SimSiam's predictor, the paper's
                          --fix-pred-lr); see `Method.param_groups`
    unscheduled_lr        that group's lr, put back after every scheduler step
    initial_weight_decay  a group's weight decay before a weight-decay schedule scales it
"""

from __future__ import annotations

from typing import Any

import torch

LR_SCHEDULE = "lr_schedule"
UNSCHEDULED_LR = "unscheduled_lr"
INITIAL_WEIGHT_DECAY = "initial_weight_decay"


def unscheduled(group: dict[str, Any]) -> dict[str, Any]:
    """`group`, marked to train outside the LR schedule."""
    return {**group, LR_SCHEDULE: False}


def note_unscheduled_lr(optimizer: torch.optim.Optimizer) -> None:
    """Record the lr of every group marked `unscheduled` (call once, when it is built)."""
    for group in optimizer.param_groups:
        if group.get(LR_SCHEDULE) is False:
            group[UNSCHEDULED_LR] = group["lr"]


def hold_unscheduled_lr(optimizer: torch.optim.Optimizer) -> None:
    """Put back the lr of every group marked `unscheduled`: torch's schedulers set every
    group's lr, and none takes a group out, so this runs after each scheduler step."""
    for group in optimizer.param_groups:
        if UNSCHEDULED_LR in group:
            group["lr"] = group[UNSCHEDULED_LR]


def note_initial_weight_decay(optimizer: torch.optim.Optimizer) -> None:
    """Keep each group's weight decay as the base a weight-decay schedule scales (kept by a
    resumed optimizer's state, so a resume continues the same curve)."""
    for group in optimizer.param_groups:
        group.setdefault(INITIAL_WEIGHT_DECAY, group["weight_decay"])


def scale_weight_decay(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's weight decay at `factor` times its base (a group at 0 stays at 0)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = group[INITIAL_WEIGHT_DECAY] * factor


def rescale(optimizer: torch.optim.Optimizer, lr_ratio: float, old_wd: float, new_wd: float):
    """Another trial's hyperparameters (PBT): every lr a group tracks times `lr_ratio`, and a
    weight decay (or its schedule's base) of `old_wd` set to `new_wd`; a group a method
    exempted from weight decay keeps its own."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr", UNSCHEDULED_LR):
            if key in group:
                group[key] *= lr_ratio
        for key in ("weight_decay", INITIAL_WEIGHT_DECAY):
            if group.get(key) == old_wd:
                group[key] = new_wd


def exempt_saved_group(group: dict[str, Any]) -> None:
    """A saved group's state, moved to a group without weight decay (an older run's state
    read into a method that now exempts some parameters: DINO's biases and norms)."""
    group["weight_decay"] = 0.0
    if INITIAL_WEIGHT_DECAY in group:
        group[INITIAL_WEIGHT_DECAY] = 0.0


def decays(name: str, p: torch.nn.Parameter) -> bool:
    """Whether a parameter takes weight decay in the ViT-era recipes (DINO's, MAE's and
    iBOT's code): weights do; biases and norm parameters (1-D) never do."""
    return not name.endswith(".bias") and p.ndim > 1


def weights_decay_only(named: list[tuple[str, torch.nn.Parameter]]) -> list[dict[str, Any]]:
    """Two groups of `named` parameters: the weights, and the rest without weight decay."""
    return [
        {"params": [p for name, p in named if decays(name, p)]},
        {"params": [p for name, p in named if not decays(name, p)], "weight_decay": 0.0},
    ]


def layer_decay_groups(
    named: list[tuple[str, torch.nn.Parameter]],
    layer_of,
    depth: int,
    decay: float,
    lr: float,
    no_decay: set[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay (BEiT; MAE's and iBOT's fine-tuning): a parameter of
    layer `layer_of(name)` (0 the embeddings .. depth + 1 the top) trains at
    `lr * decay ** (depth + 1 - layer)`; biases, norms and the names in `no_decay` (a ViT's
    position embedding and CLS token) take no weight decay. One group per (layer, decayed).
    timm's `param_groups_layer_decay` builds whole optimizer groups of its own, with the
    scale as a key our schedules do not read; these are plain groups with their own lr."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        layer = layer_of(name)
        decayed = decays(name, p) and name not in no_decay
        key = (layer, decayed)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * decay ** (depth + 1 - layer)}
            if not decayed:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(p)
    return [groups[key] for key in sorted(groups)]
