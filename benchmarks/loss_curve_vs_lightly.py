"""DINO with a ViT: the training loss per epoch of rayssl's Loop in one process and of
lightly's example loop (benchmarks/lightly_vit.py) at the same settings
(configs/dino_vit_images.yaml on the 512 demo images, batch B, E epochs, lr warm-up E/10
epochs, one torch thread for rayssl's, two for lightly's). A diagnostic: whether both leave
or both settle at ln(out_dim), the uniform collapse.

    python benchmarks/loss_curve_vs_lightly.py 64 10 rayssl
    python benchmarks/loss_curve_vs_lightly.py 64 10 lightly
"""

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


def config(batch: int, epochs: int):
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
    ]
    return load_train_config("configs/dino_vit_images.yaml", overrides)


def rayssl_curve(cfg) -> list[float]:
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    loop = Loop(build_method(cfg, splits.sample_shape, splits.num_classes), splits, cfg)
    curve = []
    for _ in range(cfg.epochs):
        loop.start_epoch()  # announces the epoch to the method (the last layer's freeze)
        curve.append(statistics.mean(float(s.loss) for s in loop.iterate()))
        loop.state.epoch += 1
    return curve


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
    batch, epochs, side = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    cfg = config(batch, epochs)
    curve = rayssl_curve(cfg) if side == "rayssl" else lightly_curve(cfg)
    for epoch, loss in enumerate(curve):
        print(side, epoch, round(loss, 4), flush=True)


if __name__ == "__main__":
    main()
