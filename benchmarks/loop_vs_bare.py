"""rayssl's `Loop` stepping in this process against throughput.py's bare torch loop on the
same config, interleaved round by round: whether a gap between `throughput.py`'s bare and
ray-1 rows is rayssl's loop or the Ray Train worker it runs in.

    python benchmarks/loop_vs_bare.py --method ibot --batch-size 128 --rounds 2
    python benchmarks/loop_vs_bare.py --method ibot --thread     # + the Loop in a thread
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 \
        python benchmarks/loop_vs_bare.py --method ibot --thread # glibc as Ray workers get it

`--thread` steps the Loop a third time, in a thread of its own, as Ray Train and Tune run
a worker's training function. `--tune-process` first sets glibc's malloc in this process as
`rayssl train` in local mode does (`tune_this_process`).

One torch thread; the demo's 512-image set (`data/digits512`); one epoch per round and
side; a side's ms/step is the median of its steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/, beside this file)
import torch  # noqa: E402

from rayssl.data import load_splits  # noqa: E402
from rayssl.engine import Loop  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.seeds import seed_everything  # noqa: E402


def loop_step_times(cfg, splits) -> list[float]:
    """Seconds per optimizer step of rayssl's Loop in this process, one epoch."""
    seed_everything(cfg.seed)
    loop = Loop(build_method(cfg, splits.sample_shape, splits.num_classes), splits, cfg)
    loop.start_epoch()
    times, last = [], time.perf_counter()
    for _ in loop.iterate():
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def in_thread(function, *args):
    """`function(*args)` in a new thread, as Ray Train runs a worker's train function."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(function(*args)))
    thread.start()
    thread.join()
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="ibot", choices=list(throughput.CONFIGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the rounds to this JSON file")
    parser.add_argument(
        "--thread", action="store_true", help="also step the Loop in a thread of its own"
    )
    parser.add_argument(
        "--tune-process",
        action="store_true",
        help="first set glibc's malloc in this process as local-mode `rayssl train` does",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.tune_process:
        from rayssl.cluster.start import tune_this_process

        assert tune_this_process(), "glibc's mallopt changed nothing here"
    data = ["data.path=data/digits512/train", "data.test_path=null"]
    extra = [*data, f"data.batch_size={args.batch_size}"]
    cfg = throughput.bench_config(args.method, 1, "/tmp/rayssl-loop-vs-bare", extra)
    cfg = cfg.model_copy(update={"num_workers": 1})
    splits = load_splits(cfg.data, cfg.seed)
    rounds = []
    for i in range(args.rounds):
        bare = statistics.median(throughput.bare_step_times(cfg, splits)[1:]) * 1e3
        loop = statistics.median(loop_step_times(cfg, splits)[1:]) * 1e3
        rounds.append({"bare_ms": round(bare), "loop_ms": round(loop), "ratio": loop / bare})
        if args.thread:
            threaded = statistics.median(in_thread(loop_step_times, cfg, splits)[1:]) * 1e3
            rounds[-1].update(loop_thread_ms=round(threaded), thread_ratio=threaded / bare)
        print(i, json.dumps(rounds[-1]), flush=True)
    if args.out:
        command = "python benchmarks/loop_vs_bare.py " + " ".join(sys.argv[1:])
        # glibc's malloc settings this process started with (cluster/start.py: ALLOCATOR_ENV)
        malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
        record = {"command": command, "malloc_env": malloc, "rounds": rounds}
        if args.tune_process:
            record["mallopt"] = "cluster/start.py: tune_this_process (as local mode)"
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
