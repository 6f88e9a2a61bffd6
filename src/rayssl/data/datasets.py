"""Built-in datasets (offline) and user arrays, loaded as in-memory tensors.

Every loader returns a `Splits`: train / val / test pairs `(x, y)` with `x` float32 of
shape `(N, *sample_shape)` and `y` int64 of shape `(N,)`. Inputs are checked here, where
they enter, so bad data fails with one line before any Ray worker starts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayssl.config import ConfigError, DataConfig
from rayssl.data.stored import StoredSplit

Pair = tuple[torch.Tensor, torch.Tensor]
Split = Pair | StoredSplit  # an evaluation split in memory, or in storage


@dataclass
class Stream:
    """Training rows that stay on disk: Ray Data streams each worker its shard per epoch.

    `kind`: "parquet" (a column of flattened floats), "parquet_images" (a column of encoded
    image bytes) or "image_files" (a folder of images, `files`). `x_column` / `y_column` name
    the columns the dataset yields; image kinds yield uint8 pixels, scaled to [0, 1] on the
    worker's device (a quarter of float32's bytes through the object store)."""

    path: str
    x_column: str
    y_column: str
    shape: tuple[int, ...]
    num_rows: int
    kind: str = "parquet"
    files: Any = None  # images.ImageFiles of the training folder (image_files)
    image_format: Any = None  # images.ImageFormat (image kinds)
    seed: int = 0
    stored: Any = None  # the same rows as a `StoredSplit`: the probes' fit set

    @property
    def scale(self) -> float | None:
        return None if self.kind == "parquet" else 1 / 255

    def dataset(self, read_concurrency: int | None = None):
        """The Ray Data dataset of every training row (built lazily; Ray Train shards it)."""
        import ray.data

        from rayssl.data.images import Decoder

        # rayssl's progress line says what a user needs each epoch; Ray Data's progress bars
        # would add one per epoch's pass (the context travels with the dataset)
        ray.data.DataContext.get_current().enable_progress_bars = False
        if self.kind == "parquet":
            return ray.data.read_parquet(self.path, concurrency=read_concurrency).select_columns(
                [self.x_column, self.y_column]
            )
        if self.kind == "parquet_images":
            rows = ray.data.read_parquet(
                self.path, concurrency=read_concurrency, include_paths=True
            ).select_columns([self.x_column, self.y_column, "path"])
            decoder = Decoder(
                self.image_format,
                self.shape,
                bytes_column=self.x_column,
                name_column="path",
                label_column=self.y_column,
                out_columns=(self.x_column, self.y_column),
            )
        elif self.kind == "webdataset":
            from rayssl.data.shards import stream_dataset

            return stream_dataset(self, read_concurrency)
        else:
            files = self.files
            # a new file order every epoch (every execution of the dataset), from the seed
            rows = ray.data.read_binary_files(
                files.paths,
                filesystem=files.filesystem,
                include_paths=True,
                shuffle=ray.data.FileShuffleConfig(seed=self.seed),
                concurrency=read_concurrency,
            )
            decoder = Decoder(
                self.image_format,
                self.shape,
                bytes_column="bytes",
                name_column="path",
                root=files.root,
                classes=files.classes,
                out_columns=(self.x_column, self.y_column),
            )
        return rows.map_batches(decoder, batch_format="numpy")


@dataclass
class Splits:
    train: Pair  # with `stream`: only the first rows (probes, LFR target selection, checks)
    val: Split | None
    test: Split | None
    num_classes: int
    stream: Stream | None = None
    # `backbone.init_from`'s weights (a `pretrained.Pretrained`), read once on the driver:
    # they travel to every worker and trial with the data, whatever storage they came from
    pretrained: Any = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    @property
    def reads_storage(self) -> bool:
        """Whether Ray Data tasks read any split (training stream, or val / test in
        storage): they need a CPU beside the workers'."""
        stored = any(isinstance(s, StoredSplit) for s in (self.val, self.test))
        return self.stream is not None or stored

    @property
    def labeled(self) -> bool:
        """Whether the training samples have labels (a flat image folder has none: -1)."""
        return bool((self.train[1] >= 0).all())

    def probe_sets(self, seed: int = 0, limit: int | None = None) -> tuple[Split, Split] | None:
        """(fit, score) splits of the kNN / linear probes, or None when no labels allow them:
        labeled train data fits (at most `limit` rows of it, a seeded choice) and test
        (else val) scores; unlabeled train data leaves the labeled val and test splits (or
        halves of the only one). One class: nothing to tell apart, no probes. A split is
        in memory (a pair) or in storage (`StoredSplit`, when the training set streams)."""
        if self.num_classes < 2:
            return None
        if self.labeled:
            scored = self.test if self.test is not None else self.val
            if scored is None:
                return None
            fit = self.stream.stored if self.stream is not None else self.train
            return limited(fit, limit, seed), scored
        labeled = [s for s in (self.val, self.test) if s is not None and is_labeled(s)]
        if len(labeled) == 2:
            return limited(labeled[0], limit, seed), labeled[1]
        if not labeled or split_size(labeled[0]) < 4:
            return None
        fit, scored = halves(labeled[0], seed)
        return limited(fit, limit, seed), scored


