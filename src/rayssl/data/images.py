"""Image data: folders of image files (local or any URI pyarrow reads) and Parquet columns
of encoded image bytes.

Layouts of a folder (`data.path`, `val_path`, `test_path`):
- ImageFolder: one subfolder per class (`root/cat/001.png`); labels index the sorted
  class names of the training folder, so a split with other folders is refused.
- flat: images directly in the folder, no labels (self-supervised runs only).

Small sets are decoded once here, on the driver, and travel to the workers through Ray's
object store like any in-memory data. Larger ones stay on disk: `Stream.dataset()` is a
Ray Data pipeline (`read_binary_files` with a per-execution file shuffle, then decoding in
Ray Data tasks) that Ray Train shards to the workers with `get_dataset_shard`. Decoding is
ours, not `read_images`': a corrupt file must fail with its own name, whichever process
finds it, and the same function serves files and Parquet bytes.
"""

from __future__ import annotations

import io
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rayssl.config import ConfigError, DataConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IN_MEMORY_LIMIT_BYTES = 1 << 30  # data.in_memory auto: decoded float32 train set up to 1 GiB
# streamed data: the training rows decoded on the driver (and shipped to every worker) for
# the statistics, LFR's selection and the preflight step, at most this many bytes as float32:
# data.probe_samples' 4,096 up to 64 x 64 RGB, 445 at 224 px (4,096 would be 2.3 GiB)
PROBE_SAMPLE_BYTES = 256 << 20


