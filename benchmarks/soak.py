"""Soak: 200 short epochs, a checkpoint every epoch, checkpoint.num_to_keep 2.

Prints, while the run goes, the run directory's size on disk and the resident memory of the
driver and the Ray Train workers, then whether both stayed bounded.

    python benchmarks/soak.py [--epochs 200] [--storage /tmp/rayssl-soak]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def rss(pid: int) -> int:
    """Resident set size from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def worker_rss() -> int:
    pids = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True)
    return sum(rss(int(pid)) for pid in pids.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="rayssl-soak-"))
    args = parser.parse_args()
    storage = Path(args.storage)
    config = storage / "soak.yaml"
    storage.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(
            {
                "name": "soak",
                "epochs": args.epochs,
                "num_workers": 2,
                "storage_path": str(storage / "runs"),
                "data": {
                    "name": "synthetic",
                    "shape": [1, 32],
                    "num_samples": 512,
                    "batch_size": 64,
                },
                "backbone": {"name": "cnn1d", "width": 16},
                "checkpoint": {"num_to_keep": 2},
            }
        )
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    samples: list[tuple[int, int, int, int]] = []  # epoch, disk bytes, worker rss, driver rss
    print(f"{'epoch':>6} {'run dir MB':>11} {'workers RSS MB':>15} {'driver RSS MB':>14}")
    for line in driver.stdout:
        if "[rayssl] epoch" not in line:
            continue
        epoch = int(line.split("[rayssl] epoch ")[1].split("/")[0])
        runs = list((storage / "runs").glob("soak-*"))
        disk = dir_bytes(runs[0]) if runs else 0
        rss_driver = rss(driver.pid)
        samples.append((epoch, disk, worker_rss(), rss_driver))
        if epoch in (1, 10) or epoch % 25 == 0:
            _, d, w, r = samples[-1]
            print(
                f"{epoch:>6} {d / 2**20:>11.2f} {w / 2**20:>15.1f} {r / 2**20:>14.1f}", flush=True
            )
    driver.wait()
    if driver.returncode != 0 or len(samples) < 20:
        sys.exit(f"soak run failed (exit {driver.returncode})")
    tenth = samples[len(samples) // 10]
    last = samples[-1]
    disk_max = max(s[1] for s in samples)
    print(
        f"\nrun directory: max {disk_max / 2**20:.2f} MB over {len(samples)} epochs "
        f"(epoch {tenth[0]}: {tenth[1] / 2**20:.2f} MB, last: {last[1] / 2**20:.2f} MB)"
    )
    growth = (last[2] - tenth[2]) / max(tenth[2], 1)
    print(
        f"workers RSS: epoch {tenth[0]} {tenth[2] / 2**20:.1f} MB -> epoch {last[0]} "
        f"{last[2] / 2**20:.1f} MB ({growth:+.1%})"
    )
    checkpoints = [
        p for p in next((storage / "runs").glob("soak-*")).glob("checkpoint_*") if p.is_dir()
    ]
    print(f"checkpoints on disk at the end: {len(checkpoints)} (num_to_keep 2)")
    bounded = disk_max < 4 * max(tenth[1], 1)
    print(f"bounded disk: {bounded}; flat memory (<10% growth): {growth < 0.10}")


if __name__ == "__main__":
    main()
