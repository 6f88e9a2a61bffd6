"""A queue of past embeddings shared by every rank (SwAV's queue, NNCLR's support set)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from rayssl.losses import gather_no_grad


class EmbeddingQueue:
    """The last `length` embeddings of every rank, newest first: (groups, length, dim).

    Each `push` all-gathers every rank's rows (no gradient), so the queue is the same on
    every rank, a checkpoint from rank 0 holds all of it, and a resume on another number of
    workers carries it over whole. A plain tensor, not a module buffer: DDP would broadcast
    a buffer from rank 0 before every step. `filled` counts the rows pushed so far (up to
    `length`); the rows past it are zeros."""

    def __init__(self, length: int, groups: int = 1):
        self.length, self.groups = length, groups
        self.queue: torch.Tensor | None = None
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.queue is not None and self.filled >= self.length

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """rows: (groups, B, dim), this rank's; every rank must call it (one all-gather)."""
        rows = gather_no_grad(rows.float().transpose(0, 1).contiguous()).transpose(0, 1)
        if self.queue is None:
            self.queue = rows.new_zeros(self.groups, self.length, rows.shape[-1])
        self.queue = torch.cat([rows, self.queue], dim=1)[:, : self.length]
        self.filled = min(self.filled + rows.shape[1], self.length)

    def rows(self) -> torch.Tensor:
        """The rows pushed so far: (groups, filled, dim)."""
        assert self.queue is not None
        return self.queue[:, : self.filled]

    def share(self) -> torch.Tensor:
        """This rank's interleaved share of the rows, (groups, filled / world, dim): the
        ranks' shares together are the whole queue, each row in exactly one."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        return self.rows()[:, rank::world]

    def state_dict(self) -> dict[str, Any]:
        return {"queue": None if self.queue is None else self.queue.cpu(), "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        queue = state.get("queue")
        self.queue = None if queue is None else queue.to(device)
        self.filled = state.get("filled", 0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
