"""`data.name: webdataset`: images in WebDataset tar shards (local or at any URI pyarrow
reads), each sample an image (`.jpg`, `.png`, ...) and optionally its integer label
(`.cls`), as `webdataset.TarWriter` writes them.

The shards take the image folder's whole path (`image_folder.load_splits_of`): they are
indexed (each sample's shard, byte range and label; tar headers only for local shards, one
sequential read for remote ones), in Ray tasks across the cluster where one is there, else
in the driver's threads, and kept per shard for the next command (`shard_index.py`),
so the val split held out of train, `labels_per_class`, in-memory decoding and the probes'
seeded limits work as for a folder. Training rows stream
through Ray Data's own WebDataset reader (`ray.data.read_webdataset`, whole shards read in
order, shards shuffled per epoch); evaluation splits in storage read each sample's byte range
(`TarRanges`), so every rank reads only its own samples.

Nothing in a shard runs: the reader keeps raw bytes (no decoder: no pickle, no torch.load),
and only the image and `.cls` members are read.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from rayssl.config import ConfigError
from rayssl.data.images import IMAGE_EXTENSIONS, ImageDecodeError

# the suffixes a sample's image may have (WebDataset names members `<key>.<suffix>`)
IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS) + ("ppm", "pgm")
LABEL_SUFFIX = "cls"
# WebDataset's rule, as Ray's reader applies it: the key is the member's path up to the
# first dot of its base name, the suffix the rest (`a/b/001.seg.png`: `a/b/001`, `seg.png`)
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass
class ShardSamples:
    """The samples of a set of shards, indexed: what `images.ImageFiles` is for a folder.
    `refs[i]`: (shard path, byte offset, size) of sample i's image; `paths[i]` its name in
    error lines (`<shard>:<key>.<suffix>`); `keys[i]` its WebDataset key."""

    uri: str
    filesystem: object  # pyarrow.fs.FileSystem
    shards: list[str]
    refs: list[tuple[str, int, int]]
    paths: list[str]
    keys: list[str]
    labels: list[int] | None
    classes: list[str] | None = None
    whole: bool = True  # every sample of `shards` (else a subset: the stream filters)

    root = None  # labels come with the samples, not from folder names

    def read(self, index: int) -> bytes:
        shard, offset, size = self.refs[index]
        try:
            with self.filesystem.open_input_file(shard) as f:
                return f.read_at(size, offset)
        except OSError as exc:
            raise ImageDecodeError(
                f"sample '{self.paths[index]}' cannot be read ({type(exc).__name__}: {exc}); "
                "check the shard"
            ) from None

    def subset(self, indices) -> ShardSamples:
        indices = list(indices)
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        labels = pick(self.labels) if self.labels is not None else None
        whole = self.whole and len(indices) == len(self.refs)
        return replace(
            self, refs=pick(self.refs), paths=pick(self.paths), keys=pick(self.keys),
            labels=labels, whole=whole,
        )  # fmt: skip

    def items(self) -> list[tuple[str, int, int, str]]:
        """`StoredSplit` items: (shard, offset, size, name) per sample."""
        return [(*ref, name) for ref, name in zip(self.refs, self.paths, strict=True)]

    def kept(self) -> set[str] | None:
        """`shard\\0key` of every sample, where the samples are a subset of their shards
        (the stream reads whole shards and drops the rest); None where they are all."""
        if self.whole:
            return None
        return {f"{shard}\0{key}" for (shard, _, _), key in zip(self.refs, self.keys, strict=True)}


def list_shards(uri: str, field: str, classes: list[str] | None = None) -> ShardSamples:
    """Index the shards at `uri`: one `.tar` file, a folder of them (recursively), or a
    brace pattern (`train-{000000..000099}.tar`). `classes` is unused (labels are numbers);
    it keeps `images.list_images`' signature."""
    from rayssl.data.shard_index import ShardIndexCache

    filesystem, infos = _shard_paths(uri, field)
    shards = [info.path for info in infos]
    local = type(filesystem).__name__ == "LocalFileSystem"
    cache = ShardIndexCache(filesystem, infos)  # indexes of earlier commands, where unchanged
    indexed = {shard: cache.load(shard) for shard in shards}
    for shard, samples in _index_all(filesystem, [s for s in shards if indexed[s] is None],
                                     local, field):  # fmt: skip
        cache.store(shard, samples)  # as each arrives: an interrupted first command keeps it
        indexed[shard] = samples
    refs, names, keys, labels = [], [], [], []
    for shard in shards:
        for ref, name, key, label in indexed[shard]:
            refs.append(ref), names.append(name), keys.append(key), labels.append(label)
    if not refs:
        raise ConfigError(f"data.{field} '{uri}' holds no samples; give WebDataset shards")
    labeled = [label is not None for label in labels]
    if any(labeled) and not all(labeled):
        missing = names[labeled.index(False)]
        raise ConfigError(
            f"data.{field} '{uri}': sample '{missing}' has no .{LABEL_SUFFIX} label and "
            f"others have one; give every sample a label, or none (no labels)"
        )
    found = labels if all(labeled) else None
    return ShardSamples(uri, filesystem, shards, refs, names, keys, found)


