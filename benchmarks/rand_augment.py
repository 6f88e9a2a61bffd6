"""MAE's fine-tuning views per image: rayssl's batched views against timm's transform.

    python benchmarks/rand_augment.py [--side 224] [--batch 64] [--rounds 5]
        [--out benchmarks/results/rand_augment-2core-cpu.json]

Both make, from decoded images of `--side` px, the training view of MAE's (and DeiT's)
fine-tuning: a random resized crop (8-100 % of the area) to `--side`, a flip (p 0.5),
RandAugment rand-m9-mstd0.5-inc1, normalisation with ImageNet's statistics and random
erasing (p 0.25, pixel noise):

- timm: `create_transform(..., auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
  re_mode="pixel")`, the call in MAE's `util/datasets.py`, on one PIL image at a time (what
  each DataLoader process does), then stacked;
- rayssl: `ImageViews` with `rand_augment` on the whole float batch, then its channel
  normaliser and `random_erase` (what a training worker does, on its CPU).

One torch thread, one process; medians of `--rounds` passes over the same images (a warm
pass first). Also rayssl's views without RandAugment and erasing, for their share, and its
parts: each RandAugment op on the whole batch at magnitude 9, erasing in its two forms (the
CPU's noise per erased box, the sync-free form's noise for every pixel), and the costs this
benchmark found: sharpness's filter as torchvision's depthwise convolution against shifted
sums, and normalisation as two passes against one fused addcmul.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images(count: int, side: int) -> np.ndarray:
    """Smooth random colour fields with edges (not noise: the ops' costs do not depend on
    content, but equalize's and autocontrast's results do)."""
    g = np.random.default_rng(0)
    low = g.integers(0, 256, (count, 8, 8, 3)).astype(np.uint8)
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(a).resize((side, side))) for a in low])


def timm_views(batch: np.ndarray, side: int) -> float:
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(
        side,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=MEAN,
        std=STD,
    )
    pils = [Image.fromarray(a) for a in batch]
    # timm draws from Python's RNG; seeded, every pass draws the same ops. (A draw whose
    # magnitude noise reaches 10 asks PIL to posterize to 0 bits, which Pillow 13 refuses:
    # timm 1.0.31 raises there; this seed draws none.)
    random.seed(0)
    started = time.perf_counter()
    torch.stack([transform(p) for p in pils])
    return time.perf_counter() - started


def rayssl_views(batch: np.ndarray, side: int, full: bool) -> float:
    from rayssl.config import EraseConfig, ImageViewsConfig
    from rayssl.data.datasets import channel_normalizer
    from rayssl.data.erasing import random_erase
    from rayssl.data.image_views import ImageViews

    image = {"size": side, "crop_scale": (0.08, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0}
    image.update(blur_p=0.0, rand_augment={} if full else None)
    views = ImageViews(ImageViewsConfig(**image))
    normalize = channel_normalizer((torch.tensor(MEAN), torch.tensor(STD)), 3)
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # decoded HWC, as the stream hands it
    started = time.perf_counter()
    out = normalize(views(x.float() / 255, g))
    if full:
        random_erase(out, EraseConfig(p=0.25), g)
    return time.perf_counter() - started


def _ms(fn, count: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times) / count, 3)


def parts(batch: np.ndarray, rounds: int) -> dict:
    """ms per image of rayssl's parts, and of the alternatives they replaced."""
    import torch.nn.functional as F

    from rayssl.config import EraseConfig
    from rayssl.data import rand_augment
    from rayssl.data.erasing import random_erase

    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).contiguous()
    n = len(x)
    level, sign = torch.full((n,), 0.9), torch.ones(n)
    out = {f"op {name}": _ms(lambda f=f: f(x, level, sign), n, rounds)
           for name, f in rand_augment.FUNCTIONS.items()}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    cfg = EraseConfig(p=0.25)
    out["erase, noise per box (CPU form)"] = _ms(lambda: random_erase(x, cfg, g, False), n, rounds)
    out["erase, noise everywhere (sync-free form)"] = _ms(
        lambda: random_erase(x, cfg, g, True), n, rounds
    )
    kernel = torch.full((3, 1, 3, 3), 1 / 13)
    kernel[:, :, 1, 1] = 5 / 13
    out["smooth filter, depthwise conv (torchvision's)"] = _ms(
        lambda: F.conv2d(x, kernel, groups=3), n, rounds
    )

    def shifted_sums():
        rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
        return (
            rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * x[..., 1:-1, 1:-1]
        ) / 13

    out["smooth filter, shifted sums (rayssl's)"] = _ms(shifted_sums, n, rounds)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out["normalise, (x - mean) / std"] = _ms(lambda: (x - mean) / std, n, rounds)
    scale, shift = 1 / std, -mean / std
    out["normalise, addcmul (rayssl's)"] = _ms(lambda: torch.addcmul(shift, x, scale), n, rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/rand_augment-2core-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = images(args.batch, args.side)
    runs = {
        "timm_transform": lambda: timm_views(batch, args.side),
        "rayssl_views": lambda: rayssl_views(batch, args.side, full=True),
        "rayssl_crop_flip_only": lambda: rayssl_views(batch, args.side, full=False),
    }
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm: imports, first allocations
    for _ in range(args.rounds):  # interleaved, so a machine's drift touches each alike
        for name, run in runs.items():
            times[name].append(run())
    ms = {name: round(1000 * statistics.median(t) / args.batch, 3) for name, t in times.items()}
    result = {
        "what": "MAE's fine-tuning view (crop, flip, RandAugment m9 mstd0.5, normalise, "
        "erase p 0.25) per image, one torch thread",
        "command": f"python benchmarks/rand_augment.py --side {args.side} --batch "
        f"{args.batch} --rounds {args.rounds}",
        "machine": f"{platform.machine()} {torch.get_num_threads()} thread, torch "
        f"{torch.__version__}",
        "ms_per_image": ms,
        "timm_over_rayssl": round(ms["timm_transform"] / ms["rayssl_views"], 2),
        "parts_ms_per_image": parts(batch, args.rounds),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
