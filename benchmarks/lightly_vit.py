"""The ViT reference trainers of benchmarks/ssl_quality.py: MAE and DINO with a ViT as
lightly's own examples write them (lightly's `MaskedVisionTransformerTIMM`, MAE decoder,
`random_token_mask`, `patchify`; `DINOProjectionHead`, `DINOLoss`, `DINOTransform`,
`update_momentum`, `cosine_schedule`), at the settings of a rayssl config wherever lightly
takes them: the same timm ViT (rayssl's `backbone_of`, same seed), batch, optimizer, lr
schedule, epochs, mask ratio, decoder size and normalised-pixel loss (MAE), head sizes,
teacher temperatures and their warm-up, momentum, last-layer freeze and crops (DINO).

What lightly's loop does not do and rayssl's does (DINO's code, not its API): the
weight-decay schedule (here the config's start value throughout) and per-parameter
gradient clipping (none here). lightly's `MaskedVisionTransformerTIMM` re-initialises the
ViT as its MAE example does (fixed sine-cosine position embedding)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LIGHTLY_VIT_LOOPS = ("mae", "dino_vit")


class LightlyMAE(nn.Module):
    """lightly's MAE example with the config's mask ratio and decoder."""

    def __init__(self, vit: nn.Module, cfg):
        import warnings

        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        super().__init__()
        c = cfg.mae
        self.mask_ratio, self.norm_pix_loss = c.mask_ratio, c.norm_pix_loss
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        with warnings.catch_warnings():  # 1.6 names a successor without embed/predict
            warnings.simplefilter("ignore")
            self.decoder = MAEDecoderTIMM(  # what lightly's MAE example builds
                num_patches=vit.patch_embed.num_patches,
                patch_size=self.patch_size,
                embed_dim=vit.embed_dim,
                decoder_embed_dim=c.decoder_dim,
                decoder_depth=c.decoder_depth,
                decoder_num_heads=c.decoder_heads,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The loss: mean squared error on the masked patches' (normalised) pixels."""
        from lightly.models import utils

        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(b, self.sequence_length), mask_ratio=self.mask_ratio, device=images.device
        )
        encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
        predicted = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        if self.norm_pix_loss:  # MAE's default: each patch's pixels standardised
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return F.mse_loss(predicted, target)


class LightlyDINO(nn.Module):
    """lightly's DINO example: student and teacher backbones with `DINOProjectionHead`s."""

    def __init__(self, vit: nn.Module, cfg):
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        c = cfg.dino
        head = {
            "input_dim": vit.embed_dim,
            "hidden_dim": c.hidden_dim,
            "bottleneck_dim": c.bottleneck_dim,
            "output_dim": c.out_dim,
            "batch_norm": c.batch_norm,
        }
        self.student_backbone = vit
        self.student_head = DINOProjectionHead(**head, freeze_last_layer=c.freeze_last_layer_epochs)
        self.teacher_backbone = copy.deepcopy(vit)
        self.teacher_head = DINOProjectionHead(**head)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1)).detach()


def mae_transform(cfg):
    """lightly's `MAETransform` at the config's size and crop scale, without its horizontal
    flip where the config has none (flip_p 0: digits are not mirror images of themselves)."""
    from lightly.transforms import MAETransform

    v = cfg.data.augment.image
    transform = MAETransform(input_size=32, min_scale=v.crop_scale[0], normalize=None)
    if not v.flip_p:
        steps = transform.transform.transforms
        transform.transform.transforms = [s for s in steps if "Flip" not in type(s).__name__]
    return transform


def dino_transform(cfg, stats):
    """lightly's `DINOTransform` with the config's crops and view parameters."""
    from lightly.transforms import DINOTransform

    v, local = cfg.data.augment.image, cfg.data.augment.image.local_crops
    mean, std = (t.tolist() for t in stats)
    per_view = lambda p, i: p[i] if isinstance(p, list | tuple) else p  # noqa: E731
    return DINOTransform(
        global_crop_size=32,
        global_crop_scale=tuple(v.crop_scale),
        local_crop_size=local.size,
        local_crop_scale=tuple(local.scale),
        n_local_views=local.number,
        hf_prob=v.flip_p,
        cj_prob=per_view(v.jitter_p, 0),
        cj_bright=v.brightness,
        cj_contrast=v.contrast,
        cj_sat=v.saturation,
        cj_hue=v.hue,
        random_gray_scale=per_view(v.grayscale_p, 0),
        gaussian_blur=tuple(per_view(v.blur_p, i) for i in (0, 1, 1)),
        sigmas=tuple(v.blur_sigma),
        solarization_prob=per_view(v.solarize_p, 1),
        normalize=None if cfg.data.normalize == "sample" else {"mean": mean, "std": std},
    )


def pretrain_lightly_vit(
    cfg, stats, backbone_of: Callable, loader_of: Callable, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Train the config's ViT by lightly's MAE or DINO example loop; (the ViT on the CPU,
    timing). `loader_of(cfg, transform)`: the same DataLoader as the CNN loops'."""
    from lightly.loss import DINOLoss
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from rayssl.optim.schedules import WarmupCosine  # the same LR schedule as rayssl's run

    torch.set_num_threads(2)
    started = time.perf_counter()
    mae = cfg.method == "mae"
    model = (LightlyMAE if mae else LightlyDINO)(backbone_of(cfg), cfg).to(device)
    opt = cfg.optimizer
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trained, lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas)
    )
    loader = loader_of(cfg, mae_transform(cfg) if mae else dino_transform(cfg, stats))
    steps_per_epoch, step, loss = len(loader), 0, torch.zeros(())
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.lr_scheduler.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, 0.0))
    if not mae:
        c = cfg.dino
        criterion = DINOLoss(output_dim=c.out_dim, warmup_teacher_temp=c.warmup_teacher_temp)
    per_sample = cfg.data.normalize == "sample"  # rayssl's 'sample' is torch's instance norm
    model.train()
    for epoch in range(cfg.epochs):
        for views, _ in loader:
            views = views if isinstance(views, list) else [views]
            views = [v.to(device) for v in views]
            views = [F.instance_norm(v) for v in views] if per_sample else views
            if mae:
                loss = model(views[0])
            else:
                momentum = cosine_schedule(step, total, c.base_momentum, 1.0)
                update_momentum(model.student_backbone, model.teacher_backbone, m=momentum)
                update_momentum(model.student_head, model.teacher_head, m=momentum)
                ramp = min(step / max(c.warmup_teacher_temp_steps, 1), 1.0)
                temp = c.warmup_teacher_temp + ramp * (c.teacher_temp - c.warmup_teacher_temp)
                teacher = [model.forward_teacher(v) for v in views[:2]]
                loss = criterion(teacher, [model(v) for v in views], teacher_temp=temp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not mae:
                model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
            optimizer.step()
            scheduler.step()
            step += 1
    last = float(loss.detach())
    wall = time.perf_counter() - started
    vit = model.backbone.vit if mae else model.student_backbone
    return vit.cpu(), {
        "wall_s": round(wall, 1),
        "train_loss_last": round(last, 4),
        "epochs": cfg.epochs,
        "samples_per_s": round(total * cfg.data.batch_size / wall, 1),
    }
