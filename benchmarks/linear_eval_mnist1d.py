"""rayssl's linear evaluation against the standardised logistic probe on the same frozen
MNIST-1D features: pretrain SimCLR (configs/simclr_mnist1d.yaml; its run ends with the
probe), then configs/linear_eval_mnist1d.yaml on its backbone and on a random one. Both read
the same 3,600 training and 1,000 test samples.

    python benchmarks/linear_eval_mnist1d.py [--out FILE.json]
        # default: benchmarks/results/linear_eval_mnist1d-2core-cpu.json

About 8 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_images import ROOT, rayssl, summary  # noqa: E402  the same runner and summaries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/linear_eval_mnist1d-2core-cpu.json")
    parser.add_argument("--storage", default="runs/linear_eval_mnist1d")
    args = parser.parse_args()
    storage = ROOT / args.storage
    rows = []

    def run(label: str, config: str, name: str, *sets: str) -> dict:
        flags = [
            x for s in (f"storage_path={storage}", f"name={name}", *sets) for x in ("--set", s)
        ]
        wall = rayssl("train", config, *flags)
        s = summary(storage, name)
        last = {k: v for h in s["history"] for k, v in h.items()}  # the newest value of each
        row = {
            "run": label,
            "command": f"rayssl train {config} " + " ".join(flags),
            "test_accuracy": s["final_metrics"].get("test_accuracy"),
            "linear_probe_acc": last.get("linear_acc"),
            "epochs": s["epochs_run"],
            "command_wall_s": round(wall, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    run("SimCLR pretraining", "configs/simclr_mnist1d.yaml", "simclr_mnist1d")
    linear = "configs/linear_eval_mnist1d.yaml"
    run(
        "linear eval: SimCLR backbone",
        linear,
        "linear_simclr",
        f"backbone.init_from={storage}/simclr_mnist1d",
    )
    run("linear eval: random init", linear, "linear_random", "backbone.init_from=null")
    out = ROOT / args.out
    result = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
