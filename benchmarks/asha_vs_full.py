"""ASHA against running every trial to completion, on the same sampled configurations.

Samples N configurations from a search's space (seeded), then runs the search twice through
`rayssl tune` with exactly those trials: once with the search's ASHA scheduler, once with
FIFO (every trial runs all its epochs). Prints and writes (JSON) the trial-epochs each
spent, the wall time and the best metric each found.

    python benchmarks/asha_vs_full.py                     # tune_configs/supervised_mnist1d.yaml
    python benchmarks/asha_vs_full.py tune_configs/simclr_mnist1d.yaml --samples 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rayssl.tune import load_search, run_search

ROOT = Path(__file__).resolve().parents[1]


def sample_points(search, n: int, seed: int) -> list[dict]:
    """n configurations drawn from the space's distributions with a seeded generator."""
    np.random.seed(seed)  # Tune's domains sample from numpy's global generator
    points = []
    for _ in range(n):
        point = {}
        for key, domain in search.space.items():
            value = domain.to_tune().sample()
            point[key] = value.item() if hasattr(value, "item") else value
        points.append(point)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = ROOT / "tune_configs" / "supervised_mnist1d.yaml"
    parser.add_argument("search", nargs="?", default=str(default))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="asha_vs_full.json")
    args = parser.parse_args()

    search, _ = load_search(args.search)
    points = sample_points(search, args.samples, args.seed)
    import ray

    # Start Ray once, before both searches, so that neither wall time includes its start.
    ray.init(log_to_driver=False, include_dashboard=False)
    storage = tempfile.mkdtemp(prefix="rayssl-asha-")
    results = {"search": args.search, "points": points, "runs": {}}
    for scheduler in (search.scheduler.name, "fifo"):
        started = time.time()
        out = run_search(
            args.search,
            (
                f"scheduler.name={scheduler}",
                f"num_samples={args.samples}",
                f"name=bench-{scheduler}",
                f"storage_path={storage}",
            ),
            points=points,
        )
        rows = out["rows"]
        results["runs"][scheduler] = {
            "trial_epochs": sum(r["epochs"] for r in rows),
            "stopped_early": sum(bool(r["stopped_early"]) for r in rows),
            "best": out["best"][search.metric],
            "best_params": {k: out["best"][k] for k in search.space},
            "wall_s": time.time() - started,
            # each trial's start -> its first optimizer step (the per-trial overhead)
            "trial_start_to_first_step_s": sorted(
                r["start_to_first_step_s"]
                for r in rows
                if r["start_to_first_step_s"] == r["start_to_first_step_s"]
            ),
        }
    asha, full = (results["runs"][s] for s in (search.scheduler.name, "fifo"))
    results["epoch_ratio"] = asha["trial_epochs"] / full["trial_epochs"]
    results["wall_ratio"] = asha["wall_s"] / full["wall_s"]
    print(f"\n{args.samples} configurations, metric {search.metric} ({search.mode}):")
    for name, r in results["runs"].items():
        print(
            f"  {name:>5}: {r['trial_epochs']:4d} trial-epochs, {r['stopped_early']} stopped "
            f"early, best {r['best']:.4f}, {r['wall_s']:.0f} s"
        )
    print(f"  ASHA spent {results['epoch_ratio']:.2f}x the trial-epochs of running all to the end")
    print(f"  and {results['wall_ratio']:.2f}x the wall time")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
