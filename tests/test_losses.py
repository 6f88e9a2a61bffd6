import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import gloo_group, leave_gloo_group

from rayssl.methods.losses import (
    BarlowTwinsLoss,
    BatchWiseBarlowTwinsLoss,
    MoCoInfoNCELoss,
    NegativeCosineSimilarity,
    NNCLRLoss,
    NTXentLoss,
    SwAVLoss,
    VICRegLoss,
    koleo,
    nearest_neighbours,
    sinkhorn,
)


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


# the losses whose negatives or batch statistics span every rank, by name (spawn pickles names)
GLOBAL_LOSSES = {
    "ntxent": lambda: NTXentLoss(0.5),
    "barlow_twins": lambda: BarlowTwinsLoss(0.05),
    "vicreg": lambda: VICRegLoss(25.0, 25.0, 1.0),
    "moco": lambda: MoCoInfoNCELoss(0.2),  # z1 plays the keys: gathered without gradient
    # two crops' prototype scores (cosines: in [-1, 1]); Sinkhorn's sums span every rank
    "swav": lambda: lambda s0, s1: SwAVLoss(0.1, 0.05, 3)([torch.tanh(s0), torch.tanh(s1)]),
    # with SwAV's queue: 6 past scores per global crop, each rank bringing its share
    "swav_queue": lambda: _swav_with_queue,
    # z0 plays the nearest neighbours, z1 the other view's predictions (gathered with grad)
    "nnclr": lambda: NNCLRLoss(0.1),
}


def _swav_with_queue(s0, s1):
    """SwAVLoss with a fixed queue of 6 rows per global crop; under DDP each rank brings
    the rows rank::world, as SwAV's method does."""
    queue = torch.tanh(torch.linspace(-3, 3, 2 * 6 * 4).reshape(2, 6, 4).sin() * 4)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    queued = list(queue[:, rank::world].unbind(0))
    return SwAVLoss(0.1, 0.05, 3)([torch.tanh(s0), torch.tanh(s1)], queued=queued)


def _ddp_worker(rank, world, rendezvous, z0, z1, out, name="ntxent"):
    gloo_group(rank, world, rendezvous)
    b = len(z0) // world
    a0 = z0[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    a1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = GLOBAL_LOSSES[name]()(a0, a1)
    loss.backward()
    # DDP averages gradients over ranks; do the same by hand for the inputs' gradients.
    g0 = torch.zeros_like(z0)
    g0[rank * b : (rank + 1) * b] = a0.grad / world
    dist.all_reduce(g0)
    total = loss.detach().clone() / world
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total, "grad0": g0}, out)
    leave_gloo_group()


@pytest.mark.parametrize("name", list(GLOBAL_LOSSES))
def test_losses_under_ddp_equal_single_process_on_the_global_batch(tmp_path, name):
    """A real 2-process gloo group: mean of ranks' losses (and the averaged gradients) equal
    the single-process loss on the concatenated batch, because negatives (NT-Xent), batch
    statistics (Barlow Twins' cross-correlation, VICReg's variance and covariance) and
    SwAV's Sinkhorn sums span all ranks."""
    z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
    rendezvous = str(tmp_path / "rendezvous")  # a file: no TCP port picked in advance
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, rendezvous, z0, z1, str(out), name), nprocs=2, join=True)
    got = torch.load(out)
    ref0 = z0.clone().requires_grad_(True)
    reference = GLOBAL_LOSSES[name]()(ref0, z1)
    reference.backward()
    # a rank's own half alone gives another value: the check above could not pass by chance
    assert not torch.allclose(GLOBAL_LOSSES[name]()(z0[:4], z1[:4]), reference, atol=1e-3)
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


def _cross_correlation_reference(z0, z1, eps):
    """C_ij = sum_b s0_bi s1_bj / N with s the batch-standardised columns (biased std), in
    float64 numpy, entry by entry."""
    a, b = z0.double().numpy(), z1.double().numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    n, d = a.shape
    return [[sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)] for i in range(d)]


