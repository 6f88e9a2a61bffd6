"""`rayssl eval` in channels_last (the default for images) against the plain layout.

    python benchmarks/eval_layout.py [--config configs/simclr_images.yaml] [--rounds 2]
        [--out benchmarks/results/eval_layout-2core-cpu.json]
    python benchmarks/eval_layout.py --side 224 --images 1000 \
        --out benchmarks/results/eval_layout-224-2core-cpu.json

A run of `--config` trained one epoch in Ray Train's local mode (its weights only need to
exist; the probes' cost does not depend on how well it learned), then `rayssl eval RUN` as a
user runs it, in a fresh process each time, alternating `RAYSSL_INFERENCE_LAYOUT` unset
(channels_last) and `contiguous`, `--rounds` times. Each row: the command's wall time and its
probes' accuracies (the same features up to float rounding, so the same accuracies up to a
tie). The demo's config embeds its 5,000 training and 1,000 test images of 32 px.

`--side 224`: `--images` training and a fifth as many test JPEGs of 224 px from `rayssl
demo-images`, and `embed_scale.py`'s backbone (ResNet-18 with its ImageNet stem, trained one
short epoch on 64 of them); its checkpoint is copied with its config pointed at the whole
folder (the probes' fit set and the test split, streamed: `in_memory: false`), and that copy
is evaluated. Streamed, because an in-memory image split is decoded as (H, W, C) arrays and
permuted without a copy, so its batches are channels_last in memory whatever the layout
switch says (and the convolutions follow the input's layout); streamed batches arrive as
contiguous (N, C, H, W). `--in-memory` evaluates the splits decoded in memory instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(config: str, storage: Path) -> Path:
    storage.mkdir()
    command = [
        sys.executable, "-m", "rayssl.cli", "train", config, "--set", "epochs=1",
        "--set", "num_workers=0", "--set", "eval.every=0", "--set", f"storage_path={storage}",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    (run,) = storage.iterdir()
    return run


def at_224(work: Path, images: int, in_memory: bool = False) -> Path:
    """A checkpoint of ResNet-18 whose config reads a folder of `images` 224-px JPEGs."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import embed_scale

    from rayssl.data.demo import write_digit_images
    from rayssl.inference.evaluate import read_run_state
    from rayssl.runs.state import STATE_FILE

    folder = work / "set"
    write_digit_images(folder, train=images, test=images // 5, seed=0, size=224,
                       image_format="jpeg")  # fmt: skip
    spec = {"name": "resnet18", "stem": "imagenet"}
    source = embed_scale.train_source(folder / "train", work, spec, 224)
    state, _ = read_run_state(source, "the source run")  # its newest checkpoint
    data = state["config"]["data"]
    # streamed (Ray Data decodes, batches arrive as contiguous NCHW): an in-memory split is
    # decoded as (H, W, C) and permuted without a copy, already channels_last in memory
    data.update(path=str(folder / "train"), test_path=str(folder / "test"), eval_batch_size=64)
    if not in_memory:
        data["in_memory"] = False
        state["config"]["num_workers"] = 1  # (a local-mode run holds its data in memory)
    (work / "ckpt").mkdir()
    torch.save(state, work / "ckpt" / STATE_FILE)
    return work / "ckpt"


def evaluate(run: Path, layout: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAYSSL_INFERENCE_LAYOUT"}
    if layout:
        env["RAYSSL_INFERENCE_LAYOUT"] = layout
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "eval", str(run)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    words = done.stdout.strip().splitlines()[-1].split()
    metrics = dict(zip(words[::2], map(float, words[1::2]), strict=True))
    return {"layout": layout or "channels_last", "wall_s": round(wall, 2), **metrics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/simclr_images.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--side", type=int, choices=[32, 224], default=32)
    parser.add_argument("--images", type=int, default=1000, help="--side 224: training images")
    parser.add_argument(
        "--in-memory", action="store_true", help="--side 224: the splits decoded in memory"
    )
    parser.add_argument("--out", default="benchmarks/results/eval_layout-2core-cpu.json")
    args = parser.parse_args()
    result = {"command": "python " + " ".join(sys.argv), "machine": "2-core CPU", "rows": []}
    with tempfile.TemporaryDirectory(prefix="rayssl-evallayout-") as tmp:
        work = Path(tmp)
        if args.side == 224:
            run = at_224(work, args.images, args.in_memory)
        else:
            run = train(args.config, work / "runs")
        for _ in range(args.rounds):
            for layout in (None, "contiguous"):
                result["rows"].append(evaluate(run, layout))
                print(json.dumps(result["rows"][-1]), flush=True)
    walls = {
        name: sorted(r["wall_s"] for r in result["rows"] if r["layout"] == name)
        for name in ("channels_last", "contiguous")
    }
    result["median_wall_s"] = {k: v[len(v) // 2] for k, v in walls.items()}
    result["contiguous_over_channels_last"] = round(
        result["median_wall_s"]["contiguous"] / result["median_wall_s"]["channels_last"], 2
    )
    print(json.dumps({k: result[k] for k in ("median_wall_s", "contiguous_over_channels_last")}))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