def probe_count(probe_samples: int, shape: tuple[int, ...]) -> int:
    """How many of `probe_samples` rows of `shape` the driver decodes (at least 2)."""
    return max(2, min(probe_samples, PROBE_SAMPLE_BYTES // decoded_bytes(1, shape)))


class ImageDecodeError(ConfigError):
    """An image file (or Parquet cell) that cannot be decoded, or has the wrong size."""


@dataclass
class ImageFormat:
    """How every image is decoded: PIL mode, and (H, W) after resizing (None: as stored)."""

    mode: str  # "RGB" or "L"
    size: tuple[int, int] | None

    @classmethod
    def of(cls, cfg: DataConfig) -> ImageFormat:
        size = cfg.image_size
        if isinstance(size, int):
            size = (size, size)
        return cls("L" if cfg.color == "grayscale" else "RGB", tuple(size) if size else None)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def decode(data: bytes, name: str, fmt: ImageFormat) -> np.ndarray:
    """One encoded image as a (C, H, W) uint8 array, converted and resized per `fmt`."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert(fmt.mode)  # forces the full decode: truncation fails here
            if fmt.size is not None and image.size != (fmt.size[1], fmt.size[0]):
                image = image.resize((fmt.size[1], fmt.size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except MemoryError:
        raise  # not the file's fault: the caller says how much memory the split needs
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            f"image '{name}' cannot be decoded (not an image format PIL reads); "
            "remove or replace the file"
        ) from None
    except Exception as exc:  # PIL's plugins raise many types on a malformed file
        # (OSError, ValueError, SyntaxError, struct.error, EOFError, TypeError, ...)
        raise ImageDecodeError(
            f"image '{name}' cannot be decoded ({type(exc).__name__}: {exc}); "
            "remove or replace the file"
        ) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def check_size(array: np.ndarray, name: str, expected: tuple[int, ...]) -> None:
    if array.shape != expected:
        raise ImageDecodeError(
            f"image '{name}' is {array.shape[2]}x{array.shape[1]}, others are "
            f"{expected[2]}x{expected[1]}: set data.image_size to resize every image"
        )


# ============================================================================ folders


@dataclass
class ImageFiles:
    """The images of one folder: paths on `filesystem`, labels (None: a flat folder)."""

    uri: str
    filesystem: object  # pyarrow.fs.FileSystem
    root: str  # the folder, as `filesystem` names it
    paths: list[str]
    labels: list[int] | None
    classes: list[str] | None

    def read(self, index: int) -> bytes:
        """The bytes of image `index`; a file that cannot be read is one line naming it."""
        try:
            with self.filesystem.open_input_file(self.paths[index]) as f:
                return f.readall()
        except OSError as exc:
            raise ImageDecodeError(
                f"image '{self.paths[index]}' cannot be read ({type(exc).__name__}: {exc}); "
                "check the file and its folder"
            ) from None

    def subset(self, indices) -> ImageFiles:
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        paths = [self.paths[i] for i in indices]
        return ImageFiles(self.uri, self.filesystem, self.root, paths, labels, self.classes)


def list_images(uri: str, field: str, classes: list[str] | None = None) -> ImageFiles:
    """List a folder's images (recursively). `classes`: the training folder's class names,
    which a val / test folder must have exactly."""
    import pyarrow.fs as pafs

    try:
        if "://" in uri:
            filesystem, root = pafs.FileSystem.from_uri(uri)
        else:
            from pathlib import Path

            filesystem, root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        info = filesystem.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            raise ConfigError(f"data.{field} '{uri}' is not a folder; give a folder of images")
        if isinstance(filesystem, pafs.LocalFileSystem):
            files = _local_files(root, field)
        else:  # object stores have no links
            entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
            files = [e.path for e in entries if e.type == pafs.FileType.File]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.{field} '{uri}' cannot be listed ({exc})") from None
    root = root.rstrip("/")
    paths = sorted(
        path
        for path in files
        if path.lower().endswith(IMAGE_EXTENSIONS)
        and not any(p.startswith(".") for p in path[len(root) + 1 :].split("/"))
    )
    if not paths:
        raise ConfigError(
            f"data.{field} '{uri}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "give a folder of images, or of one subfolder of images per class"
        )
    relative = [p[len(root) + 1 :] for p in paths]
    flat = [r for r in relative if "/" not in r]
    if flat and len(flat) != len(relative):
        raise ConfigError(
            f"data.{field} '{uri}' has {len(flat)} images directly in it and "
            f"{len(relative) - len(flat)} in subfolders; use one layout: all images in the "
            "folder (no labels), or one subfolder per class"
        )
    if flat:
        return ImageFiles(uri, filesystem, root, paths, None, None)
    names = [r.split("/", 1)[0] for r in relative]
    found = sorted(set(names))
    if classes is not None and found != classes:
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        what = (
            f"lacks the class folder(s) {', '.join(missing)}"
            if missing
            else f"has class folder(s) {', '.join(extra)} that data.path lacks"
        )
        raise ConfigError(
            f"data.{field} '{uri}' {what}; every split needs the training folder's classes "
            f"({', '.join(classes)})"
        )
    index = {name: i for i, name in enumerate(classes or found)}
    return ImageFiles(uri, filesystem, root, paths, [index[n] for n in names], classes or found)


def _local_files(root: str, field: str) -> list[str]:
    """Every file under local folder `root`, symbolic links followed, each folder and each
    file once, reached by its real path where it has one. pyarrow's recursive listing
    follows a link back up the tree until its depth limit (200 images listed 24,600 times
    over) and lists a file reached by two links twice; os.walk checks neither, hence this
    walk keyed by (device, inode): the real tree first, then what only links reach. One
    note line says what was passed over."""
    import os
    from collections import deque

    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    files, linked_files, loops, twice = [], [], 0, 0
    real, linked = deque([root]), deque()

    def key(path: str) -> tuple[int, int]:
        found = os.stat(path)
        return found.st_dev, found.st_ino

    while real or linked:
        folder = real.popleft() if real else linked.popleft()
        if key(folder) in seen_dirs:
            loops += 1  # a folder already listed: a loop or an alias; not again
            continue
        seen_dirs.add(key(folder))
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            try:
                if entry.is_dir():
                    (linked if entry.is_symlink() else real).append(entry.path)
                elif entry.is_file():
                    (linked_files if entry.is_symlink() else files).append(entry.path)
            except OSError:  # a dangling or unreadable link: nothing to read
                continue
    listed = []
    for path in files + linked_files:
        try:
            identity = key(path)
        except OSError:
            continue
        if identity in seen_files:
            twice += 1
            continue
        seen_files.add(identity)
        listed.append(path)
    if loops or twice:
        print(
            f"[rayssl] note: data.{field}: listed each file once; passed over {loops} "
            f"linked folder(s) already listed (a loop or an alias) and {twice} file(s) "
            "reached a second way",
            flush=True,
        )
    return listed


def decode_files(files: ImageFiles, fmt: ImageFormat, threads: int = 8) -> np.ndarray:
    """Decode every file (threads: PIL releases the GIL while decoding) to (N, C, H, W)."""
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(
            pool.map(lambda i: decode(files.read(i), files.paths[i], fmt), range(len(files.paths)))
        )
    first = arrays[0].shape
    for array, path in zip(arrays, files.paths, strict=True):
        check_size(array, path, first)
    return np.stack(arrays)


def decoded_bytes(num_images: int, shape: tuple[int, ...]) -> int:
    return num_images * math.prod(shape) * 4  # float32


def decoding_peak_bytes(num_images: int, shape: tuple[int, ...]) -> int:
    """What decoding a split in memory holds at its peak: the uint8 images, their stacked
    copy and the float32 tensor made from it (`image_folder._decode`)."""
    return num_images * math.prod(shape) * (1 + 1 + 4)


def available_memory_bytes() -> int | None:
    """This machine's available memory (Linux's MemAvailable); None where unknown.
    Hand-written: psutil would say it but is not among the installed packages."""
    try:
        for line in open("/proc/meminfo").read().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ============================================================================ streaming


class Decoder:
    """Ray Data `map_batches` function: encoded images (and their labels) in, `x` (N, C, H, W)
    uint8 and `y` int64 out. Raises `ImageDecodeError` naming a bad file or Parquet file."""

    def __init__(
        self,
        fmt: ImageFormat,
        shape: tuple[int, ...],
        *,
        bytes_column: str,
        name_column: str,
        root: str | None = None,
        classes: list[str] | None = None,
        label_column: str | None = None,
        out_columns: tuple[str, str] = ("x", "y"),
        source_prefix: str | None = None,
    ):
        """`source_prefix`: also yield column `source`, each row's name after this prefix
        (`rayssl embed`: the image's path or URI, or a Parquet file and row)."""
        self.fmt, self.shape = fmt, tuple(shape)
        self.bytes_column, self.name_column = bytes_column, name_column
        self.root = root.rstrip("/") if root else None
        self.index = {c: i for i, c in enumerate(classes)} if classes else None
        self.label_column = label_column
        self.out_columns = out_columns
        self.source_prefix = source_prefix

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = batch[self.name_column]
        arrays = []
        for data, name in zip(batch[self.bytes_column], names, strict=True):
            array = decode(data, str(name), self.fmt)
            check_size(array, str(name), self.shape)
            arrays.append(array)
        if self.label_column is not None:
            labels = np.asarray(batch[self.label_column], dtype=np.int64)
        elif self.index is not None:
            labels = np.array(
                [self.index[posixpath.relpath(str(n), self.root).split("/", 1)[0]] for n in names],
                dtype=np.int64,
            )
        else:
            labels = np.full(len(names), -1, dtype=np.int64)  # unlabeled
        out = dict(zip(self.out_columns, (np.stack(arrays), labels), strict=True))
        if self.source_prefix is not None:
            out["source"] = np.array([f"{self.source_prefix}{n}" for n in names])
        return out