def is_labeled(split: Split) -> bool:
    return split.labeled if isinstance(split, StoredSplit) else bool((split[1] >= 0).all())


def split_size(split: Split) -> int:
    return len(split) if isinstance(split, StoredSplit) else len(split[0])


def limited(split: Split, rows: int | None, seed: int) -> Split:
    """At most `rows` rows of `split` (`eval.probe_train_limit`): a seeded choice."""
    if isinstance(split, StoredSplit):
        return split.limited(rows, seed)
    if rows is None or len(split[0]) <= rows:
        return split
    keep = torch.randperm(len(split[0]), generator=torch.Generator().manual_seed(seed))[:rows]
    keep = keep.sort().values
    return split[0][keep], split[1][keep]


def halves(split: Split, seed: int) -> tuple[Split, Split]:
    """Two disjoint seeded halves of one split."""
    if isinstance(split, StoredSplit):
        return split.halves(seed)
    x, y = split
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    half = len(x) // 2
    return (x[order[:half]], y[order[:half]]), (x[order[half:]], y[order[half:]])


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Load the configured data and hold out `val_fraction` of train (seeded, stratified-free)."""
    if cfg.name == "parquet":
        from rayssl.data.parquet import load_parquet

        return load_parquet(cfg, seed)
    if cfg.name in ("images", "webdataset"):
        from rayssl.data.image_folder import load_image_folder

        return load_image_folder(cfg, seed)
    loaders = {"mnist1d": _mnist1d, "digits": _digits, "synthetic": _synthetic, "npz": _npz}
    x, y, x_test, y_test = loaders[cfg.name](cfg)
    x, y = as_tensors(x, y, cfg.name, "x", "y")
    test = as_tensors(x_test, y_test, cfg.name, "x_test", "y_test") if x_test is not None else None
    if test is not None and test[0].shape[1:] != x.shape[1:]:
        raise ConfigError(
            f"data '{cfg.name}': x_test samples have shape {tuple(test[0].shape[1:])}, "
            f"train samples {tuple(x.shape[1:])}; they must match"
        )
    val = None
    if cfg.val_fraction > 0:
        n_val = max(1, int(round(len(x) * cfg.val_fraction)))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        val = (x[order[:n_val]], y[order[:n_val]])
        x, y = x[order[n_val:]], y[order[n_val:]]
    if cfg.labels_per_class:
        keep = torch.as_tensor(labelled_subset(y.numpy(), cfg.labels_per_class, seed))
        x, y = x[keep], y[keep]
    if cfg.batch_size > len(x):
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) is larger than the training set "
            f"({len(x)} samples); lower data.batch_size"
        )
    labels = [y] + [s[1] for s in (val, test) if s is not None]
    num_classes = int(torch.cat(labels).max()) + 1
    return Splits(train=(x, y), val=val, test=test, num_classes=num_classes)


def labelled_subset(labels, per_class: int, seed: int, names=None) -> list[int]:
    """Sorted indices of `per_class` samples of every class in `labels` (the first of each
    class in a seeded shuffle): `data.labels_per_class`. `names`: the classes' names, for
    the error when one has fewer."""
    labels = np.asarray(labels)
    if len(labels) == 0 or (labels < 0).any():
        raise ConfigError(
            "data.labels_per_class needs labelled training samples and data.path holds "
            "unlabelled ones; give it one subfolder per class, or drop labels_per_class"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    keep = []
    for c in np.unique(labels):
        mine = order[labels[order] == c]
        if len(mine) < per_class:
            name = names[c] if names is not None else int(c)
            raise ConfigError(
                f"data.labels_per_class ({per_class}): class {name!r} has {len(mine)} "
                "training samples; lower data.labels_per_class"
            )
        keep.extend(mine[:per_class].tolist())
    return sorted(keep)


def as_tensors(x, y, source: str, xname: str, yname: str) -> Pair:
    x = np.asarray(x)
    y = np.asarray(y)
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise ConfigError(f"data '{source}': {xname} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ConfigError(
            f"data '{source}': {xname} must be (N, ...) with N samples, got {x.shape}"
        )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ConfigError(f"data '{source}': {xname} holds {bad} NaN/Inf values; clean the data")
    if y.ndim != 1 or len(y) != len(x):
        raise ConfigError(
            f"data '{source}': {yname} must be 1-D with one label per sample "
            f"({len(x)}), got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) and not (
        np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)
    ):
        raise ConfigError(f"data '{source}': {yname} must hold integer class labels, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise ConfigError(f"data '{source}': {yname} must hold labels >= 0, found {int(y.min())}")
    # copies where needed: arrays from pyarrow are read-only, which torch does not support
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def _cache_dir(cfg: DataConfig) -> Path:
    from rayssl.data.shard_index import cache_root

    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root()


def _mnist1d(cfg: DataConfig):
    """MNIST-1D (Greydanus 2020) generated with the package's `make_dataset` and its default
    arguments, cached on disk. The cache is named by the package's version (its defaults,
    which define the set, are fixed per version), so a cached set is read without importing
    mnist1d, which imports matplotlib and scipy (about 1 s of every start)."""
    from importlib.metadata import version

    path = _cache_dir(cfg) / f"mnist1d-{version('mnist1d')}-defaults.npz"
    if not path.is_file():
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())  # deterministic: seeded, no download
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so concurrent workers never read a half-written cache file.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
        os.replace(tmp.name, path)
    with np.load(path) as f:
        # (N, 40) signals become (N, 1, 40): one channel for 1D convolutions.
        return f["x"][:, None], f["y"], f["x_test"][:, None], f["y_test"]


def _digits(cfg: DataConfig):
    """scikit-learn's 8x8 digits (bundled with the package), as (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def _synthetic(cfg: DataConfig):
    """Random inputs of any shape; labels are a fixed random linear rule, so they are learnable."""
    g = torch.Generator().manual_seed(1234)
    n_test = max(cfg.num_samples // 4, 1)
    x = torch.randn(cfg.num_samples + n_test, *cfg.shape, generator=g)
    w = torch.randn(x[0].numel(), cfg.num_classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return x[: cfg.num_samples], y[: cfg.num_samples], x[cfg.num_samples :], y[cfg.num_samples :]


def _npz(cfg: DataConfig):
    path = Path(cfg.path or "")
    if not path.is_file():
        raise ConfigError(f"data.path '{path}' does not exist; give a .npz with arrays x and y")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy raises several types for a corrupt or foreign file
        raise ConfigError(f"data.path '{path}' is not a readable .npz file ({exc})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ConfigError(
            f"data.path '{path}' lacks array(s) {', '.join(missing)}; "
            f"found: {', '.join(arrays) or 'none'} (expected x, y, optional x_test, y_test)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ConfigError(f"data.path '{path}': give both x_test and y_test, or neither")
    return arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test")


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of samples `(N, C, ...)`, over every other axis."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dim=dims), x.std(dim=dims).clamp_min(1e-6)


def input_statistics(cfg: DataConfig, splits: Splits) -> tuple[torch.Tensor, ...] | None:
    """The per-channel (mean, std) of `data.normalize`, or None. 'dataset' reads them from
    the training split (the in-memory rows, for a stream), so every rank and `rayssl eval`
    compute the same numbers. 'sample' has no statistics of the data (`sample_normalizer`)."""
    if cfg.normalize in (None, "sample"):
        return None
    if cfg.normalize == "dataset":
        mean, std = channel_statistics(splits.train[0])
    else:
        mean, std = (torch.tensor(v) for v in (cfg.normalize.mean, cfg.normalize.std))
        channels = splits.sample_shape[0]
        if len(mean) != channels:
            raise ConfigError(
                f"data.normalize has {len(mean)} channel values, samples have {channels} "
                f"channels (shape {list(splits.sample_shape)})"
            )
    return mean.float(), std.float()


def input_normalizer(cfg: DataConfig, splits: Splits):
    """The configured normalisation of `data.normalize` (a function of a batch), or None."""
    if cfg.normalize == "sample":
        return sample_normalizer(len(splits.sample_shape))
    return channel_normalizer(input_statistics(cfg, splits), len(splits.sample_shape))


def sample_normalizer(sample_dims: int):
    """Each input standardised by its own statistics: per channel over the other axes
    (torch's instance norm, no affine, no running statistics), or over the features of a
    flat sample (layer norm). Nothing is computed from the data set, so every rank, a
    resumed run and `rayssl eval` agree by construction."""

    def normalize(x: torch.Tensor) -> torch.Tensor:
        if sample_dims == 1:
            return torch.nn.functional.layer_norm(x, x.shape[1:])
        return torch.nn.functional.instance_norm(x)

    return normalize


def channel_normalizer(stats: tuple[torch.Tensor, ...] | None, sample_dims: int):
    """`(x - mean) / std` over the channel axis of samples with `sample_dims` axes, or None.
    Computed as one fused `x * (1 / std) - mean / std` (addcmul): half the time of the two
    passes or less on a CPU (benchmarks/rand_augment.py, its normalisation rows); the same
    up to float rounding."""
    if stats is None:
        return None
    shape = (1, -1, *([1] * (sample_dims - 1)))
    mean, std = (v.view(shape).double() for v in stats)
    scale, shift = (1 / std).float(), (-mean / std).float()

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(shift.to(x.device, x.dtype), x, scale.to(x.device, x.dtype))

    return normalize
