"""What the loop measures besides the method: a weighted running mean kept on the device
(its losses), and the start-up timeline of an attempt.

Hand-written, not torchmetrics (as a supervised run's `ClassScores`): importing torchmetrics
1.9 costs about 1.7 s of every worker's start-up (its `__init__` imports scipy.signal,
torchvision and matplotlib whenever they are installed: Lightning-AI/torchmetrics#3457,
open), and its `MeanMetric` reads every value back to check for NaN, a device sync per
training step on an accelerator. A sum and a weight are all the loop needs.
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


# The start-up timeline of an attempt, in order: each mark is a time.time() a driver or the
# loop records; the first epoch reports `startup_<mark>_s`, the time from the mark before it
# that was recorded (benchmarks/startup.py names each phase), and `start_to_first_step_s`.
STARTUP_MARKS = (
    "launched",  # the command started (the CLI module, before its imports)
    "imported",  # the driver's imports done, the config read: fit entered
    "checked",  # preflight: the data loaded and two samples through the method
    "ray_started",  # Ray started or joined
    "fit_called",  # the run's folder, record and TorchTrainer made; trainer.fit called
    "worker_imported",  # a worker process first imported rayssl (Ray's setup hook, at its
    # start): Train's controller and the worker group placed
    "worker_entered",  # the worker's function runs: Train's set-up in it and imports done
    "data_ready",  # the data in the worker (object store, or a Ray Data shard set up)
    "built",  # the method, DDP and optimizer built, the view pipeline ready
    "first_batch",  # the first batch in hand
    "first_step",  # the first optimizer step done
)


def startup_metrics(marks: dict[str, float]) -> dict[str, float]:
    """When a driver said when its command started and the first step is done:
    `start_to_first_step_s` and one `startup_<mark>_s` per recorded mark after the first
    (the time since the mark before it); else nothing."""
    if not {"launched", "first_step"} <= marks.keys():
        return {}
    timeline = [(m, marks[m]) for m in STARTUP_MARKS if m in marks]
    pairs = zip(timeline[:-1], timeline[1:], strict=True)
    out = {f"startup_{b}_s": tb - ta for (_, ta), (b, tb) in pairs}
    out["start_to_first_step_s"] = marks["first_step"] - marks["launched"]
    return out
