"""Evaluate a backbone's frozen features: cosine kNN and a logistic-regression linear probe,
each across the ranks of a process group.

Every rank holds the features of its own shard of the fit and score splits; no rank ever
holds a whole split. kNN keeps the feature bank sharded (each rank's top-k of every query,
merged on the query's rank); the linear probe is one convex problem solved by full-batch
L-BFGS whose loss and gradient are summed over the ranks, so every rank takes the same
steps. Neither result depends on how the rows are spread over ranks, beyond the order of
floating-point sums (and, for kNN, ties between equally similar neighbours).

Why by hand: scikit-learn's probes need every feature in one process, and no maintained
library fits a probe over a torch process group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from rayssl import distributed

KNN_CHUNK = 512  # queries of each rank scored per round: bounds every rank's similarity block
PROBE_CHUNK = 65536  # rows per forward of the linear probe's loss: bounds its logits
LBFGS_MAX_ITER = 1000  # scikit-learn's solver stops near here on standardised features


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    return torch.cat(
        [embed(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def features_of(
    embed: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sample: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of this rank's batches, float32 on the device of `sample` (a
    batch of one input, for the feature width of a rank whose shard is empty)."""
    features, labels = [], []
    for x, y in batches:
        features.append(embed(x).float())
        labels.append(y.long())
    if not features:
        width = embed(sample).shape[1]
        return sample.new_zeros(0, width), torch.zeros(0, dtype=torch.long, device=sample.device)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(
    bank_f: torch.Tensor,
    bank_y: torch.Tensor,
    query_f: torch.Tensor,
    query_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018): neighbours vote exp(sim / t).

    The bank (`bank_f`, `bank_y`) and the queries are this rank's shards. Each round every
    rank's next `KNN_CHUNK` queries go to all ranks; each rank finds their top-k in its own
    bank; every query's candidates (k per rank) return to its rank, which keeps the best k.
    """
    rank, world = distributed.rank_and_world()
    device = query_f.device
    bank_f, query_f = F.normalize(bank_f, dim=1), F.normalize(query_f, dim=1)
    counts = distributed.all_reduce_sum(torch.tensor([len(bank_f), len(query_f)], device=device))
    rounds = distributed.all_reduce_max(
        torch.tensor([-(-len(query_f) // KNN_CHUNK)], device=device)
    )
    if num_classes is None:
        num_classes = int(
            distributed.all_reduce_max(
                torch.cat([bank_y, query_y, bank_y.new_zeros(1)]).max()[None]
            )
        )
        num_classes += 1
    k = min(k, int(counts[0]))
    correct = torch.zeros((), dtype=torch.float64, device=device)
    for r in range(int(rounds)):
        mine = query_f[r * KNN_CHUNK : (r + 1) * KNN_CHUNK]
        queries = distributed.stack_from_ranks(_pad_rows(mine, KNN_CHUNK)).flatten(
            0, 1
        )  # (world * chunk, D)
        top_sim, top_y = _local_top_k(queries, bank_f, bank_y, k)
        sims = distributed.stack_from_ranks(top_sim)[
            :, rank * KNN_CHUNK : rank * KNN_CHUNK + len(mine)
        ]
        ys = distributed.stack_from_ranks(top_y)[:, rank * KNN_CHUNK : rank * KNN_CHUNK + len(mine)]
        sims, ys = sims.permute(1, 0, 2).flatten(1), ys.permute(1, 0, 2).flatten(1)
        best, where = sims.topk(k, dim=1)  # of the world * k candidates
        votes = torch.zeros(len(mine), num_classes, device=device, dtype=torch.float64)
        votes.scatter_add_(1, ys.gather(1, where), (best.double() / temperature).exp())
        labels = query_y[r * KNN_CHUNK : r * KNN_CHUNK + len(mine)]
        correct += (votes.argmax(1) == labels).sum()
    return float(distributed.all_reduce_sum(correct[None])[0]) / max(int(counts[1]), 1)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(rows - len(t), *t.shape[1:])])


def _local_top_k(queries, bank_f, bank_y, k):
    """The `k` most similar rows of this rank's bank to each query, padded with similarity
    -inf (a weight of 0) where this rank holds fewer than `k` rows."""
    sim = queries @ bank_f.T
    top_sim, top_idx = sim.topk(min(k, len(bank_f)), dim=1)
    missing = k - top_sim.shape[1]
    if missing:
        top_sim = torch.cat([top_sim, top_sim.new_full((len(queries), missing), -torch.inf)], 1)
        top_idx = torch.cat([top_idx, top_idx.new_zeros(len(queries), missing)], 1)
    top_y = bank_y[top_idx] if len(bank_f) else torch.zeros_like(top_idx)
    return top_sim, top_y


def linear_probe_accuracy(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    c: float = 1.0,
) -> float:
    """Multinomial logistic regression on standardised frozen features, scikit-learn's
    objective (mean cross-entropy + ||W||^2 / (2 C N), the bias unpenalised) solved by
    full-batch L-BFGS with the loss and gradient summed over the ranks' shards."""
    device = train_f.device
    if num_classes is None:
        num_classes = int(
            distributed.all_reduce_max(
                torch.cat([train_y, test_y, train_y.new_zeros(1)]).max()[None]
            )
        )
        num_classes += 1
    train_f, test_f = train_f.float(), test_f.float()
    mean, std, n = _standardisation(train_f)
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    weight = torch.zeros(num_classes, train_f.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=LBFGS_MAX_ITER,
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        for p in (weight, bias):  # zeros, not None: a rank may hold no rows
            p.grad = torch.zeros_like(p)
        total = torch.zeros((), device=device)
        for start in range(0, len(train_f), PROBE_CHUNK):
            rows = slice(start, start + PROBE_CHUNK)
            loss = F.cross_entropy(train_f[rows] @ weight.T + bias, train_y[rows], reduction="sum")
            loss.backward()
            total += loss.detach()
        total = distributed.all_reduce_sum(total) / n
        for p in (weight, bias):  # the mean over every rank's rows
            distributed.all_reduce_sum(p.grad).div_(n)
        weight.grad += weight.detach() / (c * n)
        return total + (weight.detach() ** 2).sum() / (2 * c * n)

    solver.step(objective)
    with torch.no_grad():
        right = ((test_f @ weight.T + bias).argmax(1) == test_y).sum().double()
        counts = distributed.all_reduce_sum(
            torch.stack([right, torch.tensor(len(test_y), device=device).double()])
        )
    return float(counts[0] / counts[1].clamp_min(1))


def _standardisation(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-feature mean and std over every rank's rows (scikit-learn's StandardScaler: the
    population std, 1 where a feature is constant), and the global row count."""
    stats = torch.cat([f.double().sum(0), (f.double() ** 2).sum(0), f.new_ones(1).double()])
    stats[-1] = len(f)
    stats = distributed.all_reduce_sum(stats)
    width = f.shape[1]
    n = float(stats[-1])
    mean = stats[:width] / n
    var = (stats[width : 2 * width] / n - mean**2).clamp_min(0)
    std = var.sqrt()
    std[std < 1e-12 * mean.abs().clamp_min(1)] = 1.0
    return mean.float(), std.float(), n


def probe(
    embed: Callable[[torch.Tensor], torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    k: int = 20,
    linear: bool = True,
) -> dict[str, float]:
    """knn_acc (and linear_acc) of features fitted on `train`, scored on `test` (in one
    process: the ranks' shards go through `probe_features`)."""
    train_f, test_f = extract_features(embed, train[0]), extract_features(embed, test[0])
    return probe_features(train_f, train[1].cpu(), test_f, test[1].cpu(), k=k, linear=linear)


def probe_features(
    train_f, train_y, test_f, test_y, k: int = 20, linear: bool = True, num_classes=None
) -> dict[str, float]:
    """knn_acc (and linear_acc) of this rank's shards of the fit and score features."""
    metrics = {
        "knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, k, num_classes=num_classes)
    }
    if linear:
        metrics["linear_acc"] = linear_probe_accuracy(
            train_f, train_y, test_f, test_y, num_classes=num_classes
        )
    return metrics
