"""Self-supervised losses: small modules, definitions and shapes in the docstrings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayssl import distributed


class NegativeCosineSimilarity(nn.Module):
    """BYOL's loss: -cos(p, z) averaged over the batch. p, z: (B, D)."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(p, z, dim=1).mean()


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
        if gather and distributed.active():
            all0, all1 = distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
            rank = distributed.rank_and_world()[0]
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


def _standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, D) -> zero mean, unit (biased) variance per column, as BatchNorm1d(affine=False)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def _off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The D*(D-1) off-diagonal entries of a (D, D) matrix, flattened."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021): drive the cross-correlation of the two views'
    standardised embeddings to the identity.

    With z0, z1 standardised over the batch of N rows, C = z0^T z1 / N is (D, D) and
    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 (the paper's lambda: 0.0051).
    Under DDP the batch is the global one: embeddings are gathered with gradient, so every
    rank computes the same loss, equal to the single-process loss on the concatenated batch.
    z0, z1: (B, D) local views.
    """

    def __init__(self, lambda_offdiag: float = 0.0051, eps: float = 1e-5):
        super().__init__()
        self.lambda_offdiag, self.eps = lambda_offdiag, eps

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, gather: bool = True) -> torch.Tensor:
        if gather:
            z0, z1 = distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
        c = _standardize(z0, self.eps).T @ _standardize(z1, self.eps) / z0.shape[0]
        on = (1 - torch.diagonal(c)).pow(2).sum()
        return on + self.lambda_offdiag * _off_diagonal(c).pow(2).sum()


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022): invariance + variance + covariance terms.

    invariance = mean squared error between z0 and z1;
    variance   = mean_j relu(1 - sqrt(Var(z_j) + 1e-4)), averaged over the two views;
    covariance = sum_{i != j} Cov(z)_ij^2 / D, summed over the two views;
    loss = sim * invariance + var * variance + cov * covariance (the paper: 25, 25, 1).
    Variance and covariance are statistics of the global batch under DDP: embeddings are
    gathered with gradient (as the paper's multi-GPU code does), so every rank computes the
    single-process loss on the concatenated batch. z0, z1: (B, D) local views.
    """

    def __init__(self, sim: float = 25.0, var: float = 25.0, cov: float = 1.0, eps: float = 1e-4):
        super().__init__()
        self.sim, self.var, self.cov, self.eps = sim, var, cov, eps

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, gather: bool = True) -> torch.Tensor:
        if gather:
            z0, z1 = distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
        invariance = F.mse_loss(z0, z1)
        n, d = z0.shape
        variance = covariance = z0.new_zeros(())
        for z in (z0, z1):
            z = z - z.mean(0)
            variance = variance + F.relu(1 - torch.sqrt(z.var(0) + self.eps)).mean() / 2
            covariance = covariance + _off_diagonal(z.T @ z / (n - 1)).pow(2).sum() / d
        return self.sim * invariance + self.var * variance + self.cov * covariance


class MoCoInfoNCELoss(nn.Module):
    """MoCo v3's contrastive loss (Chen, Xie and He 2021) for one (query, key) direction.

    Queries q (B, D) come from the online network, keys k (B, D) from the momentum encoder
    (no gradient). Both are L2-normalised; each query's positive is the key of its own
    sample and every other key of the global batch is a negative:
    loss = 2 * t * CE(q @ K^T / t, own index), with K the keys of all ranks (gathered
    without gradient, as the paper's code). The mean of the ranks' losses equals the
    single-process loss on the concatenated batch.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, gather: bool = True) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        rank = 0
        if gather and distributed.active():
            k, rank = distributed.gather_no_grad(k), distributed.rank_and_world()[0]
        logits = q @ k.T / self.temperature
        own = torch.arange(len(q), device=q.device) + rank * len(q)
        return 2 * self.temperature * F.cross_entropy(logits, own)


class NNCLRLoss(nn.Module):
    """NNCLR's contrastive loss for one direction (Dwibedi et al. 2021).

    Each anchor a_i (the nearest neighbour of a view's projection in the support set, no
    gradient) is matched to the prediction p_i of the other view of its own sample, against
    the predictions of every sample of the global batch: loss = mean_i CE(a_i . P^T / t, i)
    with a and P L2-normalised. Under DDP, P holds every rank's predictions, gathered with
    gradient as in NT-Xent, so the ranks' mean equals the loss on the concatenated batch.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, anchors: torch.Tensor, p: torch.Tensor, gather: bool = True) -> torch.Tensor:
        anchors, p = F.normalize(anchors.float(), dim=1), F.normalize(p.float(), dim=1)
        rank = 0
        everything = p
        if gather and distributed.active():
            everything, rank = distributed.gather_with_grad(p), distributed.rank_and_world()[0]
        logits = anchors @ everything.T / self.temperature
        own = torch.arange(len(p), device=p.device) + rank * len(p)
        return F.cross_entropy(logits, own)


