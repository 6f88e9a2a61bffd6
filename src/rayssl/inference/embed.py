"""`rayssl embed SOURCE DATA --out DIR`: a trained backbone's embeddings of a folder of
images, WebDataset shards or a Parquet dataset (local or at a URI), by Ray Data batch
inference.

Ray Data reads and decodes the input in tasks, a pool of `--actors` actors (each with
`--gpus-per-actor` GPUs, or on CPU) holds the backbone and embeds batches, and the rows go
to Parquet as they come: `source` (the image's path or URI; `file#row` for Parquet;
`shard:key.suffix` for shards),
`label` (the class folder's index, or the label column; null where unknown) and
`embedding`. The backbone sees what it saw in training: the run's input size, colour and
normalisation. The rows go to one Parquet file per part of about `--part-rows` rows, each
moved into place when whole (`embed_output.py`): a restart after a crash keeps the whole
parts, embeds the rest, and never writes a row twice.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rayssl.config import ConfigError
from rayssl.data import images
from rayssl.data.stored import StoredSplit, parquet_units
from rayssl.inference.embed_output import MANIFEST, PARTIAL, Output, plan_parts

__all__ = ["MANIFEST", "PARTIAL", "EmbedJob", "embed"]
CRASH_AFTER_PARTS_ENV = "RAYSSL_EMBED_CRASH_AFTER_PARTS"  # fault injection, for tests


@dataclass
class EmbedJob:
    source: str
    data: str
    out: str
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_size: int = 256
    part_rows: int = 50_000
    x_column: str = "x"
    y_column: str = "y"
    trust_import_paths: bool = False


def embed(job: EmbedJob) -> dict[str, Any]:
    """Embed `job.data` with the backbone of `job.source`, resuming after the parts a
    crashed attempt finished; return the manifest written."""
    from rayssl.runs import pretrained as pre

    backbone = pre.read(job.source, "embed's SOURCE", job.trust_import_paths)
    pre.rebuild(backbone, job.source, job.trust_import_paths)  # a bad import path: here
    if not backbone.input_shape:
        raise ConfigError(f"SOURCE '{job.source}' does not record its backbone's input shape")
    split = input_split(job, tuple(backbone.input_shape))
    identity = {"source": backbone.source or {"path": job.source}, "data": job.data}
    item_rows = [1] * len(split.items) if split.per_sample else [n for *_, n in split.items]
    parts = plan_parts(item_rows, job.part_rows)
    try:
        fs, root = _fs(job.out)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--out '{job.out}' cannot be used ({exc})") from None
    job_record = {**identity, "items": len(split.items), "part_rows": job.part_rows}
    output = Output.open(job.out, fs, root, job_record)
    if output is None:  # done before: the same embeddings are already there
        print(f"[rayssl] note: --out '{job.out}' already holds these embeddings", flush=True)
        return json.loads(Output(job.out, fs, root, job_record).read(MANIFEST))
    done = output.parts_done()
    if done:
        print(
            f"[rayssl] note: resuming: {len(done)} of {len(parts)} parts of --out "
            f"'{job.out}' are whole; embedding the other {len(parts) - len(done)}",
            flush=True,
        )
    todo = [(i, sum(item_rows[j] for j in part)) for i, part in enumerate(parts) if i not in done]
    clock = _Clock()
    if todo:
        _start_ray(job)
        mine = split.subset([j for i, _ in todo for j in parts[i]])
        # closed on any failure: Ray Data's executor stops now, not when collected
        with contextlib.closing(_embedded(job, mine)) as tables:
            done.update(output.write_parts(todo, clock.timed(tables), _crash_hook()))
    manifest = {
        **identity,
        "rows": sum(done.values()),
        "parts": len(parts),
        "dim": output.dim(),
        "backbone": backbone.spec,
        "input_shape": backbone.input_shape,
        **clock.summary(),
    }
    output.finish(manifest)
    return manifest


def _embedded(job: EmbedJob, split: StoredSplit):
    """The embeddings of `split`'s items as pyarrow tables, in the items' order: Ray Data
    reads and decodes in tasks, a pool of actors embeds, and the blocks stream here."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()  # a bar on a terminal, quiet in CI
    ordered = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # parts are ranges of the items
    try:
        # image files in blocks of one batch: an actor's first rows come after one batch of
        # work, not after a block of Ray Data's sizing (hundreds of images: a minute on a
        # CPU), and the last blocks leave no actor idle for long while another finishes
        data = split.dataset(
            source_prefix=_uri_prefix(job.data), files_per_block=job.batch_size
        ).map_batches(
            Embedder,
            fn_constructor_kwargs={
                "path": job.source,
                "trust": job.trust_import_paths,
                "scale": split.kind != "parquet",
                "shape": split.shape,
            },
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=job.actors),
            num_cpus=job.cpus_per_actor,
            num_gpus=job.gpus_per_actor or None,
        )
        yield from data.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        context.execution_options.preserve_order = ordered


