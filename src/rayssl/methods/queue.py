"""A queue of past embeddings shared by every rank (SwAV's queue, NNCLR's support set)."""

from __future__ import annotations

from typing import Any

import torch

from rayssl import distributed


class EmbeddingQueue:
    """The last `length` embeddings of every rank: (groups, length, dim), a ring buffer.

    Each `push` all-gathers every rank's rows (no gradient), so the queue is the same on
    every rank, a checkpoint from rank 0 holds all of it, and a resume on another number of
    workers carries it over whole. A plain tensor, not a module buffer: DDP would broadcast
    a buffer from rank 0 before every step. `filled` counts the rows pushed so far (up to
    `length`); until the queue is full they are its first rows and the rest are zeros.
    Each push overwrites the oldest rows in place (`head` is where the next one starts), so
    a step copies its batch, not the whole queue; the methods use the rows as a set (Sinkhorn
    sums over them, NNCLR searches them), so their order does not matter."""

    def __init__(self, length: int, groups: int = 1):
        self.length, self.groups = length, groups
        self.queue: torch.Tensor | None = None
        self.filled = self.head = 0

    @property
    def full(self) -> bool:
        return self.queue is not None and self.filled >= self.length

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """rows: (groups, B, dim), this rank's; every rank must call it (one all-gather)."""
        rows = distributed.gather_no_grad(rows.float().transpose(0, 1).contiguous()).transpose(0, 1)
        if self.queue is None:
            self.queue = rows.new_zeros(self.groups, self.length, rows.shape[-1])
        rows = rows[:, -self.length :]  # a push longer than the queue keeps its newest rows
        first = min(rows.shape[1], self.length - self.head)  # up to the end, then wrap
        self.queue[:, self.head : self.head + first] = rows[:, :first]
        self.queue[:, : rows.shape[1] - first] = rows[:, first:]
        self.head = (self.head + rows.shape[1]) % self.length
        self.filled = min(self.filled + rows.shape[1], self.length)

    def rows(self) -> torch.Tensor:
        """The rows pushed so far: (groups, filled, dim)."""
        assert self.queue is not None
        return self.queue[:, : self.filled]

    def share(self) -> torch.Tensor:
        """This rank's interleaved share of the rows, (groups, filled / world, dim): the
        ranks' shares together are the whole queue, each row in exactly one."""
        rank, world = distributed.rank_and_world()
        return self.rows()[:, rank::world]

    def state_dict(self) -> dict[str, Any]:
        # a copy: the ring buffer is written in place, and `.cpu()` of a CPU tensor aliases it
        queue = None if self.queue is None else self.queue.to("cpu", copy=True)
        return {"queue": queue, "filled": self.filled, "head": self.head}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        queue = state.get("queue")
        self.queue = None if queue is None else queue.to(device)
        self.filled, self.head = state.get("filled", 0), state.get("head", 0)
        if "head" not in state and self.queue is not None:
            self._from_newest_first()

    def _from_newest_first(self) -> None:
        """A queue saved before the ring buffer held its rows newest first (each push went
        in front): reversed, they are oldest first, so the next pushes overwrite the
        oldest rows and a partly filled queue keeps its rows and fills on after them."""
        assert self.queue is not None
        self.queue[:, : self.filled] = self.queue[:, : self.filled].flip(1)
        self.head = self.filled % self.length
