"""`data.name: parquet`: rows of a flattened sample or an encoded image (`x_column`) and a
label (`y_column`), read with pyarrow on the driver only as far as checks need: the label
columns in full (for the class count), the first `probe_samples` training rows (statistics,
LFR's selection, the preflight step) and the first row of val / test. Training rows stream
to the workers through Ray Data; val, test and the probes' fit set are `StoredSplit`s that
each rank reads its share of."""

from __future__ import annotations

import numpy as np

from rayssl.config import ConfigError, DataConfig
from rayssl.data import images
from rayssl.data.datasets import Pair, Splits, Stream, as_tensors
from rayssl.data.stored import StoredSplit, parquet_units


def load_parquet(cfg: DataConfig, seed: int = 0) -> Splits:
    train = _open_rows(cfg, cfg.path or "", "path")
    labels = train.to_table(columns=[cfg.y_column]).column(0).to_numpy()
    if len(labels) < cfg.batch_size:
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) is larger than the training set "
            f"({len(labels)} rows); lower data.batch_size"
        )
    shape = tuple(_rows(cfg, train, "path", 1)[0].shape[1:])
    sample = _rows(cfg, train, "path", images.probe_count(cfg.probe_samples, shape))
    kind = "parquet_images" if _encoded(cfg, train) else "parquet"
    seen = [labels]
    val, test = None, None
    for field in ("val_path", "test_path"):
        if getattr(cfg, field):
            split, split_labels = _stored(cfg, field, kind, shape)
            seen.append(split_labels)
            val, test = (split, test) if field == "val_path" else (val, split)
    stream = Stream(
        cfg.path or "",
        cfg.x_column,
        cfg.y_column,
        shape,
        len(labels),
        kind=kind,
        image_format=images.ImageFormat.of(cfg) if kind == "parquet_images" else None,
        seed=seed,
        stored=_split(cfg, train, "path", kind, shape),
    )
    num_classes = int(max(int(a.max()) for a in seen)) + 1
    return Splits(train=sample, val=val, test=test, num_classes=num_classes, stream=stream)


def _open_rows(cfg: DataConfig, path: str, field: str):
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(path, format="parquet")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.{field} '{path}' is not readable parquet ({exc})") from None
    missing = [c for c in (cfg.x_column, cfg.y_column) if c not in dataset.schema.names]
    if missing:
        raise ConfigError(
            f"data.{field} '{path}' has no column(s) {', '.join(missing)}; found: "
            f"{', '.join(dataset.schema.names)} (set data.x_column / data.y_column)"
        )
    return dataset


def _stored(cfg: DataConfig, field: str, kind: str, shape) -> tuple[StoredSplit, np.ndarray]:
    """Val or test as a `StoredSplit`, and its labels; its first row checked here."""
    dataset = _open_rows(cfg, getattr(cfg, field), field)
    if ("parquet_images" if _encoded(cfg, dataset) else "parquet") != kind:
        raise ConfigError(
            f"data.{field}: column '{cfg.x_column}' holds "
            f"{'numbers' if kind == 'parquet_images' else 'encoded images'}, data.path's "
            f"{'encoded images' if kind == 'parquet_images' else 'numbers'}; they must match"
        )
    first = _rows(cfg, dataset, field, 1)
    if tuple(first[0].shape[1:]) != shape:
        raise ConfigError(
            f"data.{field} samples have shape {list(first[0].shape[1:])}, data.path's "
            f"{list(shape)}; they must match (images: set data.image_size)"
        )
    labels = dataset.to_table(columns=[cfg.y_column]).column(0).to_numpy()
    if len(labels) and labels.min() < 0:
        raise ConfigError(
            f"data.{field}: column '{cfg.y_column}' must hold labels >= 0, found "
            f"{int(labels.min())}"
        )
    return _split(cfg, dataset, field, kind, shape), labels


def _split(cfg: DataConfig, dataset, field: str, kind: str, shape) -> StoredSplit:
    return StoredSplit(
        kind,
        field,
        tuple(shape),
        parquet_units(dataset, field),
        dataset.filesystem,
        image_format=images.ImageFormat.of(cfg) if kind == "parquet_images" else None,
        x_column=cfg.x_column,
        y_column=cfg.y_column,
    )


def _encoded(cfg: DataConfig, dataset) -> bool:
    """Whether `x_column` holds encoded images (PNG / JPEG bytes)."""
    import pyarrow as pa

    kind = dataset.schema.field(cfg.x_column).type
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _rows(cfg: DataConfig, dataset, field: str, limit: int | None) -> Pair:
    """The first `limit` rows (all without it) as tensors, checked against the config."""
    table = dataset.head(limit) if limit else dataset.to_table()
    y = table.column(cfg.y_column).to_numpy()
    if _encoded(cfg, dataset):
        path, fmt = getattr(cfg, field), images.ImageFormat.of(cfg)
        arrays = [
            images.decode(data, f"{path} row {i}", fmt)
            for i, data in enumerate(table.column(cfg.x_column).to_pylist())
        ]
        for i, array in enumerate(arrays):
            images.check_size(array, f"{path} row {i}", arrays[0].shape)
        x = np.stack(arrays).astype(np.float32) / 255
        return as_tensors(x, y, "parquet", cfg.x_column, cfg.y_column)
    try:
        flat = np.asarray(table.column(cfg.x_column).to_pylist(), dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.{field}: column '{cfg.x_column}' must hold one equal-length list of "
            "numbers per row, or encoded images (bytes)"
        ) from None
    shape = tuple(cfg.shape)
    per_row = flat.shape[1] if flat.ndim == 2 else 1
    if flat.ndim != 2 or per_row != int(np.prod(shape)):
        raise ConfigError(
            f"data.{field}: rows of column '{cfg.x_column}' hold {per_row} values, "
            f"data.shape {list(shape)} needs {int(np.prod(shape))}; set data.shape"
        )
    return as_tensors(flat.reshape(-1, *shape), y, "parquet", cfg.x_column, cfg.y_column)