class _Clock:
    """This attempt's wall time, and when its first embeddings reached the driver (Ray's
    start, each actor loading the backbone, the first block of inputs through an actor:
    what a user waits before any row is written)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.first: float | None = None

    def timed(self, tables):
        for table in tables:
            if self.first is None:
                self.first = time.perf_counter() - self.started
            yield table

    def summary(self) -> dict[str, float]:
        out = {"wall_s": round(time.perf_counter() - self.started, 3)}
        if self.first is not None:
            out["first_rows_s"] = round(self.first, 3)
        return out


def _crash_hook():
    """Fault injection for tests: with RAYSSL_EMBED_CRASH_AFTER_PARTS=N, fail once N parts
    are whole in this attempt."""
    import os

    after = int(os.environ.get(CRASH_AFTER_PARTS_ENV, "0") or 0)

    def hook(parts_written: int) -> None:
        if after and parts_written >= after:
            raise RuntimeError(f"injected crash after {parts_written} parts")

    return hook


class Embedder:
    """Ray Data actor: the backbone, read from SOURCE once per actor (as Ray Train's
    workers read checkpoints: a run on a cluster lives where every node reaches it), on
    its GPU if it has one; a batch of decoded inputs in, `source`, `label` and `embedding`
    out."""

    def __init__(self, path: str, trust: bool, scale: bool, shape):
        import ray

        from rayssl.engine.features import FrozenFeatures, in_inference_layout
        from rayssl.runs.pretrained import read, rebuild

        backbone = read(path, "embed's SOURCE", trust)
        # one torch thread per CPU the actor holds (--cpus-per-actor), not the machine's
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.scale, self.shape = scale, tuple(shape)
        module, channels_last = in_inference_layout(
            rebuild(backbone, path, trust).to(self.device), self.shape
        )
        # the features the run's probes scored: the same definition, normalised by its record
        self.features = FrozenFeatures.of_record(
            module, backbone.normalize, len(self.shape), channels_last=channels_last
        )

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        x = torch.as_tensor(batch["x"]).to(self.device).reshape(-1, *self.shape).float()
        if self.scale:
            x = x / 255
        features = self.features(x).cpu().numpy()
        labels = np.asarray(batch["y"], dtype=np.int64)
        return pa.table(
            {
                "source": pa.array(batch["source"].astype(str)),
                "label": pa.array(labels, mask=labels < 0),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(features.reshape(-1)), features.shape[1]
                ),
            }
        )


def input_split(job: EmbedJob, shape: tuple[int, ...]) -> StoredSplit:
    """DATA as a `StoredSplit` decoded to the backbone's input `shape`, checked here."""
    if _is_parquet(job.data):
        return _parquet_split(job, shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ConfigError(
            f"DATA '{job.data}' is a folder of images and SOURCE's backbone takes samples "
            f"of shape {list(shape)}, not images; give Parquet rows of {int(np.prod(shape))} "
            "numbers"
        )
    from rayssl.data.image_folder import stored
    from rayssl.data.shards import list_shards

    lister = list_shards if _is_shards(job.data) else images.list_images
    files = lister(job.data, "DATA")
    fmt = images.ImageFormat("L" if shape[0] == 1 else "RGB", (shape[1], shape[2]))
    return stored(files, "DATA", fmt, shape)


def _parquet_split(job: EmbedJob, shape: tuple[int, ...]) -> StoredSplit:
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(job.data, format="parquet")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"DATA '{job.data}' is not readable Parquet ({exc})") from None
    names = dataset.schema.names
    if job.x_column not in names:
        raise ConfigError(
            f"DATA '{job.data}' has no column '{job.x_column}' (found: {', '.join(names)}); "
            "give --x-column"
        )
    kind = dataset.schema.field(job.x_column).type
    encoded = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if encoded and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ConfigError(
            f"DATA '{job.data}' holds encoded images and SOURCE's backbone takes samples of "
            f"shape {list(shape)}, not images"
        )
    if not encoded:
        _check_row_width(dataset, job, shape)
    fmt = (
        images.ImageFormat("L" if shape[0] == 1 else "RGB", (shape[1], shape[2]))
        if encoded
        else None
    )
    units = parquet_units(dataset, "DATA")
    if not units or sum(u[2] for u in units) == 0:
        raise ConfigError(f"DATA '{job.data}' holds no rows")
    return StoredSplit(
        "parquet_images" if encoded else "parquet",
        "DATA",
        shape,
        units,
        dataset.filesystem,
        image_format=fmt,
        x_column=job.x_column,
        y_column=job.y_column if job.y_column in names else None,
    )


