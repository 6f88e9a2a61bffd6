"""What asking Ray Train for preemption notices costs (`checkpoint.preemption_check_steps`).

1. The call itself: `ray.train.get_preemption_info()` timed N times inside a 2-worker
   TorchTrainer (it is a collective through Ray Train's synchronization actor).
2. A real run: `configs/supervised_mnist1d.yaml` on 2 workers, `epochs` epochs, with the
   check off (0), every 10 steps (the default) and every step, one after the other in one
   local Ray; samples/s averaged over the epochs after the first (start-up excluded).

Prints the numbers and writes JSON.

    python benchmarks/preemption_check.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def call_latency(calls: int) -> list[float]:
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def measure(config):
        import json
        import time

        import ray.train

        times = []
        for _ in range(config["calls"]):
            start = time.perf_counter()
            ray.train.get_preemption_info()
            times.append(time.perf_counter() - start)
        if ray.train.get_context().get_world_rank() == 0:
            Path(config["out"]).write_text(json.dumps(times))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        TorchTrainer(
            measure,
            train_loop_config={"calls": calls, "out": str(out)},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(
                name="latency", storage_path=tmp, logging_config=LoggingConfig(log_level="WARNING")
            ),
        ).fit()
        return json.loads(out.read_text())


def run_speed(check_steps: int, epochs: int, storage: str) -> dict[str, float]:
    from rayssl.cluster import fit
    from rayssl.config import load_train_config

    cfg = load_train_config(
        ROOT / "configs" / "supervised_mnist1d.yaml",
        (
            f"epochs={epochs}",
            "num_workers=2",
            f"checkpoint.preemption_check_steps={check_steps}",
            f"storage_path={storage}",
            f"name=check{check_steps}",
        ),
    )
    summary = fit(cfg)
    later = summary["history"][1:]
    steps = summary["history"][0]["step"]
    return {
        "preemption_check_steps": check_steps,
        "steps_per_epoch": steps,
        "samples_per_s": statistics.mean(h["samples_per_s"] for h in later),
        "epoch_time_s": statistics.mean(h["epoch_time_s"] for h in later),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "preemption_check-2core-cpu.json")
    )
    args = parser.parse_args()

    import os

    import ray

    from rayssl.cluster.start import RAY_TRAIN_ENV, init_ray
    from rayssl.config import load_train_config

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    init_ray(load_train_config(ROOT / "configs" / "supervised_mnist1d.yaml", ()))
    times = call_latency(args.calls)
    ms = sorted(t * 1000 for t in times)
    latency = {
        "calls": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * len(ms))],
    }
    print(
        f"get_preemption_info on 2 workers: median {latency['median_ms']:.2f} ms, "
        f"p90 {latency['p90_ms']:.2f} ms over {len(ms)} calls"
    )
    runs = []
    with tempfile.TemporaryDirectory() as storage:
        for check in (0, 10, 1):
            started = time.time()
            row = run_speed(check, args.epochs, storage)
            row["wall_s"] = time.time() - started
            runs.append(row)
            print(
                f"preemption_check_steps {check:>2}: {row['samples_per_s']:,.0f} samples/s, "
                f"{row['epoch_time_s']:.3f} s/epoch ({row['steps_per_epoch']} steps)"
            )
    base = runs[0]["samples_per_s"]
    for row in runs:
        row["vs_off"] = row["samples_per_s"] / base
    print(
        "relative to off: "
        + ", ".join(f"{r['preemption_check_steps']}: {r['vs_off']:.3f}" for r in runs)
    )
    ray.shutdown()
    Path(args.out).write_text(
        json.dumps({"machine": "2-core CPU, no GPU", "latency": latency, "runs": runs}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
