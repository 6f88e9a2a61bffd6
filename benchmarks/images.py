"""Image views and SSL steps: rayssl's batched views against lightly's transforms in a torch
DataLoader, on the same PNG folder, the same machine, in one run.

    python benchmarks/images.py                 # writes benchmarks/results/images-2core-cpu.json
    python benchmarks/images.py --sections views

Needs lightly and torchvision (benchmark-only: `pip install -e '.[bench]'`; on this machine in
a separate venv with torch 2.14.1 + torchvision 0.29.1, see BENCHMARKS.md). Sections:

  views   images/s of two views per image, nothing else. lightly: `SimCLRTransform` /
          `BYOLTransform` on PIL images in a DataLoader with 2 workers, decoding the PNGs
          every pass (as a lightly pipeline does). rayssl: the folder decoded once (the
          in-memory path; the decode time is reported apart), then `ImageViews` on whole
          (256, 3, 32, 32) batches in this process, 2 torch threads.
  step    images/s of whole SimCLR / BYOL training steps (views, forward, backward, optimizer
          step, BYOL's EMA) with the small `cnn2d` of configs/*_images.yaml: lightly-fed is a
          plain torch loop fed by that DataLoader (2 workers, 2 torch threads in the main
          process), rayssl is its own `Loop` in this process (2 torch threads). Same module,
          same loss, same batch.
  resnet  the same with ResNet-18 (stem cifar), batch 64, for information.
  ops     ATen ops per view of a batch (torch.profiler, CPU): on a GPU each is a kernel launch.
  stream  a Ray Data stream of 20,000 PNG files into a 2-worker rayssl run (in_memory false,
          4 epochs): resident memory of the driver and of each Ray Train worker, every second.

On the CPU by default. `--device cuda` runs the same sections on a GPU (views and steps on
the device; lightly's model and batches moved there, its DataLoader fed by
`--loader-workers` processes, page-locked), `--precision bf16` adds bf16 autocast and
channels_last on both sides (`performance.amp` / `channels_last` for rayssl). Each step is
timed to a `torch.cuda.synchronize()` on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_memory import stream_memory  # noqa: E402  (benchmarks/, beside this file)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "digits32"
BATCH = 256
DEVICE = torch.device("cpu")  # --device
LOADER_WORKERS = 2  # --loader-workers
BF16 = False  # --precision bf16: autocast + channels_last on both sides


def ssl_config(method: str, batch: int = BATCH, backbone: dict | None = None, graphs=True):
    """configs/<method>_images.yaml in one process (2 threads), without evaluation; on a GPU
    its views replayed as CUDA graphs, or (`graphs=False`) launched op by op."""
    from rayssl.config import load_train_config, validate_train_config

    raw = load_train_config(ROOT / "configs" / f"{method}_images.yaml").model_dump(mode="json")
    raw.update({"num_workers": 0, "cpus_per_worker": 2})
    if BF16:
        raw["performance"].update(amp="bf16", channels_last=True)
    if backbone:
        raw["backbone"] = backbone
    raw["data"]["batch_size"] = batch
    raw["data"]["path"] = str(DATA / "train")
    raw["data"]["test_path"] = None
    raw["data"]["augment"]["image"]["blur_p"] = 0.0 if method == "simclr" else [1.0, 0.1]
    raw["data"]["augment"]["image"]["cuda_graph"] = graphs
    raw["eval"]["every"] = 0
    return validate_train_config(raw)


# ============================================================================ lightly side


def lightly_transform(method: str):
    from lightly.transforms import BYOLTransform, SimCLRTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    if method == "simclr":
        # the paper's views at 32x32, no blur (as the issue measures lightly)
        return SimCLRTransform(input_size=32, gaussian_blur=0.0, min_scale=0.25, hf_prob=0.0)
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=32, min_scale=0.25, hf_prob=0.0),
        view_2_transform=BYOLView2Transform(input_size=32, min_scale=0.25, hf_prob=0.0),
    )


def lightly_loader(method: str, batch: int = BATCH):
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(DATA / "train"), transform=lightly_transform(method))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=LOADER_WORKERS,
        persistent_workers=True,
        pin_memory=DEVICE.type == "cuda",
    )


def lightly_views(method: str) -> dict:
    loader = lightly_loader(method)
    for _ in loader:  # warm-up pass: worker start-up, page cache
        pass
    started, images = time.perf_counter(), 0
    for (v0, _v1), _ in loader:
        images += len(v0)
    return {"images_per_s": images / (time.perf_counter() - started), "images": images}


def lightly_steps(method: str, cfg, steps: int, batch: int = BATCH) -> dict:
    from rayssl.methods.registry import build_method

    torch.manual_seed(0)
    model = build_method(cfg, (3, 32, 32), 10).to(DEVICE)
    layout = torch.channels_last if BF16 else torch.contiguous_format
    model.to(memory_format=layout)
    model.train()
    optimizer, _ = model.configure_optimizers(steps + 2, steps + 2)
    loader = lightly_loader(method, batch)
    autocast = torch.autocast(DEVICE.type, torch.bfloat16, enabled=BF16)
    total = steps + 2 + 2 * len(loader)

    def train(v0, v1, y, step):
        v0, v1 = (v.to(DEVICE, non_blocking=True, memory_format=layout) for v in (v0, v1))
        with autocast:
            loss = model.training_step(((v0, v1), y.to(DEVICE)))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_step_end(step, total)
        _sync()

    times, step, last = [], 0, time.perf_counter()
    while step < steps + 2:
        for (v0, v1), y in loader:
            step += 1
            train(v0, v1, y, step)
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if step == steps + 2:
                break
    per_step = statistics.median(times[2:])
    row = {"images_per_s": batch / per_step, "ms_per_step": per_step * 1e3, "steps": steps}
    if DEVICE.type == "cuda":  # a whole epoch: the loader's prefetched queue hides it above

        def epoch() -> int:
            nonlocal step
            for (v0, v1), y in loader:
                step += 1
                train(v0, v1, y, step)
            return len(loader) * batch

        epoch()  # warm-up: a new pass starts from empty queues, as each epoch does
        started = time.perf_counter()
        row["epoch_images_per_s"] = epoch() / (time.perf_counter() - started)
    return row


# ============================================================================ rayssl side


def rayssl_views(method: str, masked: bool | None = None, graphs: bool = True) -> dict:
    from rayssl.data import load_splits
    from rayssl.data.image_views import ImageViews

    cfg = ssl_config(method, graphs=graphs)
    started = time.perf_counter()
    splits = load_splits(cfg.data)
    decode_s = time.perf_counter() - started
    x = splits.train[0].to(DEVICE)
    views = [ImageViews(cfg.data.augment.image, v, masked) for v in (0, 1)]
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def one_pass() -> int:
        order = torch.randperm(len(x), generator=g, device=DEVICE)
        done = 0
        for i in range(0, len(x) - BATCH + 1, BATCH):
            batch = x[order[i : i + BATCH]]
            views[0](batch, g), views[1](batch, g)
            done += BATCH
        _sync()
        return done

    one_pass()  # warm-up
    started = time.perf_counter()
    images = one_pass()
    return {
        "images_per_s": images / (time.perf_counter() - started),
        "images": images,
        "decode_once_s": decode_s,
    }


def rayssl_steps(cfg, steps: int) -> dict:
    from rayssl.data import load_splits
    from rayssl.engine import build_loop

    splits = load_splits(cfg.data)
    loop = build_loop(cfg, splits, device=DEVICE)  # 2 torch threads (cpus_per_worker)
    loop.start_epoch()
    times, last = [], time.perf_counter()
    for _ in loop.iterate():
        _sync()
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if len(times) == steps + 2:
            break
    per_step = statistics.median(times[2:])
    batch = cfg.data.batch_size
    row = {"images_per_s": batch / per_step, "ms_per_step": per_step * 1e3, "steps": steps}
    if DEVICE.type == "cuda":  # a whole epoch, as the lightly side measures it
        epochs = build_loop(cfg, splits, device=DEVICE).epochs()
        next(epochs)  # warm-up
        started = time.perf_counter()
        next(epochs)
        _sync()
        row["epoch_images_per_s"] = loop.steps_per_epoch * batch / (time.perf_counter() - started)
    return row


VARIANTS = {  # rayssl's other rows, beside its default (graphs on a GPU)
    "rayssl-eager": "rayssl without CUDA graphs",
    "rayssl-gathered": "rayssl's CPU form of the views on the GPU",
}


def markdown(results: list[dict]) -> str:
    """BENCHMARKS.md's table of views and steps from result files (one per precision)."""
    lines = [
        "| precision | what | lightly | rayssl | rayssl / lightly |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        precision = result.get("precision", "fp32")
        for key, theirs in result.items():
            if not key.endswith("/lightly"):
                continue
            section, method, *rest = key.split("/")[:-1]
            ours = result[key.replace("/lightly", "/rayssl")]
            what = f"{method} {section} ({rest[0]})" if rest else f"{method} {section}"
            rate = "epoch_images_per_s" if "epoch_images_per_s" in theirs else "images_per_s"
            lines.append(
                f"| {precision} | {what}, images/s | {theirs[rate]:,.0f} | {ours[rate]:,.0f} "
                f"| {ours[rate] / theirs[rate]:.2f}x |"
            )
            for variant, label in VARIANTS.items():
                other = result.get(key.replace("/lightly", f"/{variant}"))
                if other:
                    lines.append(
                        f"| {precision} | {what}, {label} "
                        f"| | {other[rate]:,.0f} | {other[rate] / theirs[rate]:.2f}x |"
                    )
            if "ms_per_step" in theirs:
                lines.append(
                    f"| {precision} | {what}, median ms per step, batches prefetched "
                    f"| {theirs['ms_per_step']:.1f} | {ours['ms_per_step']:.1f} "
                    f"| {theirs['ms_per_step'] / ours['ms_per_step']:.2f}x |"
                )
    return "\n".join(lines)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    gpu = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "no GPU"
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, {gpu}"


def view_ops(method: str) -> dict:
    """ATen operator calls in one view of a (256, 3, 32, 32) batch, in both forms, and in
    one call of the hue op; on a GPU each call is about one kernel launch."""
    from torch.profiler import ProfilerActivity, profile

    from rayssl.data.image_views import ImageViews, _hue

    cfg = ssl_config(method).data.augment.image
    x = torch.rand(BATCH, 3, 32, 32)

    def count(fn) -> int:
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))

    g = torch.Generator().manual_seed(0)
    return {
        "sync_free": count(lambda: ImageViews(cfg, 0, masked=True)(x, g)),
        "gathered": count(lambda: ImageViews(cfg, 0, masked=False)(x, g)),
        "hue_once": count(lambda: _hue(x, torch.zeros(BATCH, 1, 1, 1))),
    }