def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Each row of z replaced by its nearest row of `support` by cosine similarity."""
    with torch.no_grad():
        scores = F.normalize(z.float(), dim=1) @ F.normalize(support.float(), dim=1).T
        return support[scores.argmax(dim=1)]


def _log_sum_exp(x: torch.Tensor, dim: int | None, across_ranks: bool) -> torch.Tensor:
    """log(sum(exp(x))) over `dim` (None: every entry), stable, and over every rank's rows
    too when `across_ranks` (the maximum and the sum all-reduced; a rank may bring none)."""
    if x.shape[0] == 0:  # no rows here: the empty reductions amax refuses
        shape = () if dim is None else (1, *x.shape[1:]) if dim == 0 else (0, 1)
        top = torch.full(shape, -math.inf, dtype=x.dtype, device=x.device)
    else:
        top = x.amax() if dim is None else x.amax(dim, keepdim=True)
    if across_ranks:
        distributed.all_reduce_max(top)
    total = (x - top).exp()
    total = total.sum() if dim is None else total.sum(dim, keepdim=True)
    if across_ranks:
        distributed.all_reduce_sum(total)
    return top + total.log()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int, gather: bool = True):
    """SwAV's codes (Caron et al. 2020): Q = exp(scores / epsilon), scaled by `iterations`
    rounds of Sinkhorn-Knopp so that over the global batch every prototype gets an equal
    share of the mass and each sample's code sums to 1. scores: (B, K) this rank's rows;
    returns (B, K). The sums over samples are all-reduced, so every rank's rows are those
    of the single-process codes on the concatenated batch (the paper's distributed
    version); ranks may bring different numbers of rows, none included (iBOT's masked
    patches). Computed on logarithms: the paper's exp(scores / epsilon) underflows to whole
    rows of zeros (then NaN) once epsilon is small, e.g. 0.005 with cosine scores."""
    across = gather and distributed.active()
    log_q = scores.float() / epsilon
    # the global batch's rows, kept on the device: reading it back would sync every step
    samples = torch.tensor([float(log_q.shape[0])], device=log_q.device)
    log_samples = distributed.all_reduce_sum(samples).log() if across else samples.log()
    log_q = log_q - _log_sum_exp(log_q, None, across)
    for _ in range(iterations):
        log_q -= _log_sum_exp(log_q, 0, across) + math.log(log_q.shape[1])  # prototypes
        log_q -= _log_sum_exp(log_q, 1, False) + log_samples  # samples, local rows
    return (log_q + log_samples).exp()


def koleo(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy estimator as DINOv2's regulariser (Sablayrolles et
    al. 2019): -mean_i log ||x_i - x_j(i)||, x the L2-normalised rows, j(i) the row nearest
    to row i (itself excluded); it pushes the rows of a batch apart. features: (B, D), B >= 2.
    Hand-written: neither torch nor torchmetrics has it, and it is a few lines."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = similarity.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps).mean()


class SwAVLoss(nn.Module):
    """SwAV's swapped prediction (Caron et al. 2020).

    scores: one (B, K) tensor per crop, globals first: each crop's L2-normalised embedding
    against the unit-length prototypes. With q_g = sinkhorn(scores[g]) for each of the
    `globals_` global crops and log p_v = log_softmax(scores[v] / temperature):
    loss = mean over pairs (g, v), v != g, of mean_b sum_k -q_g * log p_v.
    Codes carry no gradient; their Sinkhorn sums span every rank (`gather`). `queued`: per
    global crop, scores of past embeddings (this rank's share of SwAV's queue) that join
    the batch in Sinkhorn-Knopp, so the prototypes are balanced over more samples than one
    batch; only the batch's own codes are kept.
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3):
        super().__init__()
        if temperature <= 0 or epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be > 0, got {temperature}, {epsilon}")
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations

    def forward(
        self,
        scores: list[torch.Tensor],
        globals_: int = 2,
        gather: bool = True,
        queued: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        codes = []
        for g, s in enumerate(scores[:globals_]):
            rows = s.float() if queued is None else torch.cat([queued[g].float(), s.float()])
            codes.append(sinkhorn(rows, self.epsilon, self.iterations, gather)[-len(s) :])
        log_probs = [F.log_softmax(s.float() / self.temperature, dim=-1) for s in scores]
        losses = [
            -(q * log_probs[v]).sum(-1).mean()
            for g, q in enumerate(codes)
            for v in range(len(scores))
            if v != g
        ]
        return torch.stack(losses).mean()
