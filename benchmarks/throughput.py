"""Step time of rayssl's loop against a bare torch loop, side by side in one run.

For each method (supervised, BYOL, SimCLR, LFR with K = 8 heads; `--methods mae dino_vit
ibot`: MAE, DINO and iBOT with a ViT-tiny on the demo images) on the same data, network
and global batch, this measures:

  bare      a plain torch loop in this process (1 thread): index a batch, augment (the
            local crops too, for DINO and iBOT), normalise, forward the method's training
            step, backward, clip as the config says (DINO's per-parameter loop),
            optimizer and LR-scheduler step, method hook
  ray-1     rayssl's per-worker `Loop` in a 1-worker Ray Train run (1 thread per worker)
  ray-2     the same with 2 workers, 1 thread each (each worker takes half the global batch)

and, in this process, two kernels the issue names:

  lfr-heads LFR's training step with K = 8 projectors and predictors vmapped, against the same
            math with a Python loop over the heads
  byol-ema  BYOL's fused EMA update (`torch._foreach_lerp_`) of a ResNet-18 target, against a
            per-parameter loop (as lightly / Minerva write it, and an in-place variant)

and the wall time from `rayssl train` start to its first optimizer step (a real subprocess).

What is timed: every optimizer step of the training epochs, from the end of the previous
step to the end of this one, so fetching and augmenting the batch, forward, backward,
optimizer and scheduler step and the method's hook are inside; evaluation, probes and
checkpoints are not (training steps only). A row's ms/step is the median of those per-step
times after the first epoch (warm-up). `lfr-heads` and `byol-ema` are medians of repeated
calls of the one operation, after warm-up calls.

    python benchmarks/throughput.py                       # everything, writes throughput.json
    python benchmarks/throughput.py --methods supervised --no-startup --epochs 3
    python benchmarks/throughput.py --methods mae dino_vit ibot --no-startup --no-kernels \
        --epochs 3 --set data.path=data/digits512/train --set data.test_path=null \
        --set data.batch_size=128      # the ViT rows on 512 demo images
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rayssl.config import load_train_config  # noqa: E402
from rayssl.data import Augment, load_splits  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.seeds import seed_everything  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "supervised": ROOT / "configs" / "supervised_mnist1d.yaml",
    "byol": ROOT / "configs" / "byol_mnist1d.yaml",
    "simclr": ROOT / "configs" / "simclr_mnist1d.yaml",
    "lfr": ROOT / "configs" / "lfr_mnist1d.yaml",
    # a ViT-tiny on 4-px patches of the 32-px demo images (`rayssl demo-images
    # data/digits32`; needs timm): MAE's step, the encoder on a quarter of the patches
    "mae": ROOT / "configs" / "mae_images.yaml",
    "dino_vit": ROOT / "configs" / "dino_vit_images.yaml",
    "ibot": ROOT / "configs" / "ibot_images.yaml",
}
DEFAULT_METHODS = ["supervised", "byol", "simclr", "lfr"]  # the CNN rows; the ViTs by name
LFR_K8 = ["lfr.num_projectors=8", "lfr.num_targets=null"]  # K = 8 heads, all of them trained


def bench_config(method: str, epochs: int, storage: str, extra: list[str] = ()):
    overrides = [
        *extra,
        f"epochs={epochs}",
        f"storage_path={storage}",
        "cpus_per_worker=1",
        "eval.every=0",
        "eval.linear_probe=false",
        "eval.online_linear=false",  # an extra head the bare loop does not train
        "data.val_fraction=0",
    ]
    if method == "lfr":
        overrides += LFR_K8
    return load_train_config(CONFIGS[method], overrides)


# ================================================================== bare torch loop


def bare_step_times(cfg, splits) -> list[float]:
    """Seconds per optimizer step of a plain loop, one entry per step (all epochs)."""
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.train()
    x, y = splits.train
    batch = cfg.data.batch_size
    steps_per_epoch = len(x) // batch
    total = cfg.epochs * steps_per_epoch
    optimizer, scheduler = method.configure_optimizers(total, steps_per_epoch)
    augment = Augment(cfg.data.augment)
    normalize = bare_normalizer(cfg, splits)
    clip = bare_clip(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    times, step = [], 0
    for epoch in range(cfg.epochs):
        method.on_training_epoch_start(epoch)
        order = torch.randperm(len(x), generator=generator)
        last = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = x[idx], y[idx]
            if method.num_views > 1:  # with the local crops of a multi-crop method
                multi_crop = getattr(method, "multi_crop", False)
                views = augment.views(xb, generator, method.num_views, multi_crop)
                inputs = tuple(normalize(v) for v in views)
            else:
                inputs = normalize(augment(xb, generator) if augment.active else xb)
            loss = method.training_step((inputs, yb))["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip(method)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            method.on_step_end(step, total)
            now = time.perf_counter()
            times.append(now - last)
            last = now
    return times


def bare_normalizer(cfg, splits):
    """The config's input normalisation, as a plain loop writes it."""
    from rayssl.data.datasets import channel_normalizer, input_statistics, sample_normalizer

    dims = len(splits.sample_shape)
    if cfg.data.normalize == "sample":
        return sample_normalizer(dims)
    return channel_normalizer(input_statistics(cfg.data, splits), dims)


