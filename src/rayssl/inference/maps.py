"""`rayssl plot RUN --embeddings`: a 2-D map of a saved run's frozen features on its scoring
split (test, else val), coloured by label: UMAP where umap-learn is installed, else
scikit-learn's t-SNE. Written beside the run's curves.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

MAX_POINTS = 2000  # t-SNE is quadratic in the points; a seeded sample of the split


def embedding_figure(path: str, trust_import_paths: bool = False) -> tuple[Any, Any]:
    """The map of the run behind `path` (`runs/resolve.py`), and where its checkpoint was
    found (`read_run_state`'s record: the run folder and checkpoint, or a checkpoint folder)."""
    from rayssl.config import ConfigError
    from rayssl.data import load_splits
    from rayssl.engine.inputs import Inputs
    from rayssl.inference.evaluate import read_run_state, saved_config, shown_as, trained_method
    from rayssl.runs.storage import split_run_path

    state, where = read_run_state(path, "rayssl plot's RUN")
    cfg = saved_config(state, shown_as(where), trust_import_paths)
    splits = load_splits(cfg.data, cfg.seed)
    split = splits.test if splits.test is not None else splits.val
    if split is None or not _labeled(split):
        raise ConfigError(
            f"'{path}': an embedding map needs a labeled val or test split (this run's data "
            "has none)"
        )
    inputs = Inputs(trained_method(cfg, splits, state), cfg, splits)
    with torch.no_grad():
        features, labels = zip(*(
            (inputs.clean_features(x), y) for x, y in _sample(split, cfg.seed)
        ), strict=True)  # fmt: skip
    features, labels = torch.cat(features), torch.cat(labels)
    points, projection = two_d(features.float().numpy(), cfg.seed)
    history = state["loop"]["history"]
    knn = next((h["knn_acc"] for h in reversed(history) if "knn_acc" in h), None)
    run = split_run_path(where["run"])[1] if "run" in where else where["checkpoint"]
    title = f"{cfg.method}: {run}, epoch {state['loop']['epoch']}"
    title += f", kNN {knn:.3f}" if knn is not None else ""
    title += f" ({projection})"
    return _draw(points, labels.numpy(), title), where


def _labeled(split) -> bool:
    from rayssl.data.stored import StoredSplit

    return split.labeled if isinstance(split, StoredSplit) else bool((split[1] >= 0).all())


def _sample(split, seed: int):
    """`(x, y)` batches of a seeded sample of at most MAX_POINTS of `split`: in memory, or
    in storage (read through Ray Data, as the probes read it)."""
    from rayssl.data.stored import StoredSplit

    if isinstance(split, StoredSplit):
        from rayssl.cluster.start import init_ray

        init_ray(None)
        yield from split.limited(MAX_POINTS, seed).batches(0, 1, 256, "cpu")
        return
    x, y = split
    pick = np.random.default_rng(seed).permutation(len(x))[:MAX_POINTS]
    for i in range(0, len(pick), 256):
        rows = torch.as_tensor(pick[i : i + 256])
        yield x[rows], y[rows]


def two_d(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """The features in 2-D, seeded, and the projection's name: UMAP where umap-learn is
    installed (faster, and the usual map of SSL features), else scikit-learn's t-SNE."""
    try:
        import umap
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, len(features) // 4)))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
        return tsne.fit_transform(features), "t-SNE"
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(features), "UMAP"


def _draw(points: np.ndarray, labels: np.ndarray, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    colours = plt.get_cmap("tab10" if labels.max() < 10 else "tab20").colors
    for label in np.unique(labels):
        at = labels == label
        ax.scatter(*points[at].T, s=6, color=colours[int(label) % len(colours)], label=str(label))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="label", fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def write_embedding_map(path: str, out: str | None, trust_import_paths: bool = False) -> str:
    """Draw the map and write it as a PNG: to `out`, else beside the run's curves.png
    (`embeddings.png` in its run folder, local or at a URI)."""
    import io

    import matplotlib.pyplot as plt

    from rayssl.runs.storage import Storage, split_run_path

    fig, where = embedding_figure(path, trust_import_paths)
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=100)
    plt.close(fig)
    if out is not None:
        Path(out).write_bytes(data.getvalue())
        return out
    if "run" not in where:  # a checkpoint folder: beside it
        target = f"{where['checkpoint'].rstrip('/')}/embeddings.png"
        Path(target).write_bytes(data.getvalue())
        return target
    parent, run = split_run_path(where["run"])
    return Storage(parent).write_bytes(run, "embeddings.png", data.getvalue())