# ============================================================================ main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/images-2core-cpu.json")
    parser.add_argument("--sections", nargs="+", default=["views", "step", "resnet", "stream"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stream-files", type=int, default=20_000)
    parser.add_argument("--stream-epochs", type=int, default=4)
    parser.add_argument("--stream-val-fraction", type=float, default=0.1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--loader-workers", type=int, default=2, help="lightly's DataLoader")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--markdown", nargs="+", metavar="RESULT", help="print BENCHMARKS.md's GPU table"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown([json.loads((ROOT / f).read_text()) for f in args.markdown]))
        return
    global DEVICE, LOADER_WORKERS, BF16
    DEVICE, LOADER_WORKERS = torch.device(args.device), args.loader_workers
    BF16 = args.precision == "bf16"
    torch.set_num_threads(2)
    if not DATA.exists():
        from rayssl.data.demo import write_digit_images

        write_digit_images(DATA)
    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if set(args.sections) - {"stream", "ops"}:  # these need only rayssl
        import lightly
        import torchvision

        versions.update(torchvision=torchvision.__version__, lightly=lightly.__version__)
    result: dict = {
        "machine": machine(),
        "versions": versions,
        "command": "python benchmarks/images.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "loader_workers": args.loader_workers,
        "precision": args.precision,
        "data": str(DATA.relative_to(ROOT)),
    }

    def show(key: str, value: dict) -> None:
        result[key] = value
        print(key, json.dumps({k: v for k, v in value.items() if k != "curve"}), flush=True)

    for method in ("simclr", "byol"):
        run_sections(method, args, show)
    if "stream" in args.sections:
        show(
            "stream", stream_memory(args.stream_files, args.stream_epochs, args.stream_val_fraction)
        )
    out = ROOT / args.out
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def run_sections(method: str, args: argparse.Namespace, show) -> None:
    """The per-method sections asked for (ops, views, step, resnet), each row to `show`."""
    if "ops" in args.sections:
        show(f"ops/{method}", view_ops(method))
    if "views" in args.sections:
        ours, theirs = rayssl_views(method), lightly_views(method)
        ours["vs_lightly"] = ours["images_per_s"] / theirs["images_per_s"]
        show(f"views/{method}/lightly", theirs)
        show(f"views/{method}/rayssl", ours)
        if DEVICE.type == "cuda":  # side by side: without graphs, and the CPU's form
            for variant, kwargs in (
                ("rayssl-eager", {"graphs": False}),
                ("rayssl-gathered", {"masked": False}),
            ):
                other = rayssl_views(method, **kwargs)
                other["vs_lightly"] = other["images_per_s"] / theirs["images_per_s"]
                show(f"views/{method}/{variant}", other)
    for section, batch, backbone in (
        ("step", BATCH, None),
        ("resnet", 64, {"name": "resnet18", "stem": "cifar"}),
    ):
        if section not in args.sections:
            continue
        net = "resnet18" if backbone else "cnn2d"
        steps = args.steps if section == "step" else max(2, args.steps // 3)
        theirs = lightly_steps(method, ssl_config(method, batch, backbone), steps, batch=batch)
        show(f"step/{method}/{net}/lightly", theirs)
        for variant, graphs in (("rayssl", True), ("rayssl-eager", False)):
            if variant == "rayssl-eager" and DEVICE.type != "cuda":
                continue  # graphs are a GPU's
            ours = rayssl_steps(ssl_config(method, batch, backbone, graphs), steps)
            ours["vs_lightly"] = ours["images_per_s"] / theirs["images_per_s"]
            show(f"step/{method}/{net}/{variant}", ours)


if __name__ == "__main__":
    main()
