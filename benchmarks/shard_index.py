"""The index of WebDataset shards: built (a first command) against kept from an earlier
command (`src/rayssl/data/shard_index.py`), and built in the driver's threads against built
in Ray tasks, side by side, alternating.

    python benchmarks/shard_index.py [--images 20000] [--shard-size 1000] [--rounds 3]
        [--ray-cpus 2] [--out benchmarks/results/shard_index-2core-cpu.json]

The demo set's training images as shards (`rayssl demo-images --shards`). Each round lists
the shards (`shards.list_shards`, what `load_splits` calls): with `RAYSSL_CACHE` at an
empty folder (every shard's tar headers read, as a first command) in the driver's threads,
then (with `--ray-cpus N`) in Ray tasks of a local Ray of N logical CPUs started and warmed
before the rounds (what a command connected to a Ray does), and at the folder filled
before the rounds (the kept indexes read). All must find the same samples.
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


def listed(path: str, cache: str, tasks: bool = False):
    import rayssl.data.shard_index as shard_index
    from rayssl.data.shards import list_shards

    os.environ["RAYSSL_CACHE"] = cache
    connected = shard_index.ray_tasks_can_index
    if not tasks:  # the driver's threads, though this process is connected to a Ray
        shard_index.ray_tasks_can_index = lambda local: False
    try:
        started = time.perf_counter()
        samples = list_shards(path, "path")
        return time.perf_counter() - started, samples
    finally:
        shard_index.ray_tasks_can_index = connected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=0, help="0: no Ray tasks side")
    parser.add_argument("--out", default="benchmarks/results/shard_index-2core-cpu.json")
    args = parser.parse_args()
    from rayssl.data.demo import write_digit_images

    rows = []
    with tempfile.TemporaryDirectory(prefix="rayssl-shardindex-") as tmp:
        write_digit_images(f"{tmp}/shards", train=args.images, test=10, seed=0,
                           shard_size=args.shard_size)  # fmt: skip
        path, kept = f"{tmp}/shards/train", f"{tmp}/kept"
        listed(path, kept)  # fills the kept folder
        if args.ray_cpus:
            import ray

            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            listed(path, f"{tmp}/warm", tasks=True)  # Ray's worker processes started
        for round_ in range(args.rounds):
            built_s, built = listed(path, f"{tmp}/empty-{round_}")
            row = {"built_s": round(built_s, 3)}
            if args.ray_cpus:
                tasks_s, in_tasks = listed(path, f"{tmp}/tasks-{round_}", tasks=True)
                assert (built.refs, built.labels) == (in_tasks.refs, in_tasks.labels)
                row["built_in_ray_tasks_s"] = round(tasks_s, 3)
            kept_s, from_cache = listed(path, kept)
            assert (built.refs, built.labels) == (from_cache.refs, from_cache.labels)
            rows.append({**row, "kept_s": round(kept_s, 3)})
            print(json.dumps(rows[-1]), flush=True)
        samples, shards = len(built.refs), len(built.shards)
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
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
    if args.ray_cpus:
        result["ray_cpus"] = args.ray_cpus
        result["threads_over_ray_tasks"] = round(
            medians["built_s"] / medians["built_in_ray_tasks_s"], 2
        )
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
