"""`data.name: images`: a folder of images, one subfolder per class or flat; and
`data.name: webdataset`, tar shards of images, indexed by `shards.list_shards` and taken
through the same path. Listed on the driver; decoded there when the training set fits in
memory (`in_memory`), else only `probe_samples` random training images are (statistics,
LFR's selection, the preflight step) and the rest streams to the workers through Ray
Data. Val and test are decoded with an in-memory training set up to `data.eval_limit_mb`
each; otherwise they stay in storage (`StoredSplit`) and every rank reads its share."""

from __future__ import annotations

import numpy as np
import torch

from rayssl.config import ConfigError, DataConfig
from rayssl.data import images
from rayssl.data.datasets import Pair, Splits, Stream, labelled_subset
from rayssl.data.shards import ShardSamples, list_shards, name_classes
from rayssl.data.stored import StoredSplit


def load_image_folder(cfg: DataConfig, seed: int) -> Splits:
    fmt = images.ImageFormat.of(cfg)
    train, splits, classes = _list_splits(cfg)
    order = np.random.default_rng(seed).permutation(len(train.paths))
    if "val_path" not in splits and cfg.val_fraction > 0:
        n_val = max(1, int(round(len(order) * cfg.val_fraction)))
        splits["val_path"] = train.subset(sorted(order[:n_val]))
        train = train.subset(sorted(order[n_val:]))
        order = np.random.default_rng(seed).permutation(len(train.paths))
    if cfg.labels_per_class:
        labels = train.labels if train.labels is not None else [-1] * len(train.paths)
        train = train.subset(labelled_subset(labels, cfg.labels_per_class, seed, classes))
        order = np.random.default_rng(seed).permutation(len(train.paths))
    if cfg.batch_size > len(train.paths):
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) is larger than the training set "
            f"({len(train.paths)} images); lower data.batch_size"
        )
    first = images.decode(train.read(0), train.paths[0], fmt)
    in_memory = cfg.in_memory
    if in_memory == "auto":
        in_memory = (
            images.decoded_bytes(len(train.paths), first.shape) <= images.IN_MEMORY_LIMIT_BYTES
        )
    if in_memory:
        _refuse_what_memory_cannot_hold(cfg, len(train.paths), first.shape)
    val, test = (
        _eval_split(cfg, splits[f], f, fmt, first.shape, in_memory) if f in splits else None
        for f in ("val_path", "test_path")
    )
    stream = None
    if in_memory:
        sample = _decode(train, "path", fmt, first.shape)
    else:
        count = images.probe_count(cfg.probe_samples, first.shape)
        sample = _decode(train.subset(sorted(order[:count])), "path", fmt, first.shape)
        stream = Stream(
            train.uri,
            "x",
            "y",
            tuple(first.shape),
            len(train.paths),
            kind=_kind(train),
            files=train,
            image_format=fmt,
            seed=seed,
            stored=stored(train, "path", fmt, first.shape),
        )
    num_classes = len(classes or [])
    return Splits(train=sample, val=val, test=test, num_classes=num_classes, stream=stream)


def _list_splits(cfg: DataConfig) -> tuple[images.ImageFiles, dict, list[str] | None]:
    """The training files, the val / test files by field, and the class names."""
    lister = list_shards if cfg.name == "webdataset" else images.list_images
    train = lister(cfg.path or "", "path")
    splits = {}
    classes = train.classes  # a flat training folder: the first labeled split's classes
    for field in ("val_path", "test_path"):
        path = getattr(cfg, field)
        if path:
            files = lister(path, field, classes)
            classes = classes or files.classes
            if train.labels is not None and files.labels is None:
                raise ConfigError(
                    f"data.{field} '{path}' holds no class folders but data.path has them; "
                    "give it one subfolder per class"
                )
            splits[field] = files
    if cfg.name == "webdataset":  # numbered classes: 0 .. the largest label of any split
        classes = name_classes([train, *splits.values()])
    return train, splits, classes


def _kind(files) -> str:
    return "webdataset" if isinstance(files, ShardSamples) else "image_files"


def _eval_split(cfg: DataConfig, files, field: str, fmt, shape, in_memory: bool):
    """Val or test decoded here (with an in-memory training set, up to
    `data.eval_limit_mb`), else in storage: the driver stays flat whatever its size."""
    if in_memory and images.decoded_bytes(len(files.paths), shape) <= cfg.eval_limit_mb * 2**20:
        return _decode(files, field, fmt, shape)
    return stored(files, field, fmt, shape)


def stored(files: images.ImageFiles, field: str, fmt, shape) -> StoredSplit:
    """A folder's images (or shards' samples) as a `StoredSplit` (each rank decodes its
    share)."""
    shards = isinstance(files, ShardSamples)
    return StoredSplit(
        _kind(files),
        field,
        tuple(shape),
        files.items() if shards else list(files.paths),
        files.filesystem,
        labels=files.labels,
        root=files.root,
        classes=files.classes,
        image_format=fmt,
        labeled=files.labels is not None,
    )


def _refuse_what_memory_cannot_hold(cfg: DataConfig, count: int, shape: tuple[int, ...]):
    """`in_memory: true` decodes the whole training set on the driver: more than this
    machine has available is one line before anything is decoded, not a MemoryError."""
    need, have = images.decoding_peak_bytes(count, shape), images.available_memory_bytes()
    if have is not None and need > have:
        raise ConfigError(_memory_line(cfg, count, shape, need, have))


def _memory_line(cfg: DataConfig, count: int, shape, need: int, have: int | None) -> str:
    free = f", more than the {have / 2**30:.1f} GiB this machine has available" if have else ""
    return (
        f"data.in_memory: data.path '{cfg.path}' is {count} images of {list(shape)}, "
        f"{need / 2**30:.1f} GiB while decoding in memory{free}; set data.in_memory: false "
        "(or auto) to stream them through Ray Data, or data.image_size smaller"
    )


def _decode(files: images.ImageFiles, field: str, fmt, shape: tuple[int, ...]) -> Pair:
    try:
        return _decode_split(files, field, fmt, shape)
    except (MemoryError, RuntimeError) as exc:  # torch's allocator raises a RuntimeError
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
            raise
        need = images.decoding_peak_bytes(len(files.paths), shape)
        raise ConfigError(
            f"data.{field}: {len(files.paths)} images of {list(shape)} need "
            f"{need / 2**30:.1f} GiB while decoding in memory, more than this machine could "
            "give; set data.in_memory: false to stream the training set, or give smaller "
            "val / test splits"
        ) from None


def _decode_split(files: images.ImageFiles, field: str, fmt, shape: tuple[int, ...]) -> Pair:
    x = images.decode_files(files, fmt)
    if x.shape[1:] != shape:
        raise ConfigError(
            f"data.{field} images are {x.shape[3]}x{x.shape[2]} with {x.shape[1]} "
            f"channel(s), data.path's {shape[2]}x{shape[1]} with {shape[0]}: set data.image_size"
        )
    y = files.labels if files.labels is not None else [-1] * len(files.paths)
    return torch.from_numpy(x).float().div_(255), torch.tensor(y, dtype=torch.int64)
