"""A user backbone factory (imported by Ray workers through PYTHONPATH) whose output turns
NaN after a number of training forwards: a model that diverges mid-run."""

import torch
from torch import nn

from rayssl.nets import cnn1d


class _PoisonAfter(nn.Module):
    def __init__(self, net: nn.Module, nan_after_steps: int):
        super().__init__()
        self.net, self.nan_after_steps, self.calls = net, nan_after_steps, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_after_steps:
                out = out * float("nan")
        return out


def diverging_cnn(input_shape, width: int = 8, nan_after_steps: int = 10**9):
    return _PoisonAfter(cnn1d(input_shape, width=width), nan_after_steps)
