"""`rayssl embed`: 1 against 2 actors, against a plain torch loop, and the driver's memory.

    python benchmarks/embed_scale.py [--images 2000] [--side 224] [--backbone resnet18]
        [--memory-sizes 2000 20000] [--out benchmarks/results/embed_scale-2core-cpu.json]

One folder of JPEGs from `rayssl demo-images` (`--images` at `--side` px) and one backbone:
a run of `--backbone` (ResNet-18 with its ImageNet stem by default) trained one short epoch
on 64 of the images in Ray Train's local mode. Rows, in one session, on the same cores:

- rayssl embed, 1 actor and 2 actors (`--actors N`, one CPU and one torch thread each):
  images/s of the job itself (the manifest's `wall_s`: Ray Data's read, decode, the actors,
  the Parquet write; Ray's start-up not in it, it is in `command_s`), the driver's peak RSS.
- a plain torch loop: the same files, decoded and normalised the same way by a torch
  `DataLoader` (PIL, 1 and 2 loader workers), the same backbone in the main process with 2
  torch threads, features kept in memory (no Parquet). The faster of the two is the baseline.
- `--wide-only`: rayssl embed with 1 actor of 2 CPUs (`--cpus-per-actor 2`: 2 torch
  threads, as the torch loop has), its own result file.
- memory: the driver's peak RSS (VmHWM of the `rayssl embed` process, sampled from /proc
  until it exits) for inputs of `--memory-sizes` images at `--side` px with a small cnn2d, 2 actors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from stream_memory import status_mb  # noqa: E402


def _peak_mb(pid: int) -> float | None:
    return status_mb(pid, "VmHWM")


def train_source(folder: Path, work: Path, backbone: dict, side: int) -> str:
    """A run of `backbone` on the folder's first images (Ray Train's local mode)."""
    import shutil

    from rayssl.cluster import fit
    from rayssl.config import validate_train_config

    small = work / f"source-{side}"
    for f in sorted(folder.rglob("*.jpg"))[:64]:
        (small / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, small / f.parent.name / f.name)
    cfg = validate_train_config(
        {
            "method": "simclr",
            "name": f"source-{side}",
            "epochs": 1,
            "num_workers": 0,
            "storage_path": str(work / "runs"),
            "backbone": backbone,
            "data": {
                "name": "images",
                "path": str(small),
                "val_fraction": 0,
                "batch_size": 16,
                "normalize": "dataset",
                "augment": {"preset": "simclr"},
            },
            "eval": {"every": 0},
        }
    )
    fit(cfg)
    return str(work / "runs" / f"source-{side}")


def run_embed(source: str, data: Path, out: Path, actors: int, batch: int, cpus: int = 1) -> dict:
    """`rayssl embed` as a user runs it, its driver's peak RSS watched until it exits."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "embed", source, str(data), "--out", str(out),
         "--actors", str(actors), "--batch-size", str(batch), "--cpus-per-actor", str(cpus)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    peak = [0.0]

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _peak_mb(process.pid) or 0.0)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = process.communicate()[0]
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(output[-3000:])
    manifest = json.loads((out / "_rayssl-embeddings.json").read_text())
    return {
        "actors": actors,
        "cpus_per_actor": cpus,
        "images": manifest["rows"],
        "job_s": manifest["wall_s"],
        "images_per_s": round(manifest["rows"] / manifest["wall_s"], 1),
        "command_s": round(time.perf_counter() - started, 1),
        "driver_peak_mb": peak[0],
    }


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], mean: torch.Tensor, std: torch.Tensor):
        self.files, self.mean, self.std = files, mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as image:
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        return (x.permute(2, 0, 1).float() / 255 - self.mean) / self.std


def torch_loop(source: str, data: Path, batch: int, loader_workers: int) -> dict:
    """The baseline: a DataLoader and the backbone in one process, 2 torch threads."""
    from rayssl.runs.pretrained import read, rebuild

    torch.set_num_threads(2)
    backbone = read(source)
    module = rebuild(backbone, source)
    stats = backbone.normalize
    files = sorted(data.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(
        _Files(files, torch.tensor(stats["mean"]), torch.tensor(stats["std"])),
        batch_size=batch,
        num_workers=loader_workers,
    )
    started = time.perf_counter()
    rows = 0
    with torch.no_grad():
        for x in loader:
            rows += len(module(x).flatten(1))
    took = time.perf_counter() - started
    return {
        "loader_workers": loader_workers,
        "images": rows,
        "loop_s": round(took, 2),
        "images_per_s": round(rows / took, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--out", default="benchmarks/results/embed_scale-2core-cpu.json")
    parser.add_argument(
        "--wide-only",
        action="store_true",
        help="only rayssl embed with 1 actor of 2 CPUs (2 torch threads), as the torch loop",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from rayssl.data.demo import write_digit_images

    result: dict = {"command": "python " + " ".join(sys.argv), "machine": "2-core CPU"}
    with tempfile.TemporaryDirectory(prefix="rayssl-embedbench-") as tmp:
        work = Path(tmp)
        write_digit_images(work / "set", train=args.images, test=10, seed=0, size=args.side,
                           image_format="jpeg")  # fmt: skip
        data = work / "set" / "train"
        spec = {"name": args.backbone}
        if args.backbone == "resnet18":
            spec["stem"] = "imagenet"
        source = train_source(data, work, spec, args.side)
        rows = {"backbone": spec, "side_px": args.side, "batch_size": args.batch_size}
        if args.wide_only:
            rows["rayssl_1_actor_2_cpus"] = run_embed(
                source, data, work / "out-wide", 1, args.batch_size, cpus=2
            )
            print(json.dumps(rows["rayssl_1_actor_2_cpus"]), flush=True)
            result["throughput"] = rows
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return
        for actors in (1, 2):
            rows[f"rayssl_{actors}_actor"] = run_embed(
                source, data, work / f"out-{actors}", actors, args.batch_size
            )
            print(json.dumps(rows[f"rayssl_{actors}_actor"]), flush=True)
        for workers in (1, 2):
            rows[f"torch_loader_{workers}"] = torch_loop(source, data, args.batch_size, workers)
            print(json.dumps(rows[f"torch_loader_{workers}"]), flush=True)
        best = max(rows["torch_loader_1"]["images_per_s"], rows["torch_loader_2"]["images_per_s"])
        two, one = rows["rayssl_2_actor"]["images_per_s"], rows["rayssl_1_actor"]["images_per_s"]
        rows["two_over_one_actor"] = round(two / one, 2)
        rows["two_actors_over_torch_loop"] = round(two / best, 2)
        print(json.dumps({k: v for k, v in rows.items() if not isinstance(v, dict)}), flush=True)
        result["throughput"] = rows

        memory = []
        small = train_source(data, work / "small", {"name": "cnn2d", "width": 8, "depth": 2},
                             args.side)  # fmt: skip
        for n in args.memory_sizes:
            write_digit_images(work / f"mem-{n}", train=n, test=10, seed=1, size=args.side,
                               image_format="jpeg")  # fmt: skip
            row = run_embed(small, work / f"mem-{n}" / "train", work / f"mem-out-{n}", 2, 256)
            memory.append(row)
            print(json.dumps(row), flush=True)
        result["driver_memory"] = memory
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
