"""Start-up: `rayssl train` command start -> first optimizer step, local mode and workers.

Runs `rayssl train configs/supervised_mnist1d.yaml --set epochs=1` N times per mode as real
subprocesses (each starts its own Python and, with workers, its own local Ray) and reads
`start_to_first_step_s` from each run's summary.json (time.time() at the first optimizer
step minus time.time() when the CLI module started). Prints every run and the median per
mode; writes JSON.

    python benchmarks/startup.py                       # 5 runs each of num_workers 0 and 2
    python benchmarks/startup.py --workers 0 --runs 3
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


def one_run(workers: int, storage: str) -> dict[str, float]:
    started = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rayssl.cli",
            "train",
            str(ROOT / "configs" / "supervised_mnist1d.yaml"),
            "--set",
            "epochs=1",
            "--set",
            f"num_workers={workers}",
            "--set",
            f"storage_path={storage}",
        ],
        check=True,
        capture_output=True,
    )
    wall = time.time() - started
    (summary,) = sorted(Path(storage).glob("*/summary.json"))[-1:]
    return {
        "start_to_first_step_s": json.loads(summary.read_text())["start_to_first_step_s"],
        "whole_command_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="startup.json")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for workers in args.workers:
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="rayssl-startup-") as storage:
                runs.append(one_run(workers, storage))
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
