"""Evaluation at scale, two measurements side by side in one run.

    python benchmarks/eval_scale.py [--sizes 5000 50000] [--old-src PATH]
        [--out benchmarks/results/eval_scale-2core-cpu.json]

1. The linear probe: rayssl's L-BFGS probe (`engine/probes.py`, the one that runs across
   ranks) against scikit-learn's `LogisticRegression` on standardised features, at its
   default tolerance (what rayssl used before) and converged (tol 1e-8), on the same
   features: MNIST-1D (3,600 / 1,000 of a random-init cnn1d, width 128, the demo's random
   baseline) and the demo images (5,000 / 1,000 of a random-init cnn2d, width 32, depth 4).
   Accuracies and seconds.
2. The driver's memory as a streamed image folder's test split grows: peak RSS (VmHWM) of a
   fresh process that runs `load_splits` on a `data.in_memory: false` folder with a test
   split of each size (32-px PNGs from `rayssl demo-images`), for this checkout and, with
   `--old-src`, for an older checkout's `src` (before: val / test decoded on the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def probe_rows(name: str, train, test) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from rayssl.engine.probes import linear_probe_accuracy

    row = {"set": name, "train": len(train[0]), "test": len(test[0]), "dim": train[0].shape[1]}
    for label, tol in (("sklearn_default", 1e-4), ("sklearn_converged", 1e-8)):
        started = time.perf_counter()
        fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=20000, tol=tol))
        fitted.fit(train[0].numpy(), train[1].numpy())
        row[label] = float((fitted.predict(test[0].numpy()) == test[1].numpy()).mean())
        row[f"{label}_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    row["rayssl_lbfgs"] = linear_probe_accuracy(*train, *test)
    row["rayssl_lbfgs_s"] = round(time.perf_counter() - started, 2)
    return row


def features(backbone, x: torch.Tensor) -> torch.Tensor:
    from rayssl.engine.probes import extract_features

    backbone.eval()
    return extract_features(lambda b: backbone(b).flatten(1), x, 256)


def probe_benchmark(images: Path) -> list[dict]:
    from rayssl import nets, seeds
    from rayssl.config import DataConfig
    from rayssl.data import input_normalizer, load_splits

    rows = []
    for name, data, spec in (
        ("mnist1d", DataConfig(name="mnist1d", val_fraction=0.1), ("cnn1d", {"width": 128})),
        (
            "demo images",
            DataConfig(
                name="images",
                path=str(images / "train"),
                test_path=str(images / "test"),
                val_fraction=0,
                normalize="dataset",
            ),
            ("cnn2d", {"width": 32, "depth": 4}),
        ),
    ):
        splits = load_splits(data, 0)
        seeds.seed_everything(0)
        backbone = nets.BACKBONES[spec[0]](splits.sample_shape, **spec[1])
        normalize = input_normalizer(data, splits) or (lambda x: x)
        train = (features(backbone, normalize(splits.train[0])), splits.train[1])
        test = (features(backbone, normalize(splits.test[0])), splits.test[1])
        rows.append(probe_rows(name, train, test))
        print(json.dumps(rows[-1]), flush=True)
    return rows


MEASURE = """
import resource, sys
from rayssl.config import DataConfig
from rayssl.data import load_splits
cfg = DataConfig(name="images", path=sys.argv[1], test_path=sys.argv[2], in_memory=False,
                 val_fraction=0, probe_samples=256, batch_size=64)
splits = load_splits(cfg, 0)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(peak) * 1024)
"""


def memory_benchmark(sizes: list[int], old_src: str | None, work: Path) -> list[dict]:
    from rayssl.data.demo import write_digit_images

    train = work / "train_set"
    write_digit_images(train, train=2000, test=10, seed=0)
    rows = []
    for size in sizes:
        folder = work / f"test_{size}"
        write_digit_images(folder, train=10, test=size, seed=1)
        row = {"test_images": size}
        for label, src in (("now", str(ROOT / "src")), ("before", old_src)):
            if src is None:
                continue
            env = {**os.environ, "PYTHONPATH": src}
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, str(train / "train"), str(folder / "test")],
                env=env,
                capture_output=True,
                text=True,
            )
            out = done.stdout.strip().splitlines()
            row[f"driver_peak_mb_{label}"] = (
                round(int(out[-1]) / 2**20, 1) if done.returncode == 0 and out else None
            )
            if done.returncode != 0:
                row[f"error_{label}"] = (done.stderr.strip().splitlines() or ["?"])[-1][:200]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--old-src", default=None)
    parser.add_argument("--out", default="benchmarks/results/eval_scale-2core-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from rayssl.data.demo import write_digit_images

        write_digit_images(work / "demo", train=5000, test=1000, seed=0)
        result = {
            "command": "python " + " ".join(sys.argv),
            "machine": "2-core CPU",
            "linear_probe": probe_benchmark(work / "demo"),
            "driver_memory": memory_benchmark(args.sizes, args.old_src, work),
        }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
