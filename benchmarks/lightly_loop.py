"""The reference trainer of benchmarks/ssl_quality.py: a plain lightly loop (lightly's
transforms in a torch DataLoader with 2 workers, lightly's heads, losses, `update_momentum`
and `cosine_schedule`) at the settings of a rayssl config. `--lightly-views rayssl` feeds it
rayssl's batched views instead of lightly's transforms."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def lightly_transform(cfg, stats):
    """lightly's transforms with the rayssl config's view parameters; `stats`: the training
    set's channel (mean, std), as rayssl normalises."""
    from lightly.transforms import BYOLTransform, SimCLRTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    v = cfg.data.augment.image
    mean, std = (t.tolist() for t in stats)
    per_sample = cfg.data.normalize == "sample"  # then the loop standardises each image
    common = {
        "input_size": 32,
        "cj_prob": _per_view(v.jitter_p, 0),
        "cj_bright": v.brightness,
        "cj_contrast": v.contrast,
        "cj_sat": v.saturation,
        "cj_hue": v.hue,
        "min_scale": v.crop_scale[0],
        "random_gray_scale": _per_view(v.grayscale_p, 0),
        "sigmas": tuple(v.blur_sigma),
        "hf_prob": v.flip_p,
        "normalize": None if per_sample else {"mean": mean, "std": std},
    }
    if cfg.method == "simclr":
        return SimCLRTransform(gaussian_blur=_per_view(v.blur_p, 0), **common)
    views = [
        view(
            gaussian_blur=_per_view(v.blur_p, i),
            solarization_prob=_per_view(v.solarize_p, i),
            **common,
        )
        for i, view in enumerate((BYOLView1Transform, BYOLView2Transform))
    ]
    return BYOLTransform(view_1_transform=views[0], view_2_transform=views[1])


def _per_view(p, view: int) -> float:
    return p[view] if isinstance(p, list | tuple) else p


class LightlySimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, cfg):
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        c = cfg.simclr
        self.projection_head = SimCLRProjectionHead(_features(backbone), c.proj_hidden, c.proj_dim)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(1))


class LightlyBYOL(nn.Module):
    def __init__(self, backbone: nn.Module, cfg):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        c = cfg.byol
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(_features(backbone), c.proj_hidden, c.proj_dim)
        self.prediction_head = BYOLPredictionHead(c.proj_dim, c.pred_hidden, c.proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))

    def forward_momentum(self, x):
        z = self.projection_head_momentum(self.backbone_momentum(x).flatten(1))
        return z.detach()


def _features(backbone: nn.Module) -> int:
    with torch.no_grad():
        backbone.eval()
        width = backbone(torch.zeros(2, 3, 32, 32)).flatten(1).shape[1]
        backbone.train()
    return width


def rayssl_views(cfg, stats):
    """For `--lightly-views rayssl`: (a transform giving the clean image, a function making
    rayssl's two views of a batch, normalised as rayssl does). Isolates the views: the rest
    of the lightly loop stays as it is."""
    from torchvision.transforms import ToTensor

    from rayssl.data.augment import Augment

    augment = Augment(cfg.data.augment)
    mean, std = (t.view(1, -1, 1, 1) for t in stats)
    generator = torch.Generator().manual_seed(cfg.seed)

    def views(x):
        x0, x1 = augment.views(x, generator, 2)
        if cfg.data.normalize == "sample":
            return x0, x1  # the loop applies the instance norm
        return (x0 - mean) / std, (x1 - mean) / std

    return ToTensor(), views


def pretrain_lightly(
    cfg,
    stats,
    backbone_of: Callable,
    views: str = "lightly",
    device: str = "cpu",
    loader_workers: int = 2,
) -> tuple[nn.Module, dict]:
    """Train `backbone_of(cfg)` (the same initial weights as rayssl's) as lightly's own
    examples write the loop, on `device` (batches page-locked and moved there); (the
    backbone on the CPU, timing)."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.utils.scheduler import cosine_schedule

    from rayssl.optim.schedules import WarmupCosine  # the same LR schedule as rayssl's run

    torch.set_num_threads(2)
    started = time.perf_counter()
    backbone = backbone_of(cfg)
    simclr = cfg.method == "simclr"
    model = LightlySimCLR(backbone, cfg) if simclr else LightlyBYOL(backbone, cfg)
    model.to(device)
    channels_last = cfg.performance.channels_last  # as a lightly user would set it
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # performance.amp 'bf16' as a Lightning user sets precision="bf16-mixed": forward and loss
    # under autocast, weights float32
    bf16 = cfg.performance.amp == "bf16"
    online = [p for n, p in model.named_parameters() if "momentum" not in n]
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(online, lr=opt.lr, weight_decay=opt.weight_decay)
    transform, make_views = (
        rayssl_views(cfg, stats) if views == "rayssl" else (lightly_transform(cfg, stats), None)
    )
    loader = _loader(cfg, transform, loader_workers, pin_memory=device != "cpu")
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.lr_scheduler.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, 0.0))
    criterion = NTXentLoss(temperature=cfg.simclr.temperature) if simclr else None
    base, cosine = cfg.byol.base_momentum, NegativeCosineSimilarity()
    step, loss = 0, torch.zeros(())
    per_sample = cfg.data.normalize == "sample"
    model.train()
    for _epoch in range(cfg.epochs):
        for batch, _ in loader:
            x0, x1 = make_views(batch) if make_views else batch
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
            if per_sample:  # rayssl's data.normalize 'sample' is torch's instance norm
                x0, x1 = F.instance_norm(x0), F.instance_norm(x1)
            if channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                x1 = x1.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                if simclr:
                    loss = criterion(model(x0), model(x1))
                else:
                    momentum = cosine_schedule(step, total, base, 1.0)
                    loss = _byol_loss(model, cosine, x0, x1, momentum)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    last = float(loss.detach())  # waits for the device's last step
    wall = time.perf_counter() - started
    return model.backbone.cpu(), {
        "wall_s": round(wall, 1),
        "train_loss_last": round(last, 4),
        "epochs": cfg.epochs,
    }


def _loader(cfg, transform, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """The training folder through `transform` in `workers` processes, as lightly's examples
    load it (shuffled, last partial batch dropped)."""
    from torchvision.datasets import ImageFolder

    return torch.utils.data.DataLoader(
        ImageFolder(cfg.data.path, transform=transform),
        batch_size=cfg.data.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=pin_memory,
    )


def _byol_loss(model: LightlyBYOL, cosine: nn.Module, x0, x1, momentum: float) -> torch.Tensor:
    """lightly's BYOL step: the target updated first, one forward per view, the symmetric
    negative cosine similarity."""
    from lightly.models.utils import update_momentum

    update_momentum(model.backbone, model.backbone_momentum, m=momentum)
    update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
    p0, p1 = model(x0), model(x1)
    z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
    return 0.5 * (cosine(p0, z1) + cosine(p1, z0))
