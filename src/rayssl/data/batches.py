"""Batches of in-memory tensors for one worker, sharded like a DistributedSampler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rayssl import seeds


class EpochPosition:
    """Where a batch iterator stands: the epoch it draws and the steps of it already done.
    Saved in a checkpoint as `sampler_epoch` (the step count lives in the loop's state)."""

    epoch: int = 0
    start_step: int = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """The epoch to draw, and how many of its steps are already done (a mid-epoch
        resume skips them)."""
        self.epoch, self.start_step = epoch, start_step

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any], start_step: int = 0) -> None:
        self.set_epoch(state["sampler_epoch"], start_step)


class TensorBatches(EpochPosition):
    """Yield `(x, y)` batches of this rank's share without per-sample Python.

    Training: every epoch draws one permutation of all samples from (seed, epoch) and cuts
    it into global batches of `batch_size * world_size`; rank r takes the r-th equal slice
    of each. The global batches are therefore the same whatever the number of workers, so an
    elastic run that resizes, even mid-epoch (`start_step`), sees every sample of the epoch
    once. (torch's DistributedSampler strides the permutation by rank instead, which ties
    the batches to the world size.) For evaluation (`shuffle=False`) ranks take a strided,
    unpadded share, so metrics count each sample once.
    """

    sampler = None

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
        self.seed = seed

    def _indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, len(self.x), self.world_size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.x), generator=generator)
        steps, share = len(self), self.batch_size
        batches = order[: steps * share * self.world_size].view(steps, self.world_size, share)
        return batches[self.start_step :, self.rank].reshape(-1)

    def __len__(self) -> int:
        if self.shuffle:
            return len(self.x) // (self.batch_size * self.world_size)
        n = len(range(self.rank, len(self.x), self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices().to(self.x.device)
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield self.x[batch], self.y[batch]


class StreamedBatches(EpochPosition):
    """Yield `(x, y)` batches of this worker's Ray Data shard (`ray.train.get_dataset_shard`).

    Rows are read, shuffled in a per-worker buffer (seeded by seed and epoch), batched and
    prefetched by Ray Data while the model trains; `x` arrives flattened and is reshaped to
    the sample shape. Ray Train gives every worker an equal share of the rows, so the number
    of steps per epoch is known up front (the LR schedule needs it).
    """

    sampler = None

    def __init__(
        self,
        shard,
        num_rows: int,
        shape: tuple[int, ...],
        batch_size: int,
        *,
        world_size: int = 1,
        x_column: str = "x",
        y_column: str = "y",
        device: torch.device | str = "cpu",
        seed: int = 0,
        shuffle_buffer: int = 0,
        prefetch_batches: int = 1,
        pin_memory: bool = False,
        scale: float | None = None,
    ):
        """`scale`: rows arrive as integers (image pixels, uint8) and are multiplied by it,
        as float32, on `device`."""
        self.shard = shard
        self.scale = scale
        self.rows_per_worker = num_rows // world_size
        self.shape = tuple(shape)
        self.batch_size = batch_size
        self.x_column, self.y_column = x_column, y_column
        self.device = torch.device(device)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.prefetch_batches, self.pin_memory = prefetch_batches, pin_memory

    # A mid-epoch resume (`start_step` > 0) runs the epoch's remaining steps on a fresh
    # pass of the stream: the step count is exact, the samples that fill them are not the
    # ones the interrupted pass had left (Ray Data's split is not ordered).

    def __len__(self) -> int:
        return self.rows_per_worker // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.shard.iter_torch_batches(
            batch_size=self.batch_size,
            drop_last=True,
            # Ray Data takes one dtype for all columns or one per column: image rows keep
            # their own (uint8 pixels, converted below on the device)
            dtypes=None
            if self.scale
            else {self.y_column: torch.int64, self.x_column: torch.float32},
            device=self.device,
            local_shuffle_buffer_size=self.shuffle_buffer or None,
            local_shuffle_seed=seeds.stream_shuffle(self.seed, self.epoch)
            if self.shuffle_buffer
            else None,
            prefetch_batches=self.prefetch_batches,
            pin_memory=self.pin_memory,
        )
        for step, batch in enumerate(batches, start=self.start_step):
            if step >= len(self):  # equal steps on every rank, whatever the shard's last block
                return
            x = batch[self.x_column].reshape(-1, *self.shape)
            if self.scale:
                x = x.float().mul_(self.scale)
            yield x, batch[self.y_column].long()
