"""Start-up: `rayssl train` command start -> first optimizer step, local mode and workers.

Runs `rayssl train configs/supervised_mnist1d.yaml --set epochs=1` N times per mode as real
subprocesses (each starts its own Python and, with workers, its own local Ray) and reads
`start_to_first_step_s` from each run's summary.json (time.time() at the first optimizer
step minus time.time() when the CLI module started). Prints every run and the median per
mode; writes JSON.

    python benchmarks/startup.py                       # 5 runs each of num_workers 0 and 2
    python benchmarks/startup.py --workers 0 --runs 3
    python benchmarks/startup.py --config configs/simclr_images.yaml --gpu --workers 0 1

With `--gpu` (`use_gpu: true`) the image demo's data must exist (`rayssl demo-images
data/digits32`); one epoch of it also shows what a run costs after its first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(workers: int, storage: str, config: str, gpu: bool) -> dict[str, float]:
    sets = ["epochs=1", f"num_workers={workers}", f"storage_path={storage}"]
    if gpu:
        sets.append("use_gpu=true")
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(ROOT / config)]
        + [arg for s in sets for arg in ("--set", s)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    wall = time.time() - started
    (summary,) = sorted(Path(storage).glob("*/summary.json"))[-1:]
    s = json.loads(summary.read_text())
    return {
        "start_to_first_step_s": s["start_to_first_step_s"],
        "train_wall_s": s["wall_time_s"],
        "whole_command_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="startup.json")
    parser.add_argument("--config", default="configs/supervised_mnist1d.yaml")
    parser.add_argument("--gpu", action="store_true", help="use_gpu: true")
    args = parser.parse_args()
    results: dict[str, dict] = {"config": args.config, "use_gpu": args.gpu}
    for workers in args.workers:
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="rayssl-startup-") as storage:
                runs.append(one_run(workers, storage, args.config, args.gpu))
            last = runs[-1]
            print(
                f"num_workers={workers} run {i + 1}: first step after "
                f"{last['start_to_first_step_s']:.1f} s, command {last['whole_command_s']:.1f} s",
                flush=True,
            )
        median = statistics.median(r["start_to_first_step_s"] for r in runs)
        results[f"num_workers={workers}"] = {"runs": runs, "median_start_to_first_step_s": median}
        print(f"num_workers={workers}: median start -> first step {median:.1f} s", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
