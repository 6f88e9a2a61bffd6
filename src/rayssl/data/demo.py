"""An offline image set for demos and tests: scikit-learn's 8x8 digits rendered as 32x32
RGB PNGs in ImageFolder layout.

Two presets. The default is fair to the method: shape carries the label and colour is a
nuisance that colour jitter and grayscale views teach a network to ignore. Each image is a
digit 20-24 pixels tall near the centre (+-2 pixels), light ink on a dark, gently noisy,
flat background, ink and background each of a random hue. `hard` adds the nuisances that
make a raw-pixel classifier fail: sizes 14-26 anywhere in the frame, a two-colour gradient
background and an ink of any colour far enough from it (lighter or darker).

Test images come from digits that no training image uses (the first 80% of the shuffled
1,797 digits render the train split, the rest the test split), and each split uses every
one of its source digits once before any repeats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIDE = 32


def _place(digit: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    """A (32, 32) ink mask in [0, 1]: the (8, 8) digit resized to `size` at (top, left)."""
    from PIL import Image

    glyph = Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[top : top + size, left : left + size] = np.asarray(glyph, np.float32) / 255
    return mask


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One fair (32, 32, 3) uint8 image of an (8, 8) digit in [0, 1]: light ink of a random
    hue on a dark, flat, gently noisy background of another."""
    size = int(rng.integers(20, 25))
    centre = (SIDE - size) // 2
    top, left = (centre + rng.integers(-2, 3, size=2)).clip(0, SIDE - size)
    mask = _place(digit, size, int(top), int(left))[..., None]
    background = rng.uniform(0.0, 0.3, size=3) + rng.normal(0, 0.02, size=(SIDE, SIDE, 3))
    ink = rng.uniform(0.65, 1.0, size=3)
    image = background * (1 - mask) + ink * mask
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def render_hard(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One hard (32, 32, 3) image: random size and place, gradient background, any ink."""
    size = int(rng.integers(14, 27))
    top, left = rng.integers(0, SIDE - size + 1, size=2)
    mask = _place(digit, size, int(top), int(left))[..., None]
    # background: a gradient between two random colours, in a random direction, plus noise
    a, b = rng.uniform(0, 1, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    t = np.clip((np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2, 0, 1)[..., None]
    background = a * (1 - t) + b * t + rng.normal(0, 0.04, size=(SIDE, SIDE, 3))
    # ink: a random colour far enough from the background's mean to stay legible
    ink = rng.uniform(0, 1, size=3)
    while np.abs(ink - background.mean((0, 1))).sum() < 0.6:
        ink = rng.uniform(0, 1, size=3)
    image = background * (1 - mask) + ink * mask
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def each_once_then_repeat(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` picks from `pool`: every element once (in a random order) before any twice."""
    rounds = -(-count // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]


def write_digit_images(
    out: str | Path,
    train: int = 5000,
    test: int = 1000,
    seed: int = 0,
    hard: bool = False,
    size: int = SIDE,
    image_format: str = "png",
    on_image: Callable[[], None] | None = None,
    shard_size: int | None = None,
) -> dict[str, dict[str, int]]:
    """Write `out/train/<digit>/*.png` and `out/test/<digit>/*.png`; returns, per split, the
    number of images and of distinct source digits they show. `size`: each 32x32 image
    resized (bicubic) to size x size, as the full-size pictures a real cluster reads;
    `image_format` "jpeg" encodes them as JPEG (PIL, quality 90) instead of PNG;
    `on_image` is called after each image is written (the CLI's progress bar).
    `shard_size`: write WebDataset shards instead (`out/<split>/shard-000000.tar`, ...,
    each of at most `shard_size` samples `<digit>_<index>.png` + `.cls`, in a seeded order
    across the classes), through webdataset's own `ShardWriter`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    cut = int(0.8 * len(order))
    pools = {"train": order[:cut], "test": order[cut:]}
    draw = render_hard if hard else render
    suffix = {"png": "png", "jpeg": "jpg"}[image_format]
    out = Path(out)
    written = {}
    for split, count in (("train", train), ("test", test)):
        for label in range(10) if shard_size is None else ():  # every class's folder
            (out / split / str(label)).mkdir(parents=True, exist_ok=True)
        picks = each_once_then_repeat(pools[split], count, rng)
        labels = [int(digits.target[index]) for index in picks]
        pictures = (
            _encoded(draw(digits.images[index] / 16.0, rng), size, suffix) for index in picks
        )
        with _writer(out / split, suffix, shard_size) as write:
            for i, (label, data) in enumerate(zip(labels, pictures, strict=True)):
                write(f"{label}_{i:06d}" if shard_size else f"{label}/{i:06d}", data, label)
                if on_image is not None:
                    on_image()
        written[split] = {"images": count, "source_digits": len(set(picks.tolist()))}
    return written


def _encoded(image: np.ndarray, size: int, suffix: str) -> bytes:
    import io

    from PIL import Image

    picture = Image.fromarray(image)
    if size != SIDE:
        picture = picture.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90) if suffix == "jpg" else picture.save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@contextlib.contextmanager
def _writer(folder: Path, suffix: str, shard_size: int | None):
    """`write(name, data, label)`: a file `folder/<name>.<suffix>`, or a shard sample."""
    folder.mkdir(parents=True, exist_ok=True)
    if shard_size is None:

        def write(name: str, data: bytes, label: int) -> None:
            path = folder / f"{name}.{suffix}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)

        yield write
        return
    import webdataset

    pattern = str(folder / "shard-%06d.tar")
    with webdataset.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        yield lambda key, data, label: sink.write({"__key__": key, suffix: data, "cls": label})