def bare_clip(cfg):
    """The config's gradient clipping as the reference code writes it: DINO's and iBOT's
    `clip_gradients` (a Python loop, one norm per parameter), or torch's global clip."""
    if not cfg.grad_clip:
        return lambda method: None
    if cfg.grad_clip_mode == "per_parameter":

        def per_parameter(method) -> None:
            for p in method.parameters():
                if p.grad is not None:
                    coef = cfg.grad_clip / (p.grad.norm(2) + 1e-6)
                    if coef < 1:
                        p.grad.mul_(coef)

        return per_parameter
    return lambda method: torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)


# ================================================================== rayssl's loop on Ray


def timed_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: rayssl's own Loop (DDP, sharded sampler, views, hooks), timed per step."""
    from rayssl.cluster.worker import build_worker_loop

    loop, _ = build_worker_loop(config["args"])
    times: list[float] = []
    for _ in range(loop.cfg.epochs):
        loop.start_epoch()
        last = time.perf_counter()
        for _stats in loop.iterate():
            now = time.perf_counter()
            times.append(now - last)
            last = now
        loop.state.epoch += 1
    if loop.rank == 0:  # the driver reads this file (same machine)
        Path(config["times_file"]).write_text(json.dumps(times))


def ray_step_times(cfg, splits_ref, workers: int, storage) -> list[float]:
    from rayssl.cluster import build_trainer

    cfg = cfg.model_copy(update={"num_workers": workers})
    run = f"bench-{cfg.method}-{workers}w-{time.time_ns()}"
    trainer = build_trainer(cfg, splits_ref, storage, run, train_fn=timed_worker)
    times_file = Path(storage.uri) / f"{run}.json"
    trainer.train_loop_config["times_file"] = str(times_file)
    trainer.fit()
    return json.loads(times_file.read_text())


# ================================================================== kernels


