"""Evaluation across Ray Train workers: time with 1 and 2 workers, and memory as the split grows.

    python benchmarks/eval_workers.py [--sections time memory]
        [--out benchmarks/results/eval_workers-2core-cpu.json]

Each row is one `TorchTrainer` run whose workers do exactly what a run's probes do
(`engine/evaluation.py: Evaluation.probe`): every rank embeds its own share of the fit and
scored splits, streamed from an image folder by Ray Data (`data.in_memory: false`), then the
sharded kNN and the L-BFGS linear probe run across the ranks. A random-init backbone, seeded
the same on every row (the time, not the representation, is measured). Each worker has one
torch thread and one CPU; the local Ray has one CPU more than the workers take, for Ray Data.

- time: the same split with 1 and 2 workers, streamed (decoded by Ray Data on the same 2
  cores as the workers) and in memory (decoded once on the driver, shipped to the
  workers): seconds for the features (a second pass; the first, which also starts Ray
  Data's tasks, is recorded beside it), for kNN, for the linear probe; accuracies, which
  must not depend on the worker count; and the same accuracies from scikit-learn's
  LogisticRegression and a one-process numpy kNN on the 1-worker run's features (the
  probes as they were before they ran across ranks).
- ceiling: the same network's forward pass on as many images in one plain torch process,
  and split over two processes started together: what two workers can gain on this machine.
- memory: 2 workers, a fit set of 2,000 images and test splits of 5,000, 50,000 and 200,000
  32-px PNGs and 20,000 224-px JPEGs. The driver's resident memory before the row and its
  most during it (sampled twice a second), the peak (VmHWM) of each Ray Train worker (read by
  the worker itself at the end) and of the Ray Data processes under this driver (sampled
  from /proc; only this process's descendants). Run alone (`--sections memory`) so that the
  driver starts each size from the same state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from stream_memory import _descendants, status_mb  # noqa: E402


def _peak_mb(pid: int | str = "self") -> float | None:
    return status_mb(pid, "VmHWM")


def _evaluate(config: dict) -> None:
    """One Ray Train worker: Evaluation.probe's work, timed piece by piece."""
    import ray.train
    import torch
    import torch.distributed as dist

    from rayssl import seeds
    from rayssl.config import validate_train_config
    from rayssl.engine.inputs import Inputs, eval_batches
    from rayssl.engine.probes import features_of, knn_accuracy, linear_probe_accuracy
    from rayssl.methods.registry import build_method

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg, splits = validate_train_config(config["cfg"]), config["splits"]
    seeds.seed_everything(0)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.eval()
    inputs = Inputs(method, cfg, splits)
    sets = splits.probe_sets(cfg.seed, cfg.eval.probe_train_limit)
    sample = torch.zeros(1, *splits.sample_shape)

    def barrier() -> float:
        if dist.is_initialized():
            dist.barrier()
        return time.perf_counter()

    def embed_both():
        return tuple(
            features_of(inputs.frozen_embed, eval_batches(split, cfg, "cpu", rank, world), sample)
            for split in sets
        )

    cold = barrier()
    if config["warm"]:
        embed_both()  # the first pass also starts Ray Data's read tasks
    t0 = barrier()
    fit, scored = embed_both()
    t1 = barrier()
    knn = knn_accuracy(*fit, *scored, k=20, num_classes=splits.num_classes)
    t2 = barrier()
    linear = None
    if config["linear"]:
        linear = linear_probe_accuracy(*fit, *scored, num_classes=splits.num_classes)
    t3 = barrier()
    if config.get("dump") and world == 1:
        np.savez(config["dump"], fit_f=fit[0], fit_y=fit[1], test_f=scored[0], test_y=scored[1])
    peaks = [None] * world
    mine = {"rank": rank, "peak_mb": _peak_mb(), "fit_rows": len(fit[0]), "rows": len(scored[0])}
    # resident now, by kind: the process's own memory against pages of Ray's shared-memory
    # object store that it has read blocks from (counted in its RSS, owned by the store)
    mine.update({f"{k}_mb": status_mb("self", k) for k in ("RssAnon", "RssShmem", "RssFile")})
    if dist.is_initialized():
        dist.all_gather_object(peaks, mine)
    else:
        peaks = [mine]
    if rank == 0:  # the row, for the driver (a file: nothing rides on Ray Train's report)
        row = {
            "features_first_pass_s": round(t0 - cold, 2),
            "features_s": round(t1 - t0, 2),
            "knn_s": round(t2 - t1, 2),
            "linear_s": round(t3 - t2, 2),
            "knn_acc": knn,
            "linear_acc": linear,
            "workers": peaks,
        }
        Path(config["row"]).write_text(json.dumps(row))


