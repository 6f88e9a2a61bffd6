"""The driver's index of WebDataset shards: built (a first command) against kept from an
earlier command (`src/rayssl/data/shard_index.py`), side by side, alternating.

    python benchmarks/shard_index.py [--images 20000] [--shard-size 1000] [--rounds 3]
        [--out benchmarks/results/shard_index-2core-cpu.json]

The demo set's training images as shards (`rayssl demo-images --shards`). Each round lists
the shards (`shards.list_shards`, what `load_splits` calls) twice: with `RAYSSL_CACHE` at an
empty folder (every shard's tar headers read, as today's first command) and at the folder
the previous round filled (the kept indexes read). Both must find the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def listed(path: str, cache: str):
    from rayssl.data.shards import list_shards

    os.environ["RAYSSL_CACHE"] = cache
    started = time.perf_counter()
    samples = list_shards(path, "path")
    return time.perf_counter() - started, samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/shard_index-2core-cpu.json")
    args = parser.parse_args()
    from rayssl.data.demo import write_digit_images

    rows = []
    with tempfile.TemporaryDirectory(prefix="rayssl-shardindex-") as tmp:
        write_digit_images(f"{tmp}/shards", train=args.images, test=10, seed=0,
                           shard_size=args.shard_size)  # fmt: skip
        path, kept = f"{tmp}/shards/train", f"{tmp}/kept"
        listed(path, kept)  # fills the kept folder
        for round_ in range(args.rounds):
            built_s, built = listed(path, f"{tmp}/empty-{round_}")
            kept_s, from_cache = listed(path, kept)
            assert (built.refs, built.labels) == (from_cache.refs, from_cache.labels)
            rows.append({"built_s": round(built_s, 3), "kept_s": round(kept_s, 3)})
            print(json.dumps(rows[-1]), flush=True)
        samples, shards = len(built.refs), len(built.shards)
    medians = {k: statistics.median(r[k] for r in rows) for k in ("built_s", "kept_s")}
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPUs",
        "samples": samples,
        "shards": shards,
        "rounds": rows,
        "median_s": medians,
        "built_us_per_sample": round(1e6 * medians["built_s"] / samples, 1),
        "kept_us_per_sample": round(1e6 * medians["kept_s"] / samples, 1),
        "built_over_kept": round(medians["built_s"] / medians["kept_s"], 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
