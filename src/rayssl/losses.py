"""Self-supervised losses: small modules, definitions and shapes in the docstrings."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class NegativeCosineSimilarity(nn.Module):
    """BYOL's loss: -cos(p, z) averaged over the batch. p, z: (B, D)."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(p, z, dim=1).mean()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0; gradients flow back to each rank's slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    # torch 2.13 marks this public autograd all_gather deprecated in favour of a private
    # module (torch.distributed._functional_collectives); until a public successor exists
    # it stays, without its warning on every worker.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


class NTXentLoss(nn.Module):
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al. 2020).

    For 2N embeddings of N pairs, each row's positive is its pair and the other 2N - 2 rows
    are negatives: l_i = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t).
    Under DDP the negatives span the global batch: embeddings of every rank are gathered
    with gradient, each rank scores its own rows against all of them, and the mean of the
    ranks' losses equals the single-process loss on the concatenated batch.
    z0, z1: (B, D) local views.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, gather: bool = True) -> torch.Tensor:
        """`gather=False` scores against this rank's rows only (evaluation, where ranks may
        hold different numbers of rows)."""
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        local = z0.shape[0]
        rank = 0
        all0, all1 = z0, z1
        if gather and dist.is_available() and dist.is_initialized():
            all0, all1 = gather_with_grad(z0), gather_with_grad(z1)
            rank = dist.get_rank()
        everything = torch.cat([all0, all1])  # (2N, D): views 0 of all ranks, then views 1
        total = all0.shape[0]
        mine = torch.cat([z0, z1])  # (2B, D)
        logits = mine @ everything.T / self.temperature
        rows = torch.arange(local, device=z0.device) + rank * local
        own = torch.cat([rows, rows + total])  # column of each local row itself
        positive = torch.cat([rows + total, rows])  # column of its pair
        logits[torch.arange(2 * local, device=z0.device), own] = float("-inf")
        return F.cross_entropy(logits, positive)


class BatchWiseBarlowTwinsLoss(nn.Module):
    """LFR's loss between a prediction and its random projection (Sui et al. 2024).

    Both (B, D) are standardized over the batch; the loss is the Barlow-Twins objective on
    their (D, D) cross-correlation: sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, scaled
    by 1/D. Nothing asserts bounds on C, so rounding never fails a step.
    """

    def __init__(self, lambda_offdiag: float = 5e-3, eps: float = 1e-5):
        super().__init__()
        self.lambda_offdiag, self.eps = lambda_offdiag, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch, dim = pred.shape[-2], pred.shape[-1]
        p = (pred - pred.mean(-2, keepdim=True)) / (pred.std(-2, keepdim=True) + self.eps)
        t = (target - target.mean(-2, keepdim=True)) / (target.std(-2, keepdim=True) + self.eps)
        c = p.transpose(-1, -2) @ t / batch  # (..., D, D)
        diag = torch.diagonal(c, dim1=-2, dim2=-1)
        on = (1 - diag).pow(2).sum(-1)
        off = c.pow(2).sum((-1, -2)) - diag.pow(2).sum(-1)
        return ((on + self.lambda_offdiag * off) / dim).mean()