def _rss_mb() -> float:
    return status_mb("self", "VmRSS") or 0.0


def _watch(stop: threading.Event, peaks: dict) -> None:
    """Twice a second, the most memory each process under this driver held: VmHWM of its
    Ray Data processes (read / map tasks, by pid), and for the driver ("driver") and the Ray
    Train workers ("workers") their resident memory of their own (RssAnon): RSS also counts
    the pages of Ray's shared-memory object store a process has read blocks from, which the
    store owns and reuses."""
    while not stop.wait(0.5):
        peaks["driver"] = max(peaks["driver"], _rss_mb())
        peaks["driver_anon"] = max(peaks["driver_anon"], status_mb("self", "RssAnon") or 0.0)
        for pid in _descendants(os.getpid()):
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if "RayTrainWorker" in name:
                anon = status_mb(pid, "RssAnon") or 0.0
                peaks["workers_anon"] = max(peaks["workers_anon"], anon)
            elif name.startswith("ray::") and ("Read" in name or "Map" in name):
                peak = _peak_mb(pid)
                if peak is not None:
                    peaks["data"][pid] = max(peak, peaks["data"].get(pid, 0.0))


def run_row(
    raw: dict, workers: int, work: Path, linear: bool, dump: str | None = None, warm=True
) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayssl.config import validate_train_config
    from rayssl.data import load_splits

    before = _rss_mb()
    cfg = validate_train_config(raw)
    splits = load_splits(cfg.data, cfg.seed)  # streamed: lists files, decodes none
    stop = threading.Event()
    peaks = {"driver": _rss_mb(), "driver_anon": 0.0, "workers_anon": 0.0, "data": {}}
    watcher = threading.Thread(target=_watch, args=(stop, peaks), daemon=True)
    watcher.start()
    started = time.perf_counter()
    result = TorchTrainer(
        _evaluate,
        train_loop_config={
            "cfg": raw,
            "splits": splits,
            "linear": linear,
            "dump": dump,
            "row": str(work / "row.json"),
            "warm": warm,
        },
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(work / "ray"), name=f"w{workers}-{time.time()}"),
    ).fit()
    stop.set()
    watcher.join()
    if result.error:
        raise result.error
    row = json.loads((work / "row.json").read_text())
    row.update(
        {
            "num_workers": workers,
            "fit_images": len(splits.train[0]) if isinstance(splits.train, tuple) else None,
            "trainer_wall_s": round(time.perf_counter() - started, 1),
            "driver_rss_before_mb": before,
            "driver_rss_peak_mb": max(peaks["driver"], _rss_mb()),
            "driver_anon_peak_mb": peaks["driver_anon"],
            "workers_anon_peak_mb": peaks["workers_anon"],
            "ray_data_peak_mb": max(peaks["data"].values()) if peaks["data"] else None,
            "ray_data_processes": len(peaks["data"]),
        }
    )
    row.pop("fit_images")
    return row


def _config(train: Path, test: Path, width: int, depth: int) -> dict:
    return {
        "method": "simclr",
        "name": "evalbench",
        "backbone": {"name": "cnn2d", "width": width, "depth": depth},
        "data": {
            "name": "images",
            "path": str(train),
            "test_path": str(test),
            "in_memory": False,
            "val_fraction": 0,
            "normalize": "sample",  # no statistics pass: only the probes' work is timed
            "eval_batch_size": 256,
        },
    }


