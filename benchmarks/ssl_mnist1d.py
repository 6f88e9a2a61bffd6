"""Self-supervised methods on MNIST-1D as a user runs them: `rayssl train
configs/<method>_mnist1d.yaml` for each method named, then the run's probes (kNN and the
standardised linear probe, fitted on the training split, scored on test) and wall time from
its summary.json.

    python benchmarks/ssl_mnist1d.py barlow_twins vicreg moco simsiam \
        [--out benchmarks/results/ssl_mnist1d-2core-cpu.json]
    python benchmarks/ssl_mnist1d.py swav --set swav.num_prototypes=3000   # a variant row

A row run with `--set` overrides is kept beside the config's own row (keyed by method and
overrides).

About 5 minutes per method on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--out", default="benchmarks/results/ssl_mnist1d-2core-cpu.json")
    parser.add_argument("--storage", default="runs/ssl_mnist1d")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    storage = ROOT / args.storage
    rows = []
    for method in args.methods:
        config = f"configs/{method}_mnist1d.yaml"
        started = time.time()
        subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", config,
             "--set", f"storage_path={storage}",
             *[arg for o in args.overrides for arg in ("--set", o)]],
            cwd=ROOT,
            check=True,
        )  # fmt: skip
        wall = time.time() - started
        summary = json.loads(
            sorted(storage.glob(f"{method}_mnist1d-*/summary.json"))[-1].read_text()
        )
        history = summary["history"]
        probes = [
            {"epoch": h["epoch"], "linear_acc": h["linear_acc"], "knn_acc": h["knn_acc"]}
            for h in history
            if "knn_acc" in h
        ]
        row = {
            "method": method,
            "command": " ".join(["rayssl train", config, *[f"--set {o}" for o in args.overrides]]),
            **({"overrides": args.overrides} if args.overrides else {}),
            "epochs": summary["epochs_run"],
            "linear_acc": probes[-1]["linear_acc"],
            "knn_acc": probes[-1]["knn_acc"],
            "probes_along_the_way": probes,
            "command_wall_s": round(wall, 1),
            "train_wall_s": round(summary["wall_time_s"], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = ROOT / args.out
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    ran = {(r["method"], tuple(r.get("overrides", []))) for r in rows}
    kept = [r for r in previous if (r["method"], tuple(r.get("overrides", []))) not in ran]
    result = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "rows": kept + rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
