"""A user backbone factory (imported by Ray workers through PYTHONPATH) that records, per
worker process, its pid and how many training forwards it has run: tests find the workers
of their own run this way (never by a pattern over the machine's processes)."""

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rayssl.nets import cnn1d


class _Recorded(nn.Module):
    def __init__(self, net: nn.Module, record: Path | None):
        super().__init__()
        self.net, self.record, self.calls = net, record, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.record is not None:
            self.calls += 1
            self.record.write_text(str(self.calls))
        return self.net(x)


def recorded_cnn(input_shape, record_dir: str, width: int = 8):
    """cnn1d; inside a worker (a process group is up) writes `rank<r>-<pid>.steps`."""
    record = None
    if dist.is_available() and dist.is_initialized():
        record = Path(record_dir) / f"rank{dist.get_rank()}-{os.getpid()}.steps"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text("0")
    return _Recorded(cnn1d(input_shape, width=width), record)


class _Slow(nn.Module):
    def __init__(self, net: nn.Module, delay_s: float):
        super().__init__()
        self.net, self.delay_s = net, delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            import time

            time.sleep(self.delay_s)
        return self.net(x)


def slow_cnn(input_shape, delay_s: float, width: int = 8):
    """cnn1d whose training forwards take `delay_s` longer: a larger network's step time,
    so a multi-node test can act between a run's steps."""
    return _Slow(cnn1d(input_shape, width=width), delay_s)
