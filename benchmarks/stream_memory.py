"""The stream section of benchmarks/images.py: a Ray Data stream of image files into a
2-worker rayssl run, with the resident memory of the driver and of each Ray Train worker
sampled every second, and a validation share over `data.eval_limit_mb` refused before
anything is decoded. Needs only rayssl; run it through
`python benchmarks/images.py --sections stream`."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def status_mb(pid: int | str, field: str) -> float | None:
    """A memory line of /proc/<pid>/status in MB: VmRSS (resident now), VmHWM (its peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _rss_mb(pid: int) -> float | None:
    return status_mb(pid, "VmRSS")


def _descendants(root: int) -> list[int]:
    """Processes under `root` (this run's own Ray), from /proc: no pattern over the machine."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stream_config(tmp: Path, epochs: int, val_fraction: float, eval_limit_mb: int = 1024):
    from rayssl.config import validate_train_config

    return validate_train_config(
        {
            "method": "simclr",
            "name": "stream",
            "epochs": epochs,
            "num_workers": 2,
            "storage_path": str(tmp / "runs"),
            "data": {
                "name": "images",
                "path": str(tmp / "set" / "train"),
                "in_memory": False,
                "val_fraction": val_fraction,
                "eval_limit_mb": eval_limit_mb,
                "batch_size": 256,
                "probe_samples": 512,
                "augment": {"preset": "simclr", "image": {"blur_p": 0.0}},
            },
            "backbone": {"name": "cnn2d", "width": 8, "depth": 2},
            "simclr": {"proj_hidden": 64, "proj_dim": 32},
            "eval": {"every": 0},
        }
    )


def _sampled(run, pid_filter: bool = True) -> tuple[object, list[dict]]:
    """Run `run()` while a thread samples the resident memory of this process (the driver)
    and of this run's Ray Train workers every `period` seconds."""
    samples: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.wait(1.0 if pid_filter else 0.1):
            workers = {}
            for pid in _descendants(os.getpid()) if pid_filter else ():
                try:
                    name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                except OSError:
                    continue
                if "RayTrainWorker" in name:
                    workers[pid] = _rss_mb(pid)
            samples.append(
                {
                    "t_s": round(time.perf_counter() - t0, 1),
                    "driver_mb": round(_rss_mb(os.getpid()) or 0, 1),
                    "workers_mb": [round(v or 0, 1) for _, v in sorted(workers.items())],
                }
            )

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = run()
    except Exception as exc:  # the refusal below is the expected outcome
        result = exc
    done.set()
    thread.join()
    return result, samples


def refused_val(tmp: Path, files: int) -> dict:
    """A validation share far over `data.eval_limit_mb`: refused in one line before anything
    is decoded on the driver (its memory before, during and after the attempt)."""
    from rayssl.cluster import fit

    fraction, limit = 0.5, 64
    before = _rss_mb(os.getpid()) or 0.0
    started = time.perf_counter()
    error, samples = _sampled(
        lambda: fit(_stream_config(tmp, 1, fraction, limit)), pid_filter=False
    )
    took = time.perf_counter() - started
    peak = max([s["driver_mb"] for s in samples] + [_rss_mb(os.getpid()) or 0.0])
    return {
        "val_fraction": fraction,
        "val_images": int(files * fraction),
        "val_decoded_mb_if_loaded": round(int(files * fraction) * 3 * 32 * 32 * 4 / 2**20, 1),
        "eval_limit_mb": limit,
        "refused": type(error).__name__ == "ConfigError",
        "message": str(error).splitlines()[0] if isinstance(error, Exception) else None,
        "seconds_to_refuse": round(took, 2),
        "driver_rss_mb_before": round(before, 1),
        "driver_rss_mb_peak": round(peak, 1),
        "driver_rss_mb_after": round(_rss_mb(os.getpid()) or 0.0, 1),
    }


def stream_memory(files: int, epochs: int, val_fraction: float) -> dict:
    from rayssl.cluster import fit
    from rayssl.data.demo import write_digit_images

    tmp = Path(tempfile.mkdtemp(prefix="rayssl-stream-"))
    started = time.perf_counter()
    write_digit_images(tmp / "set", train=files, test=10, seed=1)
    write_s = time.perf_counter() - started
    refused = refused_val(tmp, files)  # first, so the driver's baseline is untouched
    summary, samples = _sampled(lambda: fit(_stream_config(tmp, epochs, val_fraction)))
    if isinstance(summary, Exception):
        raise summary
    with_workers = [s for s in samples if s["workers_mb"]]
    third = max(1, len(with_workers) // 3)
    early, late = with_workers[third : 2 * third], with_workers[-third:]

    def mean_worker(rows):
        return statistics.mean(statistics.mean(r["workers_mb"]) for r in rows)

    val_images = round(files * val_fraction)
    return {
        "files": files,
        "write_files_s": round(write_s, 1),
        "val_fraction": val_fraction,
        "val_images_decoded_on_driver": val_images,
        "val_decoded_mb": round(val_images * 3 * 32 * 32 * 4 / 2**20, 1),
        "epochs": summary["epochs_run"],
        "steps": summary["global_steps"],
        "train_wall_s": round(summary["wall_time_s"], 1),
        "val_loss_last": summary.get("final_metrics", {}).get("val_loss"),
        "worker_rss_mb_middle_third": round(mean_worker(early), 1),
        "worker_rss_mb_last_third": round(mean_worker(late), 1),
        "driver_rss_mb_middle_third": round(statistics.mean(r["driver_mb"] for r in early), 1),
        "driver_rss_mb_last_third": round(statistics.mean(r["driver_mb"] for r in late), 1),
        "refused_large_val": refused,
        "curve": samples,
    }
