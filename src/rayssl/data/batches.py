"""Batches of in-memory tensors for one worker, sharded like a DistributedSampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class TensorBatches:
    """Yield `(x, y)` batches of this rank's shard without per-sample Python.

    Training order comes from torch's `DistributedSampler` (shuffled per epoch from `seed`,
    every rank a disjoint equal share); indices are then sliced in blocks. For evaluation
    (`shuffle=False`) ranks take a strided, unpadded share, so metrics count each sample once.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.sampler = (
            DistributedSampler(
                range(len(x)),
                num_replicas=world_size,
                rank=rank,
                shuffle=True,
                seed=seed,
                drop_last=True,
            )
            if shuffle
            else None
        )

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch if self.sampler is not None else 0

    def _indices(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        return torch.arange(self.rank, len(self.x), self.world_size)

    def __len__(self) -> int:
        n = (
            len(self.sampler)
            if self.sampler is not None
            else len(range(self.rank, len(self.x), self.world_size))
        )
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices().to(self.x.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(indices)), self.batch_size):
            batch = indices[start : start + self.batch_size]
            yield self.x[batch], self.y[batch]