def test_barlow_twins_loss_is_the_papers_definition():
    g = torch.Generator().manual_seed(5)
    z0, z1 = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    z1[:, 0] = z0[:, 0] + 0.1 * z1[:, 0]  # one near-invariant dimension
    c = _cross_correlation_reference(z0, z1, 1e-5)
    expected = sum(
        (1 - c[i][j]) ** 2 if i == j else 0.0051 * c[i][j] ** 2 for i in range(4) for j in range(4)
    )
    assert float(BarlowTwinsLoss()(z0, z1)) == pytest.approx(expected, rel=1e-5)
    # identical views with decorrelated, standardised dimensions: C = I, loss 0
    q, _ = torch.linalg.qr(torch.randn(64, 4, generator=g))
    q = (q - q.mean(0)) / q.std(0, unbiased=False)
    assert float(BarlowTwinsLoss(eps=0.0)(q, q)) < 0.1


def test_vicreg_loss_is_the_papers_definition():
    g = torch.Generator().manual_seed(6)
    z0, z1 = torch.randn(10, 3, generator=g), 0.3 * torch.randn(10, 3, generator=g)
    a, b = z0.double().numpy(), z1.double().numpy()
    n, d = a.shape
    invariance = ((a - b) ** 2).mean()
    variance = sum(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4)).mean() / 2 for z in (a, b))
    covariance = 0.0
    for z in (a, b):
        cov = np.cov(z, rowvar=False)  # unbiased, (D, D)
        covariance += sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    expected = 25 * invariance + 25 * variance + 1 * covariance
    assert float(VICRegLoss()(z0, z1)) == pytest.approx(expected, rel=1e-5)
    # each weight switches its own term: a collapsed pair costs only variance
    same = torch.zeros(10, 3)
    assert float(VICRegLoss(sim=1, var=0, cov=1)(same, same)) == 0.0
    assert float(VICRegLoss(sim=0, var=1, cov=0)(same, same)) == pytest.approx(1 - 1e-2, rel=1e-6)


def test_moco_loss_is_the_papers_definition():
    """ctr(q, k) = 2t * mean_i -log(exp(q_i.k_i / t) / sum_j exp(q_i.k_j / t)) on unit vectors,
    row by row."""
    q, k = torch.randn(6, 4), torch.randn(6, 4, requires_grad=True)
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    rows = [
        -(
            qn[i] @ kn[i] / 0.3
            - torch.logsumexp(torch.stack([qn[i] @ kn[j] / 0.3 for j in range(6)]), 0)
        )
        for i in range(6)
    ]
    expected = 2 * 0.3 * torch.stack(rows).mean()
    assert torch.allclose(MoCoInfoNCELoss(0.3)(q, k.detach()), expected, atol=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        MoCoInfoNCELoss(0)


def test_dino_loss_is_its_definition():
    """mean over pairs (g, v != g) of mean_b sum_k -softmax((t_g - c)/tt) * log_softmax(s_v/ts),
    written out in float64 numpy; globals first among the student's views."""
    from rayssl.methods.dino import DINOLoss

    g = torch.Generator().manual_seed(7)
    batch, k, views = 3, 5, 4  # 2 global + 2 local views
    student, teacher = (
        torch.randn(views * batch, k, generator=g),
        torch.randn(2 * batch, k, generator=g),
    )
    loss = DINOLoss(k, student_temp=0.1)
    loss.center.copy_(torch.randn(1, k, generator=g))
    s, t, c = student.double().numpy(), teacher.double().numpy(), loss.center.double().numpy()

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    terms = []
    for gi in range(2):
        p_t = softmax((t[gi * batch : (gi + 1) * batch] - c) / 0.05)
        for v in range(views):
            if v == gi:
                continue
            log_p = np.log(softmax(s[v * batch : (v + 1) * batch] / 0.1))
            terms.append((-(p_t * log_p).sum(-1)).mean())
    got = loss(student, teacher, teacher_temp=0.05, globals_=2)
    assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)


