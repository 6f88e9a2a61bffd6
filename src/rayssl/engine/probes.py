"""Evaluate a backbone's frozen features: cosine kNN and a logistic-regression linear probe."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    return torch.cat(
        [embed(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def knn_accuracy(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018): neighbours vote exp(sim / t)."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_f))
    correct = 0
    for start in range(0, len(test_f), 1024):
        sim = test_f[start : start + 1024] @ train_f.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(1) == test_y[start : start + 1024]).sum())
    return correct / len(test_f)


def linear_probe_accuracy(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Multinomial logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_f.numpy(), train_y.numpy())
    return float(np.mean(probe.predict(test_f.numpy()) == test_y.numpy()))


def probe(
    embed: Callable[[torch.Tensor], torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    k: int = 20,
    linear: bool = True,
) -> dict[str, float]:
    """knn_acc (and linear_acc) of features fitted on `train`, scored on `test`."""
    train_f, test_f = extract_features(embed, train[0]), extract_features(embed, test[0])
    train_y, test_y = train[1].cpu(), test[1].cpu()
    metrics = {"knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, k)}
    if linear:
        metrics["linear_acc"] = linear_probe_accuracy(train_f, train_y, test_f, test_y)
    return metrics


NO_PROBE_LABELS = (
    "the training images have no labels (a flat folder) and neither data.val_path nor "
    "data.test_path gives labeled images, so there is nothing to fit kNN / linear probes on"
)
NO_PROBE_SCORE_SPLIT = (
    "there is no split to score kNN / linear probes on (data.val_fraction 0 and no "
    "data.val_path or data.test_path); give one of them"
)


NO_PROBE_ONE_CLASS = (
    "the data has one class, and a probe needs at least 2 to tell apart; give labeled "
    "data of 2 or more classes (an image folder: one subfolder per class)"
)


def no_probe_reason(splits) -> str:
    """Why `splits.probe_sets()` is None: one class, no labels, or nothing to score on."""
    if splits.num_classes < 2 and splits.labeled:
        return NO_PROBE_ONE_CLASS
    return NO_PROBE_SCORE_SPLIT if splits.labeled else NO_PROBE_LABELS


def evaluate_checkpoint(
    path: str, knn_k: int | None = None, trust_import_paths: bool = False
) -> dict[str, float]:
    """Rebuild the method of a run directory's newest checkpoint (or of a checkpoint
    directory) from its saved config, load the weights, and probe its backbone. A config
    naming its method, backbone or head by import path is rebuilt only with
    `trust_import_paths` (that imports and calls what the file names)."""
    from pathlib import Path

    from rayssl.build import build_method
    from rayssl.config import ConfigError, validate_train_config
    from rayssl.data import input_normalizer, load_splits
    from rayssl.pretrained import refuse_import_paths
    from rayssl.state import STATE_FILE, load_state
    from rayssl.storage import Storage

    directory = Path(path).resolve()
    if not (directory / STATE_FILE).is_file():
        latest = Storage(str(directory.parent)).latest_checkpoint(directory.name)
        if latest is None:
            raise ConfigError(
                f"'{path}' holds neither {STATE_FILE} nor a checkpoint registered by Ray"
            )
        directory = directory / latest
    state = load_state(directory)
    saved = state["config"]
    names = [saved.get("method"), *(saved.get(k, {}).get("name") for k in ("backbone", "head"))]
    refuse_import_paths(names, str(directory), trust_import_paths)
    cfg = validate_train_config(saved)
    cfg.settle_older_checkpoint(saved)  # options added since it was written
    splits = load_splits(cfg.data, cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.load_extra_state(state["method_extra"])  # LFR: its saved target selection
    method.load_state_dict(state["model"])
    method.eval()
    normalize = input_normalizer(cfg.data, splits) or (lambda x: x)
    sets = splits.probe_sets(cfg.seed)
    if sets is None:
        raise ConfigError(f"'{path}': {no_probe_reason(splits)}")
    return probe(
        lambda x: method.embed(normalize(x)),
        *sets,
        k=knn_k or cfg.eval.knn_k,
        linear=cfg.eval.linear_probe,
    )
