"""`rayssl embed`: 1 against 2 actors, against a plain torch loop, and the driver's memory.

    python benchmarks/embed_scale.py [--images 2000] [--side 224] [--backbone resnet18]
        [--memory-sizes 2000 20000] [--out benchmarks/results/embed_scale-2core-cpu.json]

Folders of JPEGs from `rayssl demo-images` (`--images` at `--side` px, and twice as many)
and one backbone: a run of `--backbone` (ResNet-18 with its ImageNet stem by default)
trained one short epoch on 64 of the images in Ray Train's local mode. Rows, in one
session, on the same cores:

- rayssl embed, 1 actor and 2 actors (`--actors N`, one CPU and one torch thread each), and
  a plain torch loop: the same files, decoded and normalised the same way by a torch
  `DataLoader` (PIL, `--loader-workers` loader processes), the same backbone in the main
  process with 2 torch threads, features kept in memory (no Parquet); and the same loop
  with the network and batches in channels_last, the layout rayssl's actors use. Each row runs at
  `--images` N and 2N images: its time (rayssl: the manifest's `wall_s`, from reading the
  backbone: Ray's start, the actors loading the backbone, Ray Data's read and decode, the
  actors, the Parquet write; the loop: from reading the backbone) at both sizes, and the
  rate of the N images the larger input adds, the one a large input runs at: the fixed
  cost cancels. The ratios are of those rates.
- `--rounds R`: the throughput rows interleaved, every row once a round, medians of R.
- `--throughput-only`: these rows, the file's driver-memory rows kept.
- `--layout-ab ROUNDS --out FILE`: rayssl embed with 2 actors on the 2N images, the actors'
  network and batches in channels_last (the default) against contiguous
  (`RAYSSL_INFERENCE_LAYOUT=contiguous`), interleaved ROUNDS times.
- `--wide-only`: rayssl embed with 1 actor of 2 CPUs (`--cpus-per-actor 2`: 2 torch
  threads, as the torch loop has), its own result file.
- memory: the driver's peak RSS (VmHWM of the `rayssl embed` process, sampled from /proc
  until it exits) for inputs of `--memory-sizes` images at `--side` px with a small cnn2d, 2 actors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def _cpu_model() -> str:
    """The CPU's model name (its rows move with it: oneDNN's kernels differ by vendor)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")


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


