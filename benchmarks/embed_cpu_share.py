"""Where the CPU goes in one `rayssl embed` job: CPU seconds of every process it starts.

    python benchmarks/embed_cpu_share.py [--images 4000] [--actors 2]
        [--out benchmarks/results/embed_cpu_share-2core-cpu.json]

`--images` 224-px JPEGs from `rayssl demo-images` and the backbone of `embed_scale.py`
(ResNet-18 with its ImageNet stem, one short epoch). While `rayssl embed` runs with
`--actors` actors (one CPU, one torch thread each, batch 64), every process that was not
running before is sampled from /proc every 0.3 s (user + system time, and its title, which
Ray sets to `ray::<what it runs>`); the rows sum the last sample of each process by
title. Beside it, in this process: the network alone, channels_last, one torch thread, on
random batches of 64 (ms per image), what an actor's work per image cannot go below.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import embed_scale  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[str, float]]:
    """Every process's title (its command line) and CPU seconds so far."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            title = Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        found[int(entry)] = (title, (int(fields[11]) + int(fields[12])) / TICK)
    return found


def by_title(seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    groups: dict[str, float] = collections.defaultdict(float)
    for title, cpu in seen.values():
        name = "driver (rayssl embed)" if "rayssl.cli embed" in title else title.split(" ")[0]
        groups[name[:70]] += cpu
    return {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def network_alone(source: str, batches: int = 3) -> float:
    """ms per image of the backbone on one thread, channels_last, batches of 64."""
    from rayssl.runs.pretrained import read, rebuild

    torch.set_num_threads(1)
    backbone = read(source)
    module = rebuild(backbone, source).eval().to(memory_format=torch.channels_last)
    x = torch.rand(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        module(x)
        started = time.perf_counter()
        for _ in range(batches):
            module(x)
    return round(1000 * (time.perf_counter() - started) / (batches * 64), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/embed_cpu_share-2core-cpu.json")
    args = parser.parse_args()
    from rayssl.data.demo import write_digit_images

    result: dict = {"command": "python " + " ".join(sys.argv), "machine": "2-core CPU"}
    with tempfile.TemporaryDirectory(prefix="rayssl-embedcpu-") as tmp:
        work = Path(tmp)
        write_digit_images(work / "set", train=args.images, test=10, seed=0, size=224,
                           image_format="jpeg")  # fmt: skip
        spec = {"name": "resnet18", "stem": "imagenet"}
        source = embed_scale.train_source(work / "set" / "train", work, spec, 224)
        before, seen, done = set(processes()), {}, threading.Event()

        def sample() -> None:
            while not done.is_set():
                for pid, (title, cpu) in processes().items():
                    if pid not in before:  # an exiting process's title reads empty
                        seen[pid] = (title or seen.get(pid, ("", 0.0))[0], cpu)
                time.sleep(0.3)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        job = embed_scale.run_embed(source, work / "set" / "train", work / "out", args.actors, 64)
        done.set()
        sampler.join()
        groups = by_title(seen)
        result["job"] = job
        result["cpu_s_by_process"] = groups
        result["cpu_s_total"] = round(sum(groups.values()), 1)
        actors = sum(v for k, v in groups.items() if k.startswith("ray::MapWorker"))
        result["actor_ms_per_image"] = round(1000 * actors / job["images"], 1)
        result["network_alone_ms_per_image_1_thread"] = network_alone(source)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
