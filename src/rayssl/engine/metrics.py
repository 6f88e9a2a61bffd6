"""A weighted running mean kept on the device, for the loop's losses.

Hand-written: torchmetrics' `MeanMetric` checks every value for NaN with a read back to the
host (a device sync per training step on an accelerator), and importing torchmetrics costs
about 1.6 s of every worker's start-up (it imports scipy.signal and matplotlib); a sum and
a weight are all the loop needs. torchmetrics still computes the supervised metrics.
"""

from __future__ import annotations

import torch

from rayssl import distributed


class RunningMean:
    """sum(value * weight) / sum(weight) over every update of every rank since `reset`."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.weight = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, value: torch.Tensor, weight: float = 1.0) -> None:
        """Add `value` (a 0-dim tensor or a number) with `weight`; nothing is read back."""
        value = torch.as_tensor(value, dtype=torch.float64, device=self.total.device)
        self.total += value.detach() * weight
        self.weight += weight

    def totals(self) -> torch.Tensor:
        """[sum, weight] over every rank (every rank calls this)."""
        return distributed.all_reduce_sum(torch.stack([self.total, self.weight]))

    def compute(self) -> float:
        """The mean over every rank: one all-reduce and one read (every rank calls this)."""
        total, weight = self.totals().tolist()
        return total / weight if weight else float("nan")

    def reset(self) -> None:
        self.total.zero_()
        self.weight.zero_()
