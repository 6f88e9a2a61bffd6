"""What glibc's malloc settings of the training processes (cluster/start.py: ALLOCATOR_ENV)
cost in memory: rayssl's Loop stepping in a thread of its own (as in a Ray Train worker),
its resident memory and peak every 8 steps, with glibc as it comes and with the settings,
each in a fresh process.

    python benchmarks/allocator_rss.py --method mae --batch-size 64 --epochs 6

One torch thread; the demo's 512-image set (`data/digits512`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def memory_mb() -> tuple[int, int]:
    """(resident, peak resident) of this process, MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line.split(":")[0]] = int(line.split()[1]) // 1024
    return found["VmRSS"], found["VmHWM"]


def side(method: str, batch: int, epochs: int) -> dict:
    """One process's rows: the Loop stepped in a thread, memory every 8 steps."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput
    import torch

    from rayssl.data import load_splits
    from rayssl.engine import Loop
    from rayssl.methods.registry import build_method
    from rayssl.seeds import seed_everything

    torch.set_num_threads(1)
    extra = ["data.path=data/digits512/train", "data.test_path=null", f"data.batch_size={batch}"]
    cfg = throughput.bench_config(method, 1, "/tmp/rayssl-allocator-rss", extra)
    cfg = cfg.model_copy(update={"num_workers": 1})
    splits = load_splits(cfg.data, cfg.seed)
    rows: list = []

    def steps() -> None:
        seed_everything(cfg.seed)
        loop = Loop(build_method(cfg, splits.sample_shape, splits.num_classes), splits, cfg)
        for _ in range(epochs):
            loop.start_epoch()
            for _ in loop.iterate():
                rows.append(memory_mb())

    thread = threading.Thread(target=steps)
    thread.start()
    thread.join()
    every = [{"step": i + 1, "rss_mb": r, "peak_mb": p} for i, (r, p) in enumerate(rows)]
    return {"steps": every[7::8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="mae")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="allocator_rss.json")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.method, args.batch_size, args.epochs)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    from rayssl.cluster.start import ALLOCATOR_ENV

    plain = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result: dict = {"command": "python benchmarks/allocator_rss.py " + " ".join(sys.argv[1:])}
    for name, env in (("glibc_defaults", plain), ("allocator_env", {**plain, **ALLOCATOR_ENV})):
        done = subprocess.run(
            [sys.executable, __file__, "--side", "--method", args.method,
             "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
        last = result[name]["steps"][-1]
        print(f"{name}: after step {last['step']} resident {last['rss_mb']} MB, "
              f"peak {last['peak_mb']} MB", flush=True)  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