def reference(dump: Path) -> dict:
    """The 1-worker run's features probed in one process as before: scikit-learn's
    LogisticRegression (standardised, default tolerance) and a numpy weighted kNN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = np.load(dump)
    fit_f, fit_y, test_f, test_y = (d[k] for k in ("fit_f", "fit_y", "test_f", "test_y"))
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    bank, queries = unit(fit_f.astype(np.float64)), unit(test_f.astype(np.float64))
    correct = 0
    classes = int(max(fit_y.max(), test_y.max())) + 1
    for i in range(0, len(queries), 1024):
        sims = queries[i : i + 1024] @ bank.T
        top = np.argpartition(-sims, 20, axis=1)[:, :20]
        votes = np.zeros((len(top), classes))
        np.add.at(votes, (np.arange(len(top))[:, None], fit_y[top]), np.exp(
            np.take_along_axis(sims, top, 1) / 0.07))  # fmt: skip
        correct += int((votes.argmax(1) == test_y[i : i + 1024]).sum())
    started = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=20000))
    model.fit(fit_f, fit_y)
    return {
        "knn_acc_numpy": correct / len(queries),
        "linear_acc_sklearn": float((model.predict(test_f) == test_y).mean()),
        "sklearn_s": round(time.perf_counter() - started, 2),
    }


def time_section(work: Path, train: int, test: int) -> dict:
    from rayssl.data.demo import write_digit_images

    write_digit_images(work / "time", train=train, test=test, seed=0)
    raw = _config(work / "time" / "train", work / "time" / "test", width=32, depth=4)
    summary = {"fit_images": train, "test_images": test}
    for in_memory in (False, True):
        mode = "in_memory" if in_memory else "streamed"
        raw["data"]["in_memory"] = in_memory
        rows = []
        for workers in (1, 2):
            dump = str(work / "features.npz") if workers == 1 and not in_memory else None
            rows.append(run_row(raw, workers, work, linear=True, dump=dump))
            rows[-1]["mode"] = mode
            print(json.dumps(rows[-1]), flush=True)
        one, two = rows
        summary[mode] = {
            "rows": rows,
            "features_plus_knn_speedup": round(
                (one["features_s"] + one["knn_s"]) / (two["features_s"] + two["knn_s"]), 2
            ),
        }
    summary["reference"] = reference(work / "features.npz")
    print(json.dumps({k: v.get("features_plus_knn_speedup", v) if isinstance(v, dict) else v
                      for k, v in summary.items()}), flush=True)  # fmt: skip
    return summary


CEILING = """
import sys, time, torch
torch.set_num_threads(1)
from rayssl import nets, seeds
seeds.seed_everything(0)
net = nets.BACKBONES["cnn2d"]((3, 32, 32), width=32, depth=4).eval()
x = torch.rand(int(sys.argv[1]), 3, 32, 32)
started = time.perf_counter()
with torch.no_grad():
    for i in range(0, len(x), 256):
        net(x[i : i + 256])
print(time.perf_counter() - started)
"""


def ceiling(images: int) -> dict:
    """What this machine's two cores give two processes at once: the time section's network
    on `images` random inputs in one process, then half of them in each of two processes
    started together (plain torch, one thread each, no Ray)."""
    import subprocess

    def run(count: int, copies: int) -> float:
        started = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", CEILING, str(count)], stdout=subprocess.PIPE)
            for _ in range(copies)
        ]
        inner = max(float(p.communicate()[0]) for p in procs)
        return round(min(inner, time.perf_counter() - started), 2)

    one, two = run(images, 1), run(images // 2, 2)
    return {"images": images, "one_process_s": one, "two_processes_s": two,
            "speedup": round(one / two, 2)}  # fmt: skip


def memory_section(work: Path, sizes: list[int], large: int) -> list[dict]:
    from rayssl.data.demo import write_digit_images

    write_digit_images(work / "fit", train=2000, test=10, seed=0)
    rows = []
    sets = [(n, 32, "png") for n in sizes] + ([(large, 224, "jpeg")] if large else [])
    for n, side, fmt in sets:
        started = time.perf_counter()
        folder = work / f"test-{n}-{side}"
        write_digit_images(folder, train=10, test=n, seed=1, size=side, image_format=fmt)
        written = round(time.perf_counter() - started, 1)
        fit = work / "fit" / "train"
        if side != 32:  # the fit set at the same size as the scored one
            write_digit_images(work / f"fit-{side}", train=2000, test=10, seed=0, size=side,
                               image_format=fmt)  # fmt: skip
            fit = work / f"fit-{side}" / "train"
        raw = _config(fit, folder / "test", width=8, depth=2)
        row = run_row(raw, 2, work, linear=False, warm=False)  # one pass: memory, not time
        row.update({"test_images": n, "side_px": side, "format": fmt, "written_s": written})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sections", nargs="+", default=["time", "memory"])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 200000])
    parser.add_argument("--large", type=int, default=20000, help="224-px JPEGs (0: none)")
    parser.add_argument("--out", default="benchmarks/results/eval_workers-2core-cpu.json")
    args = parser.parse_args()

    import ray

    from rayssl.cluster.start import RAY_TRAIN_ENV

    for key, value in RAY_TRAIN_ENV.items():  # as rayssl's own trainers run
        os.environ.setdefault(key, value)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    result = {"command": "python " + " ".join(sys.argv), "machine": "2-core CPU"}
    with tempfile.TemporaryDirectory(prefix="rayssl-evalbench-") as tmp:
        if "time" in args.sections:
            result["time"] = time_section(Path(tmp), args.train, args.test)
        if "ceiling" in args.sections:
            result["ceiling"] = ceiling(args.train + args.test)
            print(json.dumps(result["ceiling"]), flush=True)
        if "memory" in args.sections:
            result["memory"] = memory_section(Path(tmp), args.sizes, args.large)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
