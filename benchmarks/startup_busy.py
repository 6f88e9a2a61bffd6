"""How busy the machine's cores are in each start-up phase of one 2-worker `rayssl train`.

    python benchmarks/startup_busy.py [CONFIG]     # default configs/supervised_mnist1d.yaml

Samples /proc/stat every 0.25 s while the run starts (every core of the machine: run it on
an otherwise idle machine) and prints, per phase of the run's start-up timeline
(engine/metrics.py: STARTUP_MARKS), its length and the busy share of all cores in it. A
phase well below 1.0 leaves cores idle that other start-up work could use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKS = ("imported", "checked", "ray_started", "fit_called", "worker_imported", "worker_entered",
         "data_ready", "built", "first_batch", "first_step")  # fmt: skip


def _jiffies() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(values), values[3] + values[4]


def busy_samples(done: threading.Event, out: list[tuple[float, float]]) -> None:
    """Append (time, busy share of every core over the last 0.25 s) until `done`."""
    before = _jiffies()
    while not done.wait(0.25):
        now = _jiffies()
        out.append((time.time(), 1 - (now[1] - before[1]) / max(1, now[0] - before[0])))
        before = now


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else "configs/supervised_mnist1d.yaml"
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    sampler = threading.Thread(target=busy_samples, args=(done, samples))
    sampler.start()
    with tempfile.TemporaryDirectory() as storage:
        started = time.time()
        subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", config, "--set", "epochs=1",
             "--set", f"storage_path={storage}"],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        done.set()
        sampler.join()
        first = json.loads(next(Path(storage).glob("*/summary.json")).read_text())["history"][0]
    begin = started
    for mark in MARKS:
        seconds = first.get(f"startup_{mark}_s")
        if seconds is None:
            continue
        busy = [share for at, share in samples if begin <= at < begin + seconds]
        mean = f"{sum(busy) / len(busy):.2f}" if busy else "-"
        print(f"{mark:16s} {seconds:5.2f} s  busy {mean}")
        begin += seconds


if __name__ == "__main__":
    main()