def run_embed(
    source: str, data: Path, out: Path, actors: int, batch: int, cpus: int = 1, env=None
) -> dict:
    """`rayssl embed` as a user runs it, its driver's peak RSS watched until it exits."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "embed", source, str(data), "--out", str(out),
         "--actors", str(actors), "--batch-size", str(batch), "--cpus-per-actor", str(cpus)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
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
        "first_rows_s": manifest.get("first_rows_s"),  # Ray's start, actors, a first block
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


def torch_loop(
    source: str, data: Path, batch: int, loader_workers: int, channels_last: bool = False
) -> dict:
    """The baseline: a DataLoader and the backbone in one process, 2 torch threads; with
    `channels_last`, the network and each batch in that layout, as rayssl's actors run."""
    from rayssl.runs.pretrained import read, rebuild

    torch.set_num_threads(2)
    started = time.perf_counter()  # as rayssl's job: from reading the backbone
    backbone = read(source)
    module = rebuild(backbone, source)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=layout)
    stats = backbone.normalize
    files = sorted(data.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(
        _Files(files, torch.tensor(stats["mean"]), torch.tensor(stats["std"])),
        batch_size=batch,
        num_workers=loader_workers,
    )
    loop_started = time.perf_counter()
    rows = 0
    with torch.no_grad():
        for x in loader:
            rows += len(module(x.contiguous(memory_format=layout)).flatten(1))
    now = time.perf_counter()
    return {
        "loader_workers": loader_workers,
        "channels_last": channels_last,
        "images": rows,
        "loop_s": round(now - loop_started, 2),  # the loop alone, as before
        "images_per_s": round(rows / (now - loop_started), 1),
        "job_s": round(now - started, 2),  # from reading the backbone, as rayssl's job_s
    }


def marginal(small: dict, large: dict) -> dict:
    """One row at two input sizes: the job's images/s at each, and the rate of the images
    the larger input adds (extra images / extra seconds): the fixed cost (Ray's start, the
    actors loading the backbone, a pipeline's first and last blocks) cancels, and what is
    left is the rate a large input runs at."""
    extra = large["images"] - small["images"]
    return {
        "at_sizes": [small, large],
        "images_per_s_added": round(extra / (large["job_s"] - small["job_s"]), 1),
        "fixed_s": round(
            small["job_s"] - small["images"] * (large["job_s"] - small["job_s"]) / extra, 1
        ),
    }


def throughput(args, work: Path, source: str, sets: list[Path]) -> dict:
    """rayssl embed with 1 and 2 actors and the torch loop, each at both input sizes; with
    `--rounds R` every row once a round, R rounds (the machine's speed drifts over minutes:
    rows run one after another compare worse than rows interleaved), each rate and ratio the
    median over the rounds."""
    kinds = [f"rayssl_{actors}_actor" for actors in (1, 2)] + [
        f"torch_loader_{w}{suffix}" for w in args.loader_workers
        for suffix in ("", "_channels_last")
    ]  # fmt: skip
    rounds: list[dict] = []
    for r in range(args.rounds):
        rows: dict = {}
        for kind in kinds:
            if kind.startswith("rayssl_"):
                actors = int(kind.split("_")[1])
                runs = [run_embed(source, d, work / f"out-{r}-{actors}-{i}", actors,
                                  args.batch_size) for i, d in enumerate(sets)]  # fmt: skip
            else:
                workers = int(kind.split("_")[2])
                channels_last = kind.endswith("channels_last")
                runs = [torch_loop(source, d, args.batch_size, workers, channels_last)
                        for d in sets]  # fmt: skip
            rows[kind] = marginal(*runs)
            print(r, kind, json.dumps(rows[kind]), flush=True)
        rows.update(_ratios(rows, args.loader_workers))
        print(r, json.dumps({k: v for k, v in rows.items() if not isinstance(v, dict)}))
        rounds.append(rows)
    if len(rounds) == 1:
        return rounds[0]
    out: dict = {"rounds": rounds}
    for kind in kinds:
        out[kind] = {"images_per_s_added": statistics.median(
            r[kind]["images_per_s_added"] for r in rounds)}  # fmt: skip
    for key in _ratios(rounds[0], args.loader_workers):
        out[key] = statistics.median(r[key] for r in rounds)  # the median of the rounds' ratios
    return out


def _ratios(rows: dict, loader_workers: list[int]) -> dict:
    def loop(suffix: str) -> float:
        return max(rows[f"torch_loader_{w}{suffix}"]["images_per_s_added"]
                   for w in loader_workers)  # fmt: skip

    two = rows["rayssl_2_actor"]["images_per_s_added"]
    return {
        "two_over_one_actor": round(two / rows["rayssl_1_actor"]["images_per_s_added"], 2),
        # the target's baseline: a plain loop (the default layout); and one in rayssl's layout
        "two_actors_over_torch_loop": round(two / loop(""), 2),
        "two_actors_over_torch_loop_channels_last": round(two / loop("_channels_last"), 2),
    }


def layout_ab(args, work: Path, source: str, data: Path) -> dict:
    """rayssl embed with 2 actors on the 2N images, its actors in channels_last (the default)
    and contiguous (RAYSSL_INFERENCE_LAYOUT=contiguous), interleaved: whole-job images/s."""
    rows: dict = {"channels_last": [], "contiguous": []}
    for i in range(args.layout_ab):
        for layout in rows:
            env = {"RAYSSL_INFERENCE_LAYOUT": layout}
            run = run_embed(source, data, work / f"ab-{layout}-{i}", 2, args.batch_size, env=env)
            rows[layout].append(run)
            print(layout, json.dumps(run), flush=True)
    rate = {k: sum(r["images_per_s"] for r in v) / len(v) for k, v in rows.items()}
    rows["channels_last_over_contiguous"] = round(rate["channels_last"] / rate["contiguous"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--images", type=int, default=2000, help="N: the throughput rows embed N and 2N images"
    )
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=1, help="throughput rows interleaved")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--out", default="benchmarks/results/embed_scale-2core-cpu.json")
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="the throughput rows only; the file's driver-memory rows kept as they were",
    )
    parser.add_argument(
        "--wide-only",
        action="store_true",
        help="only rayssl embed with 1 actor of 2 CPUs (2 torch threads), as the torch loop",
    )
    parser.add_argument(
        "--layout-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only 2 actors on the 2N images, channels_last against contiguous, interleaved",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from rayssl.data.demo import write_digit_images

    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()}-core CPU, {_cpu_model()}",
    }
    with tempfile.TemporaryDirectory(prefix="rayssl-embedbench-") as tmp:
        work = Path(tmp)
        sets = []
        for n in (args.images, 2 * args.images):
            write_digit_images(work / f"set-{n}", train=n, test=10, seed=0, size=args.side,
                               image_format="jpeg")  # fmt: skip
            sets.append(work / f"set-{n}" / "train")
        data = sets[0]
        spec = {"name": args.backbone}
        if args.backbone == "resnet18":
            spec["stem"] = "imagenet"
        source = train_source(data, work, spec, args.side)
        rows = {"backbone": spec, "side_px": args.side, "batch_size": args.batch_size}
        if args.layout_ab:  # its own result file (--out)
            result["layout_ab"] = {"rows": rows, **layout_ab(args, work, source, sets[1])}
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return
        if args.wide_only:  # (at N images only)
            rows["rayssl_1_actor_2_cpus"] = run_embed(
                source, data, work / "out-wide", 1, args.batch_size, cpus=2
            )
            print(json.dumps(rows["rayssl_1_actor_2_cpus"]), flush=True)
            result["throughput"] = rows
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return
        rows.update(throughput(args, work, source, sets))
        print(json.dumps({k: v for k, v in rows.items() if not isinstance(v, dict)}), flush=True)
        result["throughput"] = rows
        if args.throughput_only:  # the memory rows of the file as they were
            earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
            result["driver_memory"] = earlier.get("driver_memory")
            result["driver_memory_command"] = earlier.get(
                "driver_memory_command", earlier.get("command")
            )
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return

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
        result["driver_memory_command"] = result["command"]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
