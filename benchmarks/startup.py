"""Start-up: `rayssl train` command start -> first optimizer step, phase by phase, beside Ray's
own floor (a bare TorchTrainer whose train function is empty) measured in the same run.

Each rayssl run is a real subprocess (its own Python and, with workers, its own local Ray):
`rayssl train CONFIG --set epochs=1`, whose first epoch reports `start_to_first_step_s` and
the start-up timeline (`startup_<mark>_s`, engine/metrics.py: STARTUP_MARKS). The floor is this
file run with `--bare N`: the same Ray start rayssl makes (a local Ray of this machine's
CPUs, no dashboard, Ray Train's settings from cluster/start.py), then a TorchTrainer of N
workers whose function only notes the time it was entered. Prints every run and the
medians; writes JSON.

    python benchmarks/startup.py                        # 5 runs each of num_workers 0 and 2
    python benchmarks/startup.py --workers 2 --runs 3
    python benchmarks/startup.py --config configs/simclr_mnist1d.yaml
"""

from __future__ import annotations

import time

STARTED = time.time()  # --bare: before any import, as the CLI's LAUNCHED_AT

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = {  # startup_<mark>_s: the phase that ends at that mark
    "imported": "Python imports in the driver, config read",
    "checked": "preflight: data loaded, two samples through the method",
    "ray_started": "Ray started",
    "fit_called": "run folder, run record, TorchTrainer made",
    "worker_imported": "Ray Train controller up, worker processes started",
    "worker_entered": "in the workers: Ray Train's set-up (torch, process group), imports",
    "data_ready": "data in the workers",
    "built": "method, DDP, optimizer built",
    "first_batch": "first batch",
    "first_step": "first optimizer step",
}


def rayssl_run(workers: int, config: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rayssl-startup-") as storage:
        sets = ["epochs=1", f"num_workers={workers}", f"storage_path={storage}"]
        started = time.time()
        subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", str(ROOT / config)]
            + [arg for s in sets for arg in ("--set", s)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        wall = time.time() - started
        (summary,) = Path(storage).glob("*/summary.json")
        first = json.loads(summary.read_text())["history"][0]
    phases = {m: first[f"startup_{m}_s"] for m in PHASES if f"startup_{m}_s" in first}
    return {"start_to_first_step_s": first["start_to_first_step_s"], "whole_command_s": wall,
            **{f"{m}_s": v for m, v in phases.items()}}  # fmt: skip


def bare_run(workers: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(workers)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bare(workers: int) -> None:
    """Ray's floor: rayssl's Ray start, then a TorchTrainer whose function only notes when
    it was entered (Ray Train V2 keeps no metrics without a checkpoint: a file each).

    With 0 workers, the floor of local mode: no Ray start (local mode has no cluster), Ray
    Train's local TorchTrainer, and a function that takes one `torch.optim` step on one
    tensor (the first step of any torch optimizer imports `torch._dynamo`) before noting
    the time: what any run in one process pays before its own work."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as the CLI does
    from rayssl.cluster.start import RAY_TRAIN_ENV

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    imported = time.time()
    if workers:
        ray.init(
            address="local",
            include_dashboard=False,
            num_cpus=os.cpu_count(),
            log_to_driver=False,
            logging_level="WARNING",
        )
    ray_started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        TorchTrainer(
            _bare_function,
            train_loop_config={"dir": tmp, "step": not workers},
            scaling_config=ScalingConfig(num_workers=workers),
            run_config=RunConfig(storage_path=f"{tmp}/storage"),
        ).fit()
        entered = max(float(p.read_text()) for p in Path(tmp).glob("entered-*"))
    print(
        json.dumps(
            {
                "to_worker_entered_s": entered - STARTED,
                "imports_s": imported - STARTED,
                "ray_start_s": ray_started - imported,
                "controller_and_workers_s": entered - ray_started,
            }
        )
    )


def _bare_function(config: dict) -> None:
    import ray.train

    if config["step"]:
        import torch

        weight = torch.zeros(1, requires_grad=True)
        weight.sum().backward()
        torch.optim.SGD([weight], lr=0.1).step()
    rank = ray.train.get_context().get_world_rank()
    Path(config["dir"], f"entered-{rank}").write_text(str(time.time()))


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs if key in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="startup.json")
    parser.add_argument("--config", default="configs/supervised_mnist1d.yaml")
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare is not None:
        bare(args.bare)
        return
    results: dict = {"config": args.config, "runs": args.runs}
    for workers in args.workers:
        runs, floor = [], []
        for i in range(args.runs):  # interleaved: the machine's drift hits both alike
            runs.append(rayssl_run(workers, args.config))
            floor.append(bare_run(workers))
            first = runs[-1]["start_to_first_step_s"]
            line = f"num_workers={workers} run {i + 1}: first step {first:.1f} s"
            if floor:
                entered = floor[-1]["to_worker_entered_s"]
                line += f"; the floor (a bare TorchTrainer's function) {entered:.1f} s"
            print(line, flush=True)
        entry = {
            "median_start_to_first_step_s": median(runs, "start_to_first_step_s"),
            "median_phases_s": {m: median(runs, f"{m}_s") for m in PHASES if f"{m}_s" in runs[0]},
            "runs": runs,
        }
        if floor:
            entry["bare_trainer"] = {
                "median_to_worker_entered_s": median(floor, "to_worker_entered_s"),
                "median_phases_s": {k: median(floor, k) for k in floor[0]},
                "runs": floor,
            }
            entry["above_floor_s"] = (
                entry["median_start_to_first_step_s"]
                - entry["bare_trainer"]["median_to_worker_entered_s"]
            )
        results[f"num_workers={workers}"] = entry
        print(f"num_workers={workers}: median {entry['median_start_to_first_step_s']:.1f} s")
        for mark, seconds in entry["median_phases_s"].items():
            print(f"  {PHASES[mark]:<58} {seconds:6.2f} s")
        if floor:
            print(
                "  bare TorchTrainer (Ray's floor):",
                json.dumps(entry["bare_trainer"]["median_phases_s"]),
            )
            print(f"  above the floor: {entry['above_floor_s']:.1f} s", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
