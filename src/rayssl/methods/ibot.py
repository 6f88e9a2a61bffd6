"""iBOT (Zhou et al. 2022): DINO's self-distillation of the CLS token across multi-crop
views, plus masked image modelling with an online tokenizer: the student sees its global
crops with blocks of patches replaced by a mask token and predicts, at each hidden patch,
the teacher's (the momentum copy's) distribution for that patch of the unmasked crop."""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from rayssl import distributed
from rayssl.errors import ConfigError
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.dino import DINO, SINKHORN_ITERATIONS, DINOConfig, _head
from rayssl.methods.heads import infer_features
from rayssl.methods.losses import sinkhorn
from rayssl.nets import vision_transformer as vits


class IBOTConfig(DINOConfig):
    """iBOT's ViT-S/16 defaults: one head shared by the CLS and patch tokens onto 8,192
    prototypes, the last layer not normalised, teacher temperatures 0.04 -> 0.07 for both
    tokens, half the global crops masked blockwise at a ratio drawn from 0.1-0.5."""

    out_dim: int = Field(8192, ge=2, description="prototypes (CLS and patch tokens share them)")
    norm_last_layer: bool = Field(False, description="prototype weights of norm 1 (frozen g)")
    teacher_temp: float = Field(0.07, gt=0.0, description="CLS, after the warm-up")
    teacher_patch_temp: float = Field(0.07, gt=0.0, description="patch tokens, after warm-up")
    warmup_teacher_patch_temp: float = Field(0.04, gt=0.0, description="patch tokens, step 0")
    patch_center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="patch centre's")
    mask_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the student's global crops that are masked"
    )
    mask_ratio: tuple[float, float] = Field(
        (0.1, 0.5), description="a masked crop hides a share of its patches drawn from this range"
    )
    mask_aspect_ratio: tuple[float, float] = Field(
        (0.3, 1 / 0.3), description="aspect ratios of the masked blocks (BEiT's)"
    )
    cls_weight: float = Field(1.0, ge=0.0, description="lambda1: the CLS tokens' loss")
    patch_weight: float = Field(1.0, ge=0.0, description="lambda2: the masked patches' loss")

    @model_validator(mode="after")
    def _ranges(self) -> IBOTConfig:
        low, high = self.mask_ratio
        if not 0 <= low <= high < 1:
            got = list(self.mask_ratio)
            raise ValueError(f"mask_ratio must be 0 <= low <= high < 1, got {got}")
        if not 0 < self.mask_aspect_ratio[0] <= self.mask_aspect_ratio[1]:
            raise ValueError("mask_aspect_ratio must be 0 < low <= high")
        return self


DEFAULTS = IBOTConfig()


def block_masks(
    batch: int,
    grid: tuple[int, int],
    probability: float,
    ratio: tuple[float, float],
    aspect: tuple[float, float],
) -> torch.Tensor:
    """(batch, h * w) bool, True where a patch is hidden: BEiT's blockwise masking as iBOT's
    code runs it. Each image is masked with `probability`, at a share drawn from `ratio`:
    rectangles of at least (min(h, w) // 3)^2 patches and a log-uniform aspect ratio in
    `aspect` are added, each only if it hides new patches without passing the share, until
    the share is reached or ten tries in a row add nothing.

    A sequential rejection loop per image, as the reference (it is not a tensor op); its
    draws come from a Python generator seeded from the rank's torch generator, which every
    checkpoint holds, so a resumed run hides the same patches."""
    rng = random.Random(int(torch.randint(2**62, (1,))))
    h, w = grid
    log_aspect = (torch.tensor(aspect).log()).tolist()
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        if rng.random() >= probability:
            continue
        target, count, mask = rng.uniform(*ratio) * h * w, 0, masks[b]
        while count < target:
            added = _add_block(mask, target - count, log_aspect, rng)
            if not added:
                break
            count += added
    return masks.flatten(1)