def _index_all(filesystem, shards: list[str], local: bool, field: str):
    """(shard, its index) for each of `shards`, as each is done: in Ray tasks where a Ray
    cluster is there to use (`shard_index.ray_tasks_can_index`), else in threads of this
    process."""
    from rayssl.data.shard_index import (
        NOTE_FROM,
        cache_root,
        index_in_ray_tasks,
        ray_tasks_can_index,
    )

    tasks = len(shards) > 1 and ray_tasks_can_index(local)
    if len(shards) >= NOTE_FROM:  # a first command over many shards: say what it waits on
        where = "in Ray tasks" if tasks else "in this process"
        print(
            f"[rayssl] note: data.{field}: indexing {len(shards)} shards {where}, once: "
            f"kept under {cache_root() / 'shard-index'} for later commands",
            flush=True,
        )
    if tasks:
        yield from index_in_ray_tasks(_index_task, filesystem, shards, local, field)
    elif shards:
        with ThreadPoolExecutor(min(16, len(shards))) as pool:
            yield from zip(
                shards,
                pool.map(lambda shard: _index(filesystem, shard, local, field), shards),
                strict=True,
            )


def _index_task(filesystem, shard: str, local: bool, field: str):
    """`_index` as a Ray task runs it: (index, None), or (None, the one line) for a shard
    that cannot be indexed (raised in a task, the error would reach the driver wrapped in
    Ray's traceback)."""
    try:
        return _index(filesystem, shard, local, field), None
    except ConfigError as exc:
        return None, str(exc)


def name_classes(splits: list[ShardSamples]) -> list[str] | None:
    """Label the classes 0 .. the largest label of any split (their names are numbers)."""
    labels = [max(s.labels) for s in splits if s.labels]
    if not labels:
        return None
    classes = [str(i) for i in range(max(labels) + 1)]
    for split in splits:
        split.classes = classes if split.labels is not None else None
    return classes


def _shard_paths(uri: str, field: str):
    """The filesystem and the `FileInfo` of every shard `uri` names (path, size, time)."""
    import pyarrow.fs as pafs

    patterns = _expand(uri, field)
    shards = []
    try:
        if "://" in uri:
            filesystem, _ = pafs.FileSystem.from_uri(patterns[0])
            roots = [pafs.FileSystem.from_uri(p)[1] for p in patterns]
        else:
            from pathlib import Path

            filesystem = pafs.LocalFileSystem()
            roots = [str(Path(p).expanduser().resolve()) for p in patterns]
        for root in roots:
            info = filesystem.get_file_info(root)
            if info.type == pafs.FileType.File:
                shards.append(info)
            elif info.type == pafs.FileType.Directory:
                entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
                shards += sorted(
                    (e for e in entries
                     if e.type == pafs.FileType.File and e.path.endswith(".tar")
                     and not posixpath.basename(e.path).startswith(".")),
                    key=lambda e: e.path,
                )  # fmt: skip
            else:
                raise ConfigError(f"data.{field} '{uri}': '{root}' does not exist")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.{field} '{uri}' cannot be listed ({exc})") from None
    if not shards:
        raise ConfigError(
            f"data.{field} '{uri}' holds no .tar shards; give a shard, a folder of shards or "
            "a brace pattern (train-{000000..000009}.tar)"
        )
    return filesystem, shards


def _expand(uri: str, field: str) -> list[str]:
    """WebDataset's brace notation, as its users write it: braceexpand, the library
    webdataset itself uses."""
    if "{" not in uri:
        return [uri]
    from braceexpand import braceexpand

    try:
        return list(braceexpand(uri))
    except Exception as exc:  # an unbalanced brace
        raise ConfigError(f"data.{field} '{uri}' is not a brace pattern ({exc})") from None


def _index(filesystem, shard: str, local: bool, field: str) -> list:
    """(ref, name, key, label) of every sample in `shard`, in the shard's order. Local: tar
    headers only (`r:` seeks over the data); remote: one sequential read (`r|`), since a
    seek on an object store is a request of its own."""
    samples, current = [], None
    try:
        if local:  # Python's own file: tarfile's many small reads cost a third of pyarrow's
            handle = open(shard, "rb")  # noqa: SIM115  (closed by the with below)
            archive = tarfile.open(fileobj=handle, mode="r:")
        else:
            handle = filesystem.open_input_stream(shard)
            archive = tarfile.open(fileobj=handle, mode="r|")
        with handle, archive:
            for member in archive:
                match = _KEY.match(member.name) if member.isreg() else None
                if match is None:
                    continue
                key, suffix = match.group(1), match.group(2)
                if current is None or current["key"] != key:
                    if current is not None:
                        samples.append(_sample(current, shard, field))
                    current = {"key": key, "images": [], "label": None}
                if suffix.lower() in IMAGE_SUFFIXES:
                    current["images"].append((suffix, member.offset_data, member.size))
                elif suffix == LABEL_SUFFIX:
                    current["label"] = archive.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ConfigError(
            f"data.{field}: shard '{shard}' is not a readable tar ({type(exc).__name__}: "
            f"{exc}); replace the shard"
        ) from None
    if current is not None:
        samples.append(_sample(current, shard, field))
    return samples