def _check_row_width(dataset, job: EmbedJob, shape) -> None:
    first = dataset.head(1, columns=[job.x_column]).column(0).to_pylist()
    width = int(np.prod(shape))
    if first and (first[0] is None or len(first[0]) != width):
        got = 0 if first[0] is None else len(first[0])
        raise ConfigError(
            f"DATA '{job.data}': rows of column '{job.x_column}' hold {got} values and "
            f"SOURCE's backbone takes samples of shape {list(shape)} ({width} values)"
        )


def _is_parquet(data: str) -> bool:
    import pyarrow.fs as pafs

    fs, root = _fs(data)
    if root.endswith(".parquet"):
        return True
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (OSError, ValueError):
        return False
    return any(f.path.endswith(".parquet") for f in found)


def _is_shards(data: str) -> bool:
    """Whether DATA names WebDataset shards: a .tar file, a brace pattern of them, or a
    folder holding .tar files (and no images)."""
    import pyarrow.fs as pafs

    if data.endswith(".tar") or "{" in data:
        return True
    fs, root = _fs(data)
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (OSError, ValueError):
        return False
    return any(f.path.endswith(".tar") for f in found) and not any(
        f.path.lower().endswith(images.IMAGE_EXTENSIONS) for f in found
    )


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _uri_prefix(data: str) -> str:
    """What turns a filesystem path back into the URI a user gave (`s3://`), or nothing."""
    return (
        data.split("://", 1)[0] + "://" if "://" in data and not data.startswith("file://") else ""
    )


def _start_ray(job: EmbedJob) -> None:
    from rayssl.cluster.start import init_ray

    init_ray(None, min_cpus=job.actors * job.cpus_per_actor + 2)  # + decoding tasks


def task_error(exc: Exception) -> tuple[str, bool]:
    """(one line, whether it is bad input) for an error raised in a Ray Data task or actor:
    rayssl's own error line where Ray's wrapper carries one (a file that cannot be decoded),
    else the last line of the wrapped error."""
    from rayssl.cluster.records import RAYSSL_ERROR_LINE

    lines = str(exc).splitlines()
    own = [m.group(1) for m in map(RAYSSL_ERROR_LINE.match, lines) if m]
    if own:
        return own[-1].split(": ", 1)[1], True
    text = [line for line in lines if line.strip()]
    return (text[-1].strip() if text else type(exc).__name__), False
