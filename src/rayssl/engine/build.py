"""A worker's `Loop`, with the same initial weights on every rank: Ray Train workers, local
mode, in-process Tune trials and benchmarks all build theirs here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rayssl import distributed, seeds
from rayssl.config import TrainConfig
from rayssl.data import Splits
from rayssl.engine.loop import Loop, Sink


def build_loop(
    cfg: TrainConfig,
    splits: Splits,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    train_shard: Any = None,
    sink: Sink | None = None,
) -> Loop:
    from rayssl.methods.registry import build_method

    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    def broadcast(obj: Any) -> Any:
        """Rank 0's `obj` on every rank (LFR's target choice)."""
        return distributed.broadcast_object(obj)

    seeds.seed_everything(cfg.seed)  # identical initial weights on every rank
    method = build_method(
        cfg,
        splits.sample_shape,
        splits.num_classes,
        selection_sample=splits.train[0],
        broadcast=broadcast,
        pretrained=splits.pretrained,
    )
    if cfg.model.sync_batchnorm and world_size > 1:
        from rayssl.nets.batchnorm import convert_sync_batchnorm

        method = convert_sync_batchnorm(method, device)  # before DDP wraps it
    seeds.seed_everything(seeds.per_rank(cfg.seed, rank))  # then per-rank randomness
    return Loop(
        method,
        splits,
        cfg,
        device=device,
        rank=rank,
        world_size=world_size,
        wrap_model=wrap_model,
        train_shard=train_shard,
        sink=sink,
    )