def _centre_worker(rank, world, rendezvous, teacher, out):
    from rayssl.methods.dino import DINOLoss

    gloo_group(rank, world, rendezvous)
    b = len(teacher) // world
    loss = DINOLoss(teacher.shape[1], center_momentum=0.9)
    loss.update_center(teacher[rank * b : (rank + 1) * b])
    if rank == 0:
        torch.save(loss.center, out)
    leave_gloo_group()


def test_dino_centre_moves_towards_the_global_batch_mean_on_two_gloo_processes(tmp_path):
    from rayssl.methods.dino import DINOLoss

    teacher = torch.randn(8, 6)
    teacher[4:] += 3.0  # the ranks' halves differ: a per-rank mean would give another centre
    rendezvous = str(tmp_path / "rendezvous")  # a file: no TCP port picked in advance
    out = tmp_path / "centre.pt"
    mp.spawn(_centre_worker, args=(2, rendezvous, teacher, str(out)), nprocs=2, join=True)
    single = DINOLoss(6, center_momentum=0.9)
    single.update_center(teacher)
    assert torch.allclose(torch.load(out), single.center, atol=1e-6)
    assert torch.allclose(single.center, 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_other_row():
    """Four directions of the plane 90 degrees apart: each row's nearest other row is sqrt(2)
    away once normalised, so the term is -log(sqrt(2)) whatever the rows' lengths; moving
    two rows together lowers their distance, and the term rises."""
    square = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-0.5, 0.0], [0.0, -2.0]])
    assert float(koleo(square)) == pytest.approx(-np.log(np.sqrt(2.0)), abs=1e-6)
    closer = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [0.0, -1.0]], requires_grad=True)
    d01 = np.linalg.norm(np.array([1.0, 0.0]) - np.array([1.0, 0.1]) / np.hypot(1.0, 0.1))
    d2 = np.sqrt(2.0)  # rows 2 and 3: nearest is a quarter turn away
    expected = -np.mean(np.log([d01, d01, d2, d2]))
    got = koleo(closer)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    got.backward()  # the gradient pushes rows 0 and 1 apart: their y components separate
    assert closer.grad[0, 1] > 0 > closer.grad[1, 1]


def _targets_worker(rank, world, rendezvous, teacher, out):
    from rayssl.methods.dino import DINOLoss

    gloo_group(rank, world, rendezvous)
    b = len(teacher) // world
    loss = DINOLoss(teacher.shape[1], centering="sinkhorn_knopp")
    torch.save(loss.targets(teacher[rank * b : (rank + 1) * b], 0.05), f"{out}.{rank}")
    leave_gloo_group()


def test_dino_sinkhorn_knopp_targets_span_the_global_batch_on_two_gloo_processes(tmp_path):
    """DINOv2's centering: 3 Sinkhorn-Knopp rounds on exp(teacher / t) over every rank's rows,
    no centre. Each rank's targets are those rows of the single-process targets; a
    per-rank Sinkhorn-Knopp would balance each half on its own and differ."""
    from rayssl.methods.dino import DINOLoss

    torch.manual_seed(0)
    teacher = torch.rand(8, 5) * 2 - 1
    teacher[4:] += torch.tensor([0.8, 0.0, 0.0, 0.0, -0.8])  # the ranks' halves differ
    single = DINOLoss(5, centering="sinkhorn_knopp")
    whole = single.targets(teacher, 0.05)
    assert np.allclose(whole.numpy(), _sinkhorn_reference(teacher.double().numpy(), 0.05, 3))
    single.update_center(teacher)
    assert torch.equal(single.center, torch.zeros(1, 5))  # no centre under Sinkhorn-Knopp
    out = str(tmp_path / "targets")
    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_targets_worker, args=(2, rendezvous, teacher, out), nprocs=2, join=True)
    ranks = torch.cat([torch.load(f"{out}.{r}") for r in range(2)])
    assert torch.allclose(ranks, whole, atol=1e-5)
    halves = torch.cat([single.targets(h, 0.05) for h in teacher.chunk(2)])
    assert not torch.allclose(halves, whole, atol=1e-3)


