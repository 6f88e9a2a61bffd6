"""Evaluation splits that stay in storage: val, test and the probes' fit set of data that
streams (image folders too large for memory, Parquet). Nothing is decoded on the driver;
every rank reads its own share through a Ray Data pipeline of its own.

Why a pipeline per rank and not Ray Train's dataset shards: Ray Train splits a dataset into
equal shards (dropping up to world_size - 1 rows) and hands rows to ranks as they come, so
an accuracy would depend on the number of workers. Here the driver lists the split (file
paths, or Parquet row groups), rank r takes items r, r + world, ... of that list, and every
row is scored exactly once whatever the world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from rayssl.config import ConfigError


@dataclass
class StoredSplit:
    """One evaluation split in storage. `kind`: "image_files" (`items` are paths, `labels`
    per path or None), "webdataset" (`items` are `(shard, offset, size, name)` of each
    sample's image in a tar shard, `labels` per sample or None), "parquet" (`items` are
    `(file, row_group, rows)` units of a column of flattened floats) or "parquet_images"
    (of encoded images)."""

    kind: str
    field: str  # the config field it comes from, for error lines: "val_path"
    shape: tuple[int, ...]
    items: list
    filesystem: Any  # pyarrow.fs.FileSystem
    labels: list[int] | None = None  # per item: image_files, webdataset
    root: str | None = None  # image_files: the folder, for class names from paths
    classes: list[str] | None = None
    image_format: Any = None  # images.ImageFormat (image kinds)
    x_column: str = "x"
    y_column: str | None = "y"  # Parquet: None where the rows have no labels
    labeled: bool = True

    @property
    def per_sample(self) -> bool:
        """Whether every item is one sample (image files, shard samples), not a unit."""
        return self.kind in ("image_files", "webdataset")

    def __len__(self) -> int:
        if self.per_sample:
            return len(self.items)
        return sum(rows for _, _, rows in self.items)

    def subset(self, indices) -> StoredSplit:
        """The items at `indices` (paths, or Parquet units)."""
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return replace(self, items=[self.items[i] for i in indices], labels=labels)

    def limited(self, rows: int | None, seed: int) -> StoredSplit:
        """At most `rows` rows: a seeded choice of images, or a Parquet split's first rows."""
        if rows is None or len(self) <= rows:
            return self
        if self.per_sample:
            order = np.random.default_rng(seed).permutation(len(self.items))
            return self.subset(sorted(order[:rows].tolist()))
        kept, left = [], rows
        for file, group, count in self.items:
            if left <= 0:
                break
            kept.append((file, group, min(count, left)))
            left -= count
        return replace(self, items=kept)

    def halves(self, seed: int) -> tuple[StoredSplit, StoredSplit]:
        """Two disjoint seeded halves of the items (fit and score of the probes)."""
        order = np.random.default_rng(seed).permutation(len(self.items))
        half = len(order) // 2
        return self.subset(sorted(order[:half])), self.subset(sorted(order[half:]))

    def dataset(
        self,
        rank: int = 0,
        world_size: int = 1,
        source_prefix: str | None = None,
        files_per_block: int | None = None,
    ):
        """The Ray Data dataset of this rank's rows (items rank, rank + world_size, ...):
        columns `x`, `y`, and with `source_prefix` `source` (each row's file, or Parquet
        file and row, after the prefix). `files_per_block`: image files read in blocks of
        about that many (else Ray Data's sizing: blocks of at least 1 MiB of encoded bytes,
        which for 15-KB JPEGs are near 200 images; shards and row groups are blocks as
        they are)."""
        import ray.data

        from rayssl.data.images import Decoder

        mine = self.subset(range(rank, len(self.items), world_size))
        if not mine.items:
            return None
        if self.kind == "image_files":
            blocks = -(-len(mine.items) // files_per_block) if files_per_block else None
            rows = ray.data.read_binary_files(
                mine.items,
                filesystem=self.filesystem,
                include_paths=True,
                override_num_blocks=blocks,
            )
            decoder = Decoder(
                self.image_format, self.shape, bytes_column="bytes", name_column="path",
                root=self.root, classes=self.classes, source_prefix=source_prefix,
            )  # fmt: skip
            data = rows.map_batches(decoder, batch_format="numpy")
        elif self.kind == "webdataset":
            data = self._shard_samples(mine, source_prefix)
        else:
            units = [{"file": f, "row_group": g, "rows": n} for f, g, n in mine.items]
            data = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
                ParquetUnits(self), batch_size=1, batch_format="pyarrow"
            )
            if self.kind == "parquet_images":
                decoder = Decoder(
                    self.image_format, self.shape, bytes_column="x", name_column="name",
                    label_column="y", source_prefix=source_prefix,
                )  # fmt: skip
                data = data.map_batches(decoder, batch_format="numpy")
            elif source_prefix is not None:
                data = data.map_batches(
                    lambda b: {
                        "x": b["x"],
                        "y": b["y"],
                        "source": np.char.add(source_prefix, b["name"]),
                    },
                    batch_format="numpy",
                )
            else:
                data = data.drop_columns(["name"])
        data.context.execution_options.preserve_order = True  # a loss over the same batches
        return data

    def _shard_samples(self, mine: StoredSplit, source_prefix: str | None):
        """The byte ranges of `mine`'s samples read from their shards, then decoded."""
        import ray.data

        from rayssl.data.images import Decoder
        from rayssl.data.shards import TarRanges

        labels = mine.labels if mine.labels is not None else [-1] * len(mine.items)
        rows = [
            {"shard": shard, "offset": offset, "size": size, "name": name, "label": label}
            for (shard, offset, size, name), label in zip(mine.items, labels, strict=True)
        ]
        blocks = max(1, min(len(rows) // 256, 64))
        decoder = Decoder(
            self.image_format, self.shape, bytes_column="bytes", name_column="name",
            label_column="y", source_prefix=source_prefix,
        )  # fmt: skip
        return (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(TarRanges(self.filesystem), batch_format="numpy")
            .map_batches(decoder, batch_format="numpy")
        )

    def batches(
        self, rank: int, world_size: int, batch_size: int, device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's `(x, y)` batches on `device`, x float32 (images scaled to [0, 1])."""
        data = self.dataset(rank, world_size)
        if data is None:
            return
        data.context.enable_progress_bars = False
        for batch in data.iter_torch_batches(
            batch_size=batch_size, device=device, drop_last=False, prefetch_batches=1
        ):
            x = batch["x"].reshape(-1, *self.shape)
            x = x.float() / 255 if self.kind != "parquet" else x.float()
            yield x, batch["y"].long()


class ParquetUnits:
    """Ray Data `map_batches` function: one `(file, row_group, rows)` unit in, its rows out
    in slices of at most 1,024 (columns `x`, `y`, and `name`: `file#row`), read with
    pyarrow so that no task holds more than one slice of a large row group."""

    SLICE = 1024

    def __init__(self, split: StoredSplit):
        self.filesystem, self.field = split.filesystem, split.field
        self.x_column, self.y_column = split.x_column, split.y_column
        self.width = math.prod(split.shape) if split.kind == "parquet" else None
        self.columns = [c for c in (self.x_column, self.y_column) if c is not None]

    def __call__(self, unit):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        file = unit["file"][0].as_py()
        group, rows = unit["row_group"][0].as_py(), unit["rows"][0].as_py()
        with self.filesystem.open_input_file(file) as handle:
            seen, reader = 0, pq.ParquetFile(handle)
            offset = sum(reader.metadata.row_group(g).num_rows for g in range(group))
            for part in reader.iter_batches(self.SLICE, row_groups=[group], columns=self.columns):
                part = part.slice(0, rows - seen)
                start, seen = seen, seen + part.num_rows
                column = part.column(self.x_column)
                if self.width is None:  # encoded images
                    x = np.array(column.to_pylist(), dtype=object)
                else:
                    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                    if (lengths != self.width).any():
                        raise ConfigError(
                            f"data.{self.field} '{file}': rows of column '{self.x_column}' "
                            f"hold {int(lengths[lengths != self.width][0])} values, "
                            f"data.shape needs {self.width}; set data.shape or fix the file"
                        )
                    x = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                    x = x.reshape(part.num_rows, self.width)
                first = offset + start  # the file's row of this slice's first
                names = [f"{file}#{first + i}" for i in range(part.num_rows)]
                y = (
                    part.column(self.y_column).to_numpy(zero_copy_only=False).astype(np.int64)
                    if self.y_column is not None
                    else np.full(part.num_rows, -1, dtype=np.int64)  # unlabeled
                )
                yield {"x": x, "y": y, "name": np.array(names)}
                if seen >= rows:
                    return


def parquet_units(dataset, field: str) -> list[tuple[str, int, int]]:
    """The `(file, row_group, rows)` units of a pyarrow Parquet dataset, from metadata."""
    units = []
    try:
        for fragment in dataset.get_fragments():
            for group in fragment.row_groups:
                units.append((fragment.path, group.id, group.num_rows))
    except OSError as exc:
        raise ConfigError(f"data.{field}: Parquet metadata unreadable ({exc})") from None
    return units


class StoredShard:
    """A rank's batches of a `StoredSplit`, read afresh on every iteration."""

    def __init__(self, split: StoredSplit, rank: int, world_size: int, batch_size: int, device):
        self.split, self.rank, self.world_size = split, rank, world_size
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        """Batches in this rank's share (what a progress bar counts)."""
        share = self.split.items[self.rank :: self.world_size]
        rows = len(share) if self.split.per_sample else sum(unit[2] for unit in share)
        return -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.split.batches(self.rank, self.world_size, self.batch_size, self.device)
