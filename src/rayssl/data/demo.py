"""An offline image set for demos and tests: scikit-learn's 8x8 digits rendered as 32x32
RGB PNGs in ImageFolder layout, each with a random size, position, ink colour and
background (a colour gradient plus noise), so that crops and colour jitter matter.

Test images come from digits that no training image uses (the first 80% of the shuffled
1,797 digits render the train split, the rest the test split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 32


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (32, 32, 3) uint8 image of an (8, 8) digit in [0, 1]."""
    from PIL import Image

    size = int(rng.integers(14, 27))
    glyph = Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    mask = np.zeros((SIDE, SIDE), np.float32)
    top, left = rng.integers(0, SIDE - size + 1, size=2)
    mask[top : top + size, left : left + size] = np.asarray(glyph, np.float32) / 255
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
    image = background * (1 - mask[..., None]) + ink * mask[..., None]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_digit_images(
    out: str | Path, train: int = 5000, test: int = 1000, seed: int = 0
) -> dict[str, int]:
    """Write `out/train/<digit>/*.png` and `out/test/<digit>/*.png`; returns the counts."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    cut = int(0.8 * len(order))
    pools = {"train": order[:cut], "test": order[cut:]}
    out = Path(out)
    for split, count in (("train", train), ("test", test)):
        for label in range(10):
            (out / split / str(label)).mkdir(parents=True, exist_ok=True)
        picks = rng.choice(pools[split], size=count, replace=count > len(pools[split]))
        for i, index in enumerate(picks):
            image = render(digits.images[index] / 16.0, rng)
            label = int(digits.target[index])
            Image.fromarray(image).save(out / split / str(label) / f"{i:06d}.png")
    return {"train": train, "test": test}
