"""Every seed rayssl derives from `cfg.seed`, by name. A resumed run recomputes the same
ones, so its views, data order and per-rank randomness are those of a run that never
stopped. The constants are distinct primes: derived streams never coincide."""

from __future__ import annotations

import random

import numpy as np
import torch

EPOCH_STRIDE = 1_009
RUN_STRIDE = 1_000_003
RANK_STRIDE = 7_919
ONLINE_PROBE_OFFSET = 104_729


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def per_rank(seed: int, rank: int) -> int:
    """A rank's global RNG after the (identical) initial weights: dropout, and so on."""
    return seed + RANK_STRIDE * (rank + 1)


def epoch_views(seed: int, epoch: int, rank: int) -> int:
    """The training views of one rank in one epoch: a resumed run draws the same ones."""
    return seed * RUN_STRIDE + epoch * EPOCH_STRIDE + rank


def resized_views(seed: int, epoch: int, rank: int, step_in_epoch: int) -> int:
    """The rest of an epoch resumed mid-way under another number of workers: a stream of
    its own (the saved per-rank generators belong to the old ranks)."""
    return epoch_views(seed, epoch, rank) + RANK_STRIDE * step_in_epoch


def resized_rank(seed: int, global_step: int, rank: int, world_size: int) -> int:
    """A rank's global RNG after an elastic resize: derived afresh from (seed, step, rank,
    world size), so a resized run is reproducible, though not bitwise equal to a fixed one."""
    return seed * RUN_STRIDE + global_step * EPOCH_STRIDE + rank * 31 + world_size


def eval_views(seed: int, rank: int) -> int:
    """The views an SSL validation loss is computed on: the same every epoch."""
    return seed + rank


def stream_shuffle(seed: int, epoch: int) -> int:
    """Ray Data's local shuffle buffer of a streamed epoch."""
    return seed * RUN_STRIDE + epoch


def online_probe(seed: int) -> int:
    """The online linear probe's initial weights (outside the global RNG)."""
    return seed + ONLINE_PROBE_OFFSET
