"""Which processes Ray Train 2.60 starts before a bare 2-worker TorchTrainer's function is
entered, and when: the machine's processes sampled every 0.25 s from a thread, each new one
printed with its time since this script started (and its Ray title once it has one), beside
the share of the cores busy each second.

    python benchmarks/ray_train_timeline.py > benchmarks/results/ray_train_timeline-2core-cpu.txt
"""

from __future__ import annotations

import time

STARTED = time.time()

import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as rayssl runs it
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
busy: list[tuple[float, float]] = []


def watch() -> None:
    seen, last = set(), None
    while True:
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True)
        for line in listing.stdout.splitlines()[1:]:
            pid, command = line.strip().split(None, 1)
            if ("ray" in command or "python" in command) and (pid, command[:40]) not in seen:
                seen.add((pid, command[:40]))
                print(f"{time.time() - STARTED:6.2f} s  pid {pid}  {command[:60]}", flush=True)
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        if last is not None:
            delta = [a - b for a, b in zip(ticks, last, strict=True)]
            busy.append((time.time() - STARTED, 1 - (delta[3] + delta[4]) / max(1, sum(delta))))
        last = ticks
        time.sleep(0.25)


def entered(config: dict) -> None:
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    Path(config["dir"], f"entered-{rank}").write_text(str(time.time()))


def main() -> None:
    threading.Thread(target=watch, daemon=True).start()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    print(f"{time.time() - STARTED:6.2f} s  imported", flush=True)
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(),
             log_to_driver=False, logging_level="WARNING")  # fmt: skip
    print(f"{time.time() - STARTED:6.2f} s  Ray started", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        TorchTrainer(
            entered,
            train_loop_config={"dir": tmp},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(storage_path=f"{tmp}/storage"),
        ).fit()
        times = sorted(float(p.read_text()) - STARTED for p in Path(tmp).glob("entered-*"))
    print("function entered at", ", ".join(f"{t:.2f} s" for t in times))
    seconds = range(int(busy[-1][0]) + 1)
    shares = [[b for t, b in busy if int(t) == s] for s in seconds]
    print("cores busy, each second:", " ".join(f"{sum(x) / len(x):.2f}" for x in shares if x))


if __name__ == "__main__":
    main()
