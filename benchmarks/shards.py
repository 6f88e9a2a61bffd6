"""WebDataset shards against the same images as files: the driver's index of the shards
against its listing of the folder, and Ray Data's training stream (read + decode, as a
worker's shard would receive it) in images/s, side by side in one run, alternating.

The demo set's training images are written twice with the same seed (so the same PNGs):
as class folders and as shards (`rayssl demo-images --shards`). Each round lists / indexes
both (`load_splits` with `in_memory: false`) and streams every training row once.

    python benchmarks/shards.py                      # 4,000 images, shards of 500, 3 rounds
    python benchmarks/shards.py --images 20000 --shard-size 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_pass(name: str, path: str) -> dict[str, float]:
    from rayssl.config.data import DataConfig
    from rayssl.data import load_splits

    cfg = DataConfig(
        name=name, path=path, in_memory=False, val_fraction=0, batch_size=64, probe_samples=16
    )
    # the index as a first command builds it: no shard index kept from an earlier pass
    # (benchmarks/shard_index.py measures the kept one)
    os.environ["RAYSSL_CACHE"] = tempfile.mkdtemp(prefix="rayssl-cache-")
    started = time.perf_counter()
    splits = load_splits(cfg, 0)
    listed = time.perf_counter() - started
    started, rows = time.perf_counter(), 0
    for batch in splits.stream.dataset().iter_batches(batch_size=256):
        rows += len(batch["y"])
    streamed = time.perf_counter() - started
    return {"list_s": listed, "rows": rows, "stream_s": streamed, "images_per_s": rows / streamed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/shards-2core-cpu.json"))
    args = parser.parse_args()

    import ray

    from rayssl.data.demo import write_digit_images

    with tempfile.TemporaryDirectory(prefix="rayssl-shards-") as tmp:
        write_digit_images(f"{tmp}/folder", train=args.images, test=10, seed=0)
        write_digit_images(
            f"{tmp}/shards", train=args.images, test=10, seed=0, shard_size=args.shard_size
        )
        ray.init(include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        one_pass("images", f"{tmp}/folder/train")  # warm-up: Ray Data's workers started
        rounds = {"images": [], "webdataset": []}
        for _ in range(args.rounds):
            for name, path in (("images", "folder"), ("webdataset", "shards")):
                rounds[name].append(one_pass(name, f"{tmp}/{path}/train"))
                print(name, json.dumps(rounds[name][-1]), flush=True)
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("list_s", "images_per_s")}
        for name, runs in rounds.items()
    }
    ratio = medians["webdataset"]["images_per_s"] / medians["images"]["images_per_s"]
    result = {
        "command": "python benchmarks/shards.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "images": args.images,
        "shard_size": args.shard_size,
        "rounds": rounds,
        "median": medians,
        "stream_ratio_shards_over_files": ratio,
    }
    print(json.dumps({"median": medians, "stream_ratio_shards_over_files": ratio}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