def lfr_heads(cfg, splits, steps: int) -> dict[str, float]:
    """LFR training step, K = 8: vmapped heads against a Python loop over the same heads."""
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.train()
    looped = copy.deepcopy(method)
    method._projector_stack.loop = method._predictor_stack.loop = False
    looped._projector_stack.loop = looped._predictor_stack.loop = True
    x = splits.train[0][: cfg.data.batch_size]
    augment, g = Augment(cfg.data.augment), torch.Generator().manual_seed(0)
    views = (augment(x, g), augment(x, g))

    def per_step(m) -> float:
        optimizer, _ = m.configure_optimizers(steps * 2, steps)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = m.training_step((views, None))["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[steps // 4 :])

    with torch.no_grad():  # same math: both give the same loss on the same weights
        same = torch.allclose(
            method.training_step((views, None))["loss"],
            looped.training_step((views, None))["loss"],
            rtol=1e-4,
        )
    vmapped, loop = per_step(method), per_step(looped)
    return {
        "heads": len(method.predictors),
        "vmapped_ms": vmapped * 1e3,
        "python_loop_ms": loop * 1e3,
        "ratio": vmapped / loop,
        "same_loss": bool(same),
    }


def byol_ema(repeats: int) -> dict[str, float]:
    """EMA of a ResNet-18 (params and BN buffers) into its target, three ways."""
    from rayssl.methods.byol import update_momentum
    from rayssl.nets import resnet18

    torch.set_num_threads(1)
    online = resnet18((3, 32, 32))
    target = copy.deepcopy(online)
    m = 0.99

    def lightly_loop():  # lightly / Minerva: new tensors per parameter
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.data = t.data * m + o.data * (1.0 - m)

    def inplace_loop():  # per-parameter, but in place
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.data.mul_(m).add_(o.data, alpha=1.0 - m)

    def fused():
        update_momentum(online, target, m)

    def time_it(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    fused_s, lightly_s, inplace_s = time_it(fused), time_it(lightly_loop), time_it(inplace_loop)
    return {
        "tensors": sum(1 for _ in online.parameters()),
        "parameters": sum(p.numel() for p in online.parameters()),
        "fused_ms": fused_s * 1e3,
        "per_param_loop_ms": lightly_s * 1e3,
        "per_param_inplace_ms": inplace_s * 1e3,
        "speedup_vs_loop": lightly_s / fused_s,
        "speedup_vs_inplace_loop": inplace_s / fused_s,
        # bytes the fused lerp must move (read both, write the target), per second
        "fused_gb_per_s": 3 * 4 * sum(p.numel() for p in online.parameters()) / fused_s / 1e9,
    }


def startup(storage: str) -> float:
    """`rayssl train` (default supervised config, 2 workers, 1 epoch) in a fresh process:
    seconds from the command's start to its first optimizer step, as its summary reports."""
    cmd = [
        sys.executable,
        "-m",
        "rayssl.cli",
        "train",
        str(CONFIGS["supervised"]),
        "--set",
        "epochs=1",
        "--set",
        f"storage_path={storage}",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    summaries = sorted(Path(storage).glob("*/summary.json"), key=os.path.getmtime)
    return json.loads(summaries[-1].read_text())["start_to_first_step_s"]


# ================================================================== main


def summarize(times: list[float], skip: int, global_batch: int) -> dict[str, float]:
    ms = statistics.median(times[skip:]) * 1e3
    return {"ms_per_step": ms, "samples_per_s": global_batch / ms * 1e3, "steps": len(times)}


def kernels(args, storage_dir: str, results: dict[str, Any]) -> None:
    """The two kernels: LFR's vmapped heads and BYOL's fused EMA."""
    results["lfr_heads"] = {}
    for projector in ("backbone", "mlp"):  # random backbone copies (default) / the seed's MLPs
        lfr_cfg = bench_config("lfr", 1, storage_dir)
        lfr_cfg.lfr.projector = projector
        h = lfr_heads(lfr_cfg, load_splits(lfr_cfg.data, 0), steps=args.lfr_steps)
        results["lfr_heads"][projector] = h
        print(
            f"LFR K={h['heads']} ({projector} projectors): vmapped {h['vmapped_ms']:.1f} ms/step,"
            f" Python loop {h['python_loop_ms']:.1f} ms/step, ratio {h['ratio']:.2f}"
            f" (same loss: {h['same_loss']})",
            flush=True,
        )
    results["byol_ema"] = byol_ema(repeats=30)
    e = results["byol_ema"]
    print(
        f"BYOL EMA, ResNet-18 ({e['tensors']} tensors): fused {e['fused_ms']:.2f} ms, per-param "
        f"loop {e['per_param_loop_ms']:.2f} ms ({e['speedup_vs_loop']:.1f}x), in-place loop "
        f"{e['per_param_inplace_ms']:.2f} ms ({e['speedup_vs_inplace_loop']:.1f}x); fused moves "
        f"{e['fused_gb_per_s']:.1f} GB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement")
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--lfr-steps", type=int, default=20, help="steps per LFR-heads timing")
    parser.add_argument("--out", default="throughput.json")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for every method's run (e.g. data.path=..., data.batch_size)",
    )  # fmt: skip
    parser.add_argument("--no-kernels", action="store_true", help="skip lfr-heads, byol-ema")
    args = parser.parse_args()

    import ray

    from rayssl.runs.storage import Storage

    storage_dir = tempfile.mkdtemp(prefix="rayssl-bench-")
    storage = Storage.resolve(storage_dir)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "methods": {},
    }
    if not args.no_startup:  # first, before this process's Ray is up
        results["start_to_first_step_s"] = startup(storage_dir)
        print(f"start to first step: {results['start_to_first_step_s']:.1f} s", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for method in args.methods:
        cfg = bench_config(method, args.epochs, storage_dir, args.sets)
        splits = load_splits(cfg.data, cfg.seed)
        skip = len(splits.train[0]) // cfg.data.batch_size  # the first epoch warms up
        splits_ref = ray.put(splits)
        batch = cfg.data.batch_size
        row = {
            "global_batch": batch,
            "bare": summarize(bare_step_times(cfg, splits), skip, batch),
            "ray_1_worker": summarize(ray_step_times(cfg, splits_ref, 1, storage), skip, batch),
            "ray_2_workers": summarize(ray_step_times(cfg, splits_ref, 2, storage), skip, batch),
        }
        row["ratio_1_worker_vs_bare"] = (
            row["ray_1_worker"]["ms_per_step"] / row["bare"]["ms_per_step"]
        )
        row["speedup_2_workers_vs_bare"] = (
            row["bare"]["ms_per_step"] / row["ray_2_workers"]["ms_per_step"]
        )
        results["methods"][method] = row
        print(
            f"{method:>10}: bare {row['bare']['ms_per_step']:7.2f} ms/step"
            f"  ray-1 {row['ray_1_worker']['ms_per_step']:7.2f}"
            f"  ray-2 {row['ray_2_workers']['ms_per_step']:7.2f}"
            f"  | ray-1/bare {row['ratio_1_worker_vs_bare']:.3f}"
            f"  ray-2 speed-up {row['speedup_2_workers_vs_bare']:.2f}x"
            f"  ({row['ray_2_workers']['samples_per_s']:,.0f} samples/s)",
            flush=True,
        )
    ray.shutdown()

    if not args.no_kernels:
        kernels(args, storage_dir, results)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