def _sinkhorn_reference(scores, epsilon, iterations):
    """The SwAV paper's algorithm, written out in numpy (float64)."""
    q = np.exp(scores / epsilon).T  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_is_the_papers_algorithm_and_balances_the_prototypes():
    torch.manual_seed(0)
    scores = torch.rand(12, 5) * 2 - 1  # cosines
    got = sinkhorn(scores, epsilon=0.05, iterations=3, gather=False)
    reference = _sinkhorn_reference(scores.double().numpy(), 0.05, 3)
    assert np.allclose(got.numpy(), reference, atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(12), atol=1e-5)  # each code sums to 1
    # with enough rounds every prototype holds an equal share of the batch: 12 / 5
    balanced = sinkhorn(scores, epsilon=0.05, iterations=200, gather=False)
    assert torch.allclose(balanced.sum(0), torch.full((5,), 12 / 5), atol=1e-3)
    assert not torch.allclose(
        F.softmax(scores / 0.05, 1).sum(0), torch.full((5,), 12 / 5), atol=0.1
    )
    # a small epsilon: the paper's exp(scores / epsilon) underflows to rows of zeros and
    # then NaN; on logarithms every code stays finite and sums to 1
    for _ in range(20):
        small = sinkhorn(torch.rand(12, 5) * 2 - 1, epsilon=0.002, iterations=3, gather=False)
        assert torch.isfinite(small).all() and torch.allclose(small.sum(1), torch.ones(12))


def test_swav_queue_joins_sinkhorn_and_only_the_batch_codes_are_kept():
    """With queued rows, each global crop's codes are the last B rows of Sinkhorn-Knopp on
    [queue; batch] (the paper's code), so they differ from the batch's codes alone."""
    torch.manual_seed(0)
    scores = [torch.rand(6, 4) * 2 - 1 for _ in range(3)]
    queued = [torch.rand(12, 4) * 2 - 1 for _ in range(2)]
    codes = [
        _sinkhorn_reference(np.concatenate([q.double().numpy(), s.double().numpy()]), 0.05, 3)[-6:]
        for q, s in zip(queued, scores[:2], strict=True)
    ]
    log_p = [F.log_softmax(s.double() / 0.1, -1).numpy() for s in scores]
    terms = [(-(codes[g] * log_p[v]).sum(-1)).mean() for g in range(2) for v in range(3) if v != g]
    loss = SwAVLoss(temperature=0.1, epsilon=0.05, iterations=3)
    assert float(loss(scores, queued=queued)) == pytest.approx(np.mean(terms), rel=1e-5)
    assert float(loss(scores)) != pytest.approx(np.mean(terms), rel=1e-3)


def test_swav_loss_is_the_papers_definition():
    """Three crops, two of them global: each global crop's codes are predicted by the two
    other crops; the loss is the mean of the four cross-entropies."""
    torch.manual_seed(0)
    scores = [torch.rand(6, 4) * 2 - 1 for _ in range(3)]
    codes = [_sinkhorn_reference(s.double().numpy(), 0.05, 3) for s in scores[:2]]

    def log_softmax(x):
        x = x / 0.1
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    terms = [
        (-(codes[g] * log_softmax(scores[v].double().numpy())).sum(-1)).mean()
        for g in range(2)
        for v in range(3)
        if v != g
    ]
    got = SwAVLoss(temperature=0.1, epsilon=0.05, iterations=3)(scores, globals_=2)
    assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)
    assert len(terms) == 4


def test_nnclr_anchors_are_nearest_neighbours_and_the_loss_is_the_papers():
    """Nearest neighbours by cosine (not by dot product: a long support row must not win on
    length), and the loss against its definition in float64 numpy."""
    support = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0]])
    z = torch.tensor([[2.0, 0.3], [0.2, 1.0], [1.0, 1.1]])
    assert torch.equal(nearest_neighbours(z, support), support[[0, 2, 1]])

    torch.manual_seed(0)
    anchors, p = torch.randn(5, 3), torch.randn(5, 3)
    a = anchors.double().numpy()
    q = p.double().numpy()
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    logits = a @ q.T / 0.1
    expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    assert float(NNCLRLoss(0.1)(anchors, p)) == pytest.approx(expected, rel=1e-6)