def _add_block(mask: torch.Tensor, room: float, log_aspect: list[float], rng) -> int:
    """One block of at most `room` new patches, in up to ten tries; the patches it added."""
    h, w = mask.shape
    for _ in range(10):
        area = rng.uniform((min(h, w) // 3) ** 2, room)
        aspect = pow(2.718281828459045, rng.uniform(*log_aspect))
        bh, bw = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if bh < h and bw < w:
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            block = mask[top : top + bh, left : left + bw]
            new = int(bh * bw - block.sum())
            if 0 < new <= room:
                block.fill_(True)
                return new
    return 0


class PatchLoss(nn.Module):
    """Masked image modelling against the online tokenizer: for each global crop, the
    cross-entropy between the teacher's centred, sharpened distribution at each patch of the
    unmasked crop and the student's at the same patch of the masked one, averaged over the
    hidden patches of each image (an image with none adds 0), then over images and crops.
    Its own centre (`center2` in iBOT's code) moves towards the teacher's mean patch logit
    over the global batch (all-reduced). `centering: sinkhorn_knopp`: instead, DINOv2's 3
    Sinkhorn-Knopp rounds over the hidden patches of the global batch (ranks hide different
    numbers of patches) and no centre."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float,
        center_momentum: float,
        centering: str = DEFAULTS.centering,
    ):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def targets(self, teacher: torch.Tensor, masks: torch.Tensor, teacher_temp: float):
        """The teacher's distributions at each patch, (G * B, N, K); under Sinkhorn-Knopp
        only the hidden patches' (the others are 0: the loss reads none of them)."""
        if self.centering != "sinkhorn_knopp":
            return F.softmax((teacher - self.center) / teacher_temp, dim=-1)
        targets = torch.zeros_like(teacher, dtype=torch.float32)
        targets[masks] = sinkhorn(teacher[masks], teacher_temp, SINKHORN_ITERATIONS)
        return targets

    def forward(self, student, teacher, masks, teacher_temp: float) -> torch.Tensor:
        """student, teacher: (G * B, N, K) patch logits; masks: (G * B, N) bool."""
        targets = self.targets(teacher, masks, teacher_temp)
        per_patch = -(targets * F.log_softmax(student / self.student_temp, dim=-1)).sum(-1)
        hidden = masks.float()
        per_image = (per_patch * hidden).sum(-1) / hidden.sum(-1).clamp(min=1.0)
        return per_image.mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        if self.centering == "sinkhorn_knopp":
            return
        total = teacher.mean(1).sum(0, keepdim=True).unsqueeze(0)
        count = torch.tensor([float(teacher.shape[0])], device=teacher.device)
        distributed.all_reduce_sum(total)
        distributed.all_reduce_sum(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


class IBOT(DINO):
    """DINO (student and momentum teacher, one head shared by the CLS token and the patch
    tokens, multi-crop, the CLS loss across views) plus the masked patches' loss on each
    global crop: loss = cls_weight * L_cls + patch_weight * L_patch. The backbone must be a
    ViT (`nets/vision_transformer.py`); the mask token is the student's own parameter.
    Masks come from the rank's generator; the patch teacher temperature warms up over the
    CLS one's `warmup_teacher_temp_steps`."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, **options: Any):
        if not vits.is_vit(backbone):
            raise ConfigError(
                f"ibot needs a ViT backbone (backbone.name: vit, or a timm ViT); "
                f"{type(backbone).__name__} is not one"
            )
        own = {k: options.pop(k) for k in _OWN if k in options}
        c = DEFAULTS.model_copy(update={**own, **{k: options[k] for k in _DINO if k in options}})
        # built directly, iBOT's defaults, not DINO's: one place, this module's section
        options.update({k: getattr(c, k) for k in _DINO})
        super().__init__(backbone, head or _head(infer_features(backbone), c), **options)
        self.patch_criterion = PatchLoss(
            self.criterion.center.shape[1],
            self.criterion.student_temp,
            c.patch_center_momentum,
            self.criterion.centering,
        )
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.patch = vits.patch_size(backbone)
        self.teacher_patch_temp = c.teacher_patch_temp
        self.warmup_teacher_patch_temp = c.warmup_teacher_patch_temp
        self.masking = (c.mask_probability, tuple(c.mask_ratio), tuple(c.mask_aspect_ratio))
        self.cls_weight, self.patch_weight = c.cls_weight, c.patch_weight

    def current_teacher_patch_temp(self) -> float:
        start, end = self.warmup_teacher_patch_temp, self.teacher_patch_temp
        if self.step >= self.warmup_teacher_temp_steps:
            return end
        return start + self.step / self.warmup_teacher_temp_steps * (end - start)

    def _tokens(self, network: nn.Module, head: nn.Module, x, masks=None):
        """(CLS tokens (B, D), CLS logits (B, K), patch logits (B, N, K)) of one crop size,
        one head pass."""
        mask_token = self.mask_token if masks is not None else None
        tokens = vits.encode(network, x, mask=masks, mask_token=mask_token)
        prefix = network.num_prefix_tokens
        out = head(torch.cat([tokens[:, 0], tokens[:, prefix:].flatten(0, 1)]))
        return tokens[:, 0], out[: len(x)], out[len(x) :].unflatten(0, (len(x), -1))

    def _loss(self, views, update_center: bool) -> torch.Tensor:
        crops = list(views)
        globals_ = torch.cat(crops[:2])
        grid = (globals_.shape[-2] // self.patch, globals_.shape[-1] // self.patch)
        masks = block_masks(len(globals_), grid, *self.masking).to(globals_.device)
        features, student_cls, student_patch = self._tokens(
            self.backbone, self.head, globals_, masks
        )
        locals_ = [self.head(self.backbone(torch.cat(crops[2:])).flatten(1))] if crops[2:] else []
        with torch.no_grad():
            _, teacher_cls, teacher_patch = self._tokens(
                self.backbone_momentum, self.head_momentum, globals_
            )
        cls = self.criterion(
            torch.cat([student_cls, *locals_]), teacher_cls, self.current_teacher_temp(), 2
        )
        patch = self.patch_criterion(
            student_patch, teacher_patch, masks, self.current_teacher_patch_temp()
        )
        if update_center:
            self.criterion.update_center(teacher_cls)
            self.patch_criterion.update_center(teacher_patch)
        return self.cls_weight * cls + self.patch_weight * patch + self.koleo_term(features)

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [*super()._trainable(), ("mask_token", self.mask_token)]

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        metrics = super().epoch_metrics(stage)
        if stage == "train":
            metrics["teacher_patch_temp"] = self.current_teacher_patch_temp()
        return metrics


# DINO's options whose iBOT default differs, or that the head needs
_DINO = ("out_dim", "teacher_temp", "warmup_teacher_temp", "student_temp", "center_momentum")
# the options IBOT takes beyond DINO's (its section's other keys DINO takes, or shape heads)
_OWN = (
    "teacher_patch_temp",
    "warmup_teacher_patch_temp",
    "patch_center_momentum",
    "mask_probability",
    "mask_ratio",
    "mask_aspect_ratio",
    "cls_weight",
    "patch_weight",
)


def build(parts: Parts) -> Method:
    """The method as its section configures it: DINO's head, shared by both token kinds."""
    vits.require_token_vit(parts.backbone, "ibot", parts.cfg.backbone.name)
    section = parts.section.model_dump()
    own = {k: section[k] for k in _OWN}
    head = _head(parts.features, parts.section)
    return IBOT(parts.backbone, head, **parts.options_for(DINO), **own, **parts.setup)


BUILTIN = Builtin(
    "ibot", IBOT, IBOTConfig, build, "iBOT (Zhou et al. 2022), DINO + masked patch tokens"
)