def _sample(found: dict, shard: str, field: str):
    key, images = found["key"], found["images"]
    if len(images) != 1:
        what = "no image" if not images else f"{len(images)} images"
        raise ConfigError(
            f"data.{field}: sample '{key}' in shard '{shard}' has {what} "
            f"({', '.join('.' + s for s in IMAGE_SUFFIXES[:4])}, ...); rayssl reads one image "
            "per sample"
        )
    suffix, offset, size = images[0]
    name = f"{shard}:{key}.{suffix}"
    label = None
    if found["label"] is not None:
        try:
            label = int(found["label"].decode().strip())
        except (UnicodeDecodeError, ValueError):
            label = -1
        if label < 0:
            raise ConfigError(
                f"data.{field}: sample '{key}' in shard '{shard}' has label "
                f"{found['label'][:20]!r}; a .{LABEL_SUFFIX} member holds an integer >= 0"
            )
    return (shard, offset, size), name, key, label


# ============================================================================ reading


def stream_dataset(stream, read_concurrency: int | None):
    """The training rows of a `datasets.Stream` of shards, through Ray Data's reader: raw
    bytes (nothing decoded or unpickled there), shards in a new order every epoch from the
    seed, then decoded as image files are."""
    import ray.data

    from rayssl.data.images import Decoder

    files = stream.files
    labeled = files.labels is not None
    rows = ray.data.read_webdataset(
        files.shards,
        filesystem=files.filesystem,
        decoder=None,
        suffixes=[*IMAGE_SUFFIXES, *([LABEL_SUFFIX] if labeled else [])],
        shuffle=ray.data.FileShuffleConfig(seed=stream.seed),
        concurrency=read_concurrency,
    ).map_batches(ShardRows(files.kept(), labeled), batch_format="numpy")
    decoder = Decoder(
        stream.image_format, stream.shape, bytes_column="bytes", name_column="name",
        label_column="y", out_columns=(stream.x_column, stream.y_column),
    )  # fmt: skip
    return rows.map_batches(decoder, batch_format="numpy")


class ShardRows:
    """Ray Data `map_batches` function on `read_webdataset`'s rows (raw bytes per suffix):
    the image's bytes, its name and its label, samples outside `kept` dropped."""

    def __init__(self, kept: set[str] | None, labeled: bool):
        self.kept, self.labeled = kept, labeled

    def __call__(self, batch):
        names, images, labels = [], [], []
        columns = [c for c in IMAGE_SUFFIXES if c in batch]
        for i, (key, url) in enumerate(zip(batch["__key__"], batch["__url__"], strict=True)):
            if self.kept is not None and f"{url}\0{key}" not in self.kept:
                continue
            # shards mixing formats: a sample's other image columns are empty (None / NaN)
            suffix = next(c for c in columns if isinstance(batch[c][i], bytes))
            names.append(f"{url}:{key}.{suffix}")
            images.append(batch[suffix][i])
            labels.append(int(batch[LABEL_SUFFIX][i]) if self.labeled else -1)
        out = np.empty(len(images), dtype=object)
        out[:] = images
        return {"bytes": out, "name": np.array(names, dtype=object), "y": np.array(labels)}


class TarRanges:
    """Ray Data `map_batches` function: samples' (shard, offset, size, name, label) in,
    their image bytes out (each shard opened once per batch)."""

    def __init__(self, filesystem):
        self.filesystem = filesystem

    def __call__(self, batch):
        data = np.empty(len(batch["shard"]), dtype=object)
        order = np.argsort(batch["shard"], kind="stable")
        handle, opened = None, None
        try:
            for i in order:
                shard = str(batch["shard"][i])
                if shard != opened:
                    if handle is not None:
                        handle.close()
                    handle, opened = self.filesystem.open_input_file(shard), shard
                data[i] = handle.read_at(int(batch["size"][i]), int(batch["offset"][i]))
        except OSError as exc:
            raise ImageDecodeError(
                f"shard '{opened}' cannot be read ({type(exc).__name__}: {exc}); check it"
            ) from None
        finally:
            if handle is not None:
                handle.close()
        return {"bytes": data, "name": batch["name"], "y": batch["label"]}
