"""DINO with a ViT: the training loss per epoch of rayssl's Loop in one process and of
lightly's example loop (benchmarks/lightly_vit.py) at the same settings
(configs/dino_vit_images.yaml on the 512 demo images, batch B, E epochs, lr warm-up E/10
epochs, one torch thread for rayssl's, two for lightly's). A diagnostic: whether both leave
or both settle at ln(out_dim), the uniform collapse.

    python benchmarks/loss_curve_vs_lightly.py 64 10 rayssl
    python benchmarks/loss_curve_vs_lightly.py 64 10 lightly
    python benchmarks/loss_curve_vs_lightly.py 64 10 rayssl dino.batch_norm=true  # + overrides
    python benchmarks/loss_curve_vs_lightly.py 64 10 rayssl --val data/digits-val/train
    python benchmarks/loss_curve_vs_lightly.py 64 10 rayssl --config configs/ibot_images.yaml

With `--val DIR` (rayssl only) a candidate recipe is also read out: ssl_quality's evaluator
(kNN, probe, feature rank) on DIR's images, fitted on the 512 training images, for the
trained backbone and for the random-init one. DIR is a validation set (e.g. `rayssl
demo-images data/digits-val --seed 7 --train 1000 --test 10`), never the test split.
"""

import argparse
import os
import statistics
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightly_vit  # noqa: E402  (benchmarks/, beside this file)
import ssl_quality  # noqa: E402
import torch  # noqa: E402
from lightly_loop import _loader  # noqa: E402

from rayssl.config import load_train_config  # noqa: E402
from rayssl.data import load_splits  # noqa: E402
from rayssl.engine import Loop  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.seeds import seed_everything  # noqa: E402

DINO_VIT = "configs/dino_vit_images.yaml"


def config(batch: int, epochs: int, extra: list[str] = (), path: str = DINO_VIT):
    overrides = [
        f"epochs={epochs}",
        "num_workers=1",
        "data.path=data/digits512/train",
        "data.test_path=null",
        f"data.batch_size={batch}",
        "eval.every=0",
        "eval.linear_probe=false",
        "eval.online_linear=false",
        "storage_path=/tmp/rayssl-loss-curve",
        f"lr_scheduler.warmup_epochs={max(1, epochs // 10)}",
        *extra,
    ]
    return load_train_config(path, overrides)


def rayssl_curve(cfg) -> tuple[list[float], torch.nn.Module]:
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    loop = Loop(build_method(cfg, splits.sample_shape, splits.num_classes), splits, cfg)
    curve = []
    for epoch in range(cfg.epochs):
        loop.start_epoch()  # announces the epoch to the method (the last layer's freeze)
        curve.append(statistics.mean(float(s.loss) for s in loop.iterate()))
        print("rayssl", epoch, round(curve[-1], 4), flush=True)
        loop.state.epoch += 1
    return curve, loop.method.backbone


def read_out(cfg, backbone: torch.nn.Module, val: str) -> None:
    """ssl_quality's evaluator on the validation images, trained against random init."""
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.data.test_path = val
    sets = ssl_quality.clean_sets(probe_cfg)
    for name, net in (("trained", backbone), ("random", ssl_quality.backbone_of(cfg))):
        print(name, ssl_quality.evaluate(net, sets), flush=True)


def lightly_curve(cfg) -> list[float]:
    from lightly.loss import DINOLoss

    seen, forward = [], DINOLoss.forward

    def recorded(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append(float(out))
        return out

    DINOLoss.forward = recorded
    stats = (torch.zeros(3), torch.ones(3))  # unused: the config normalises per image
    loader = partial(_loader, workers=1, pin_memory=False)
    lightly_vit.pretrain_lightly_vit(cfg, stats, ssl_quality.backbone_of, loader)
    per = len(seen) // cfg.epochs
    return [statistics.mean(seen[e * per : (e + 1) * per]) for e in range(cfg.epochs)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("batch", type=int)
    parser.add_argument("epochs", type=int)
    parser.add_argument("side", choices=["rayssl", "lightly"])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--val", help="a validation image folder to read the backbone on")
    parser.add_argument(
        "--config", default=DINO_VIT, help="rayssl's config (e.g. configs/ibot_images.yaml)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config(args.batch, args.epochs, args.overrides, args.config)
    if args.side == "lightly" and cfg.method != "dino":
        parser.error(f"--config: lightly's loop here is DINO's, not {cfg.method}'s")
    if args.side == "rayssl":
        backbone = rayssl_curve(cfg)[1]
        if args.val:
            read_out(cfg, backbone, args.val)
        return
    for epoch, loss in enumerate(lightly_curve(cfg)):
        print("lightly", epoch, round(loss, 4), flush=True)


if __name__ == "__main__":
    main()
