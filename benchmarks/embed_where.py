"""Where `rayssl embed`'s CPU goes on this machine, beside what the network alone allows.

    python benchmarks/embed_where.py [--images 4000] [--side 224]
        [--out benchmarks/results/embed_where-2core-cpu.json]

- the network alone: torchvision's ResNet-18 (its ImageNet stem, the classifier removed)
  on random batches of 64 at `--side` px in plain processes: one thread, two threads, and
  two one-thread processes started together (the ceiling of two actors of one CPU).
- `rayssl embed` with 2 actors over `--images` JPEGs from `rayssl demo-images` (a ResNet-18
  run trained one short epoch, as `embed_scale.py`), every process's CPU seconds sampled
  from /proc every 0.25 s until the command exits, grouped by what the process is (the
  actors, the driver, Ray's other processes), and the manifest's `wall_s` and `first_rows_s`.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from embed_scale import train_source  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def network_rate(threads: int, side: int, queue=None, batches: int = 4) -> float:
    import torchvision

    torch.set_num_threads(threads)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.eval()
    x = torch.rand(64, 3, side, side)
    with torch.no_grad():
        model(x)  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
    rate = batches * 64 / (time.perf_counter() - started)
    if queue is not None:
        queue.put(rate)
    return rate


def network(side: int) -> dict[str, float]:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    two = [spawn.Process(target=network_rate, args=(1, side, queue)) for _ in range(2)]
    for p in two:
        p.start()
    for p in two:
        p.join()
    return {
        "one_thread": round(network_rate(1, side), 1),
        "two_threads": round(network_rate(2, side), 1),
        "two_processes_one_thread_each": round(queue.get() + queue.get(), 1),
    }


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        seen[int(pid)] = (cmd, (int(fields[11]) + int(fields[12])) / TICK)
    return seen


def _kind(cmd: str, driver: int, pid: int) -> str:
    if pid == driver:
        return "driver (rayssl embed)"
    if "MapWorker" in cmd:
        return "actors (decode and network)"
    if cmd.startswith("ray::"):
        return "Ray's workers and actors (" + cmd.split()[0][5:].split("(")[0] + ")"
    return "Ray's services (raylet, GCS, agents, log monitor)" if "ray" in cmd else "other"


def sampled_embed(source: str, data: Path, out: Path) -> dict:
    """`rayssl embed --actors 2`, every process's CPU time sampled until it exits."""
    before = _cpu_by_process()
    last = dict(before)
    started = time.perf_counter()
    command = [sys.executable, "-m", "rayssl.cli", "embed", source, str(data), "--out",
               str(out), "--actors", "2", "--batch-size", "64"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        time.sleep(0.25)
        for pid, (cmd, cpu) in _cpu_by_process().items():
            # an exiting process (a zombie) reads an empty command line: keep its name
            last[pid] = (cmd or last.get(pid, ("", 0.0))[0], cpu)
    wall = time.perf_counter() - started
    groups: collections.Counter = collections.Counter()
    for pid, (cmd, cpu) in last.items():
        used = cpu - before.get(pid, (cmd, 0.0))[1]
        if used > 0.05 and "embed_where" not in cmd:
            groups[_kind(cmd, process.pid, pid)] += used
    manifest = json.loads((out / "_rayssl-embeddings.json").read_text())
    return {
        "command_s": round(wall, 1),
        "job_s": manifest["wall_s"],
        "first_rows_s": manifest.get("first_rows_s"),
        "cpu_s": {k: round(v, 1) for k, v in groups.most_common()},
        "cpu_s_total": round(sum(groups.values()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--out", default="benchmarks/results/embed_where-2core-cpu.json")
    args = parser.parse_args()
    from rayssl.data.demo import write_digit_images

    result = {"command": "python " + " ".join(sys.argv), "machine": "2-core CPU"}
    result["network_images_per_s"] = network(args.side)
    print(json.dumps(result["network_images_per_s"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="rayssl-embedwhere-") as tmp:
        work = Path(tmp)
        write_digit_images(work / "set", train=args.images, test=10, seed=0, size=args.side,
                           image_format="jpeg")  # fmt: skip
        data = work / "set" / "train"
        source = train_source(data, work, {"name": "resnet18", "stem": "imagenet"}, args.side)
        result["rayssl_embed_2_actors"] = sampled_embed(source, data, work / "out")
    print(json.dumps(result["rayssl_embed_2_actors"], indent=2), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
