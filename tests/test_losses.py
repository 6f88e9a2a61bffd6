import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rayssl.losses import BatchWiseBarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss


def _ntxent_reference(z0, z1, t):
    """The textbook definition, row by row."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        pos = z[i] @ z[j] / t
        losses.append(-(pos - torch.logsumexp(sims, 0)))
    return torch.stack(losses).mean()


def test_ntxent_matches_the_definition():
    z0, z1 = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(NTXentLoss(0.3)(z0, z1), _ntxent_reference(z0, z1, 0.3), atol=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXentLoss(0.0)


def test_negative_cosine_similarity_bounds():
    x = torch.randn(4, 8)
    assert torch.isclose(NegativeCosineSimilarity()(x, 2 * x), torch.tensor(-1.0))
    assert torch.isclose(NegativeCosineSimilarity()(x, -x), torch.tensor(1.0))


def test_barlow_twins_is_stable_on_degenerate_inputs():
    loss = BatchWiseBarlowTwinsLoss()
    x = torch.randn(16, 8)
    assert loss(x, x) < loss(x, torch.randn(16, 8))
    constant = torch.ones(16, 8)  # zero variance: must not produce NaN or raise
    assert torch.isfinite(loss(constant, constant))
    stacked = loss(torch.randn(3, 16, 8), torch.randn(3, 16, 8))  # K heads at once
    assert stacked.dim() == 0


def _ddp_worker(rank, world, port, z0, z1, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = len(z0) // world
    a0 = z0[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    a1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = NTXentLoss(0.5)(a0, a1)
    loss.backward()
    # DDP averages gradients over ranks; do the same by hand for the inputs' gradients.
    g0 = torch.zeros_like(z0)
    g0[rank * b : (rank + 1) * b] = a0.grad / world
    dist.all_reduce(g0)
    total = loss.detach().clone() / world
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total, "grad0": g0}, out)
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


def test_ntxent_under_ddp_equals_single_process_on_the_global_batch(tmp_path):
    """A real 2-process gloo group: mean of ranks' losses (and the averaged gradients) equal
    the single-process loss on the concatenated batch, because negatives span all ranks."""
    z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, z0, z1, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    ref0 = z0.clone().requires_grad_(True)
    reference = NTXentLoss(0.5)(ref0, z1)
    reference.backward()
    assert torch.allclose(got["loss"], reference.detach(), atol=1e-6)
    assert torch.allclose(got["grad0"], ref0.grad, atol=1e-6)


def _barlow_reference(pred, target, lam):
    """The definition, element by element in float64 numpy: standardise each feature over
    the batch (unbiased std), C_ij = sum_b p_bi t_bj / B, loss = (sum_i (1 - C_ii)^2 +
    lam * sum_{i != j} C_ij^2) / D."""

    p, t = pred.double().numpy(), target.double().numpy()
    b, d = p.shape
    p = (p - p.mean(0)) / p.std(0, ddof=1)
    t = (t - t.mean(0)) / t.std(0, ddof=1)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(p[k, i] * t[k, j] for k in range(b)) / b
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total / d


def test_barlow_twins_matches_an_independent_reference():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    target[:, 1] = 0.7 * pred[:, 1] + 0.3 * target[:, 1]  # one correlated feature
    loss = BatchWiseBarlowTwinsLoss(lambda_offdiag=0.05, eps=0.0)
    assert float(loss(pred, target)) == pytest.approx(
        _barlow_reference(pred, target, 0.05), rel=1e-5
    )
