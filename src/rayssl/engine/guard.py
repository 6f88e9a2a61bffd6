"""The non-finite guard of the training step, kept on the device.

Each step, every rank flags a non-finite loss and a non-finite gradient norm in a small
tensor that one all-reduce shares; nothing is read back to the host. From the first flagged
step on, the optimizer skips every step on every rank (the flag is the optimizer's
`found_inf`), so the weights and the optimizer's state stay those from before it. The run
stops at the next read: every `performance.log_every` steps, at the end of the epoch, and
before any checkpoint (`raise_if_failed`), with the step, rank and value it recorded.
"""

from __future__ import annotations

import torch

from rayssl import distributed


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or Inf on some rank; every rank skipped that step
    and every later one instead of corrupting the weights."""


class FiniteGuard:
    """What this rank knows of the first non-finite step: whether there was one (`failed`,
    the optimizer's skip flag), the ranks and kind, its global step and this rank's loss
    there; all on the device until `raise_if_failed` reads them."""

    def __init__(self, device: torch.device, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.failed = torch.zeros((), device=device)  # 1.0 from the first flagged step on
        self.flags = torch.zeros(2 * world_size, device=device)  # [loss | grad] per rank
        self.at = torch.zeros((), device=device, dtype=torch.long)  # its global step
        self.value = torch.zeros((), device=device)  # this rank's loss at that step

    def observe(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, step: int) -> None:
        """Record whether any rank's loss (or, unless `grad_norm` is None, gradient norm) at
        global step `step` is non-finite; every rank takes part (one all-reduce)."""
        flags = torch.zeros_like(self.flags)
        flags[self.rank] = (~torch.isfinite(loss.detach().float())).float()
        if grad_norm is not None:
            flags[self.world_size + self.rank] = (~torch.isfinite(grad_norm.float())).float()
        bad = distributed.all_reduce_sum(flags).sum() > 0
        first = bad & (self.failed == 0)
        self.flags = torch.where(first, flags, self.flags)
        self.at = torch.where(first, torch.full_like(self.at, step), self.at)
        self.value = torch.where(first, loss.detach().float(), self.value)
        self.failed = torch.maximum(self.failed, bad.float())

    def raise_if_failed(self, steps_per_epoch: int) -> None:
        """The one read back to the host: raise if a step was flagged since the run began."""
        if not bool(self.failed):
            return
        flags, world = self.flags.tolist(), self.world_size
        loss_ranks = [r for r in range(world) if flags[r]]
        grad_ranks = [r for r in range(world) if flags[world + r]]
        what, ranks = ("loss", loss_ranks) if loss_ranks else ("gradient", grad_ranks)
        own = what == "loss" and self.rank in loss_ranks
        value = f" {float(self.value)}" if own else " non-finite"
        step = int(self.at)
        epoch, in_epoch = (step - 1) // steps_per_epoch, (step - 1) % steps_per_epoch + 1
        raise NonFiniteLossError(
            f"{what} became{value} at epoch {epoch + 1}, step {in_epoch} (global step "
            f"{step}) on rank {', '.join(map(str, ranks))}; every rank skipped that step and "
            "every later one, the weights of the last checkpoint are untouched: lower "
            "optimizer.lr or set grad_clip, then resume"
        )
