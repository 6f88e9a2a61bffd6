"""BatchNorm over the global batch under DDP (`model.sync_batchnorm: true`).

On GPUs this is torch's SyncBatchNorm. torch's refuses CPU tensors (its statistics kernels
exist only for accelerators, and DDP rejects a SyncBatchNorm on a CPU module), so CPU workers
on gloo get the `GlobalBatchNorm{1,2,3}d` below instead: the same module, parameters and
state-dict keys as the BatchNorm they replace, with the training statistics computed by two
differentiable all-reduces.
"""

from __future__ import annotations

import torch
from torch import nn

from rayssl import distributed


class _GlobalStatistics:
    """In training with more than one rank: mean = sum_r sum(x_r) / N and
    var = sum_r sum((x_r - mean)^2) / N over the N elements per channel of every rank's
    batch; running_var takes the unbiased N / (N - 1) var, as BatchNorm does. Gradients flow
    through both reductions, so under DDP they equal those of one BatchNorm on the
    concatenated batch. Otherwise (eval, one rank) it is the plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [d for d in range(x.dim()) if d != 1]
        count = distributed.all_reduce_sum_with_grad(
            torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        )
        mean = distributed.all_reduce_sum_with_grad(x.sum(dims)) / count
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = distributed.all_reduce_sum_with_grad(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    """BatchNorm1d with global-batch statistics in training (see _GlobalStatistics)."""


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    """BatchNorm2d with global-batch statistics in training (see _GlobalStatistics)."""


class GlobalBatchNorm3d(_GlobalStatistics, nn.BatchNorm3d):
    """BatchNorm3d with global-batch statistics in training (see _GlobalStatistics)."""


_GLOBAL = {
    nn.BatchNorm1d: GlobalBatchNorm1d,
    nn.BatchNorm2d: GlobalBatchNorm2d,
    nn.BatchNorm3d: GlobalBatchNorm3d,
}


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Every BatchNorm of `module` with global-batch statistics, weights and statistics kept:
    torch's SyncBatchNorm on an accelerator, the GlobalBatchNorm classes above on CPU."""
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if type(m) in _GLOBAL:
            # a subclass that adds no state and overrides only forward: switching the class
            # keeps the module, its parameters, buffers and hooks (no copy to get wrong)
            m.__class__ = _GLOBAL[type(m)]
    return module
