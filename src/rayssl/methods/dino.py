"""DINO (Caron et al. 2021): a student matches a momentum teacher's centred, sharpened
distribution over prototypes, across multi-crop views; no negatives, no predictor."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from rayssl import distributed
from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import backbone_by_crop_size, infer_features
from rayssl.methods.losses import koleo, sinkhorn
from rayssl.methods.momentum import deactivate_requires_grad, update_momentum
from rayssl.optim.groups import exempt_saved_group, weights_decay_only
from rayssl.optim.schedules import cosine_schedule


class DINOConfig(MethodConfig):
    """DINO's defaults (Caron et al. 2021, ResNet-50 / ViT-S recipes)."""

    out_dim: int = Field(65536, ge=2, description="prototypes of the head's last layer")
    hidden_dim: int = Field(2048, ge=1, description="head MLP width")
    bottleneck_dim: int = Field(256, ge=1, description="head output before the prototypes")
    norm_last_layer: bool = Field(True, description="prototype weights of norm 1 (frozen g)")
    batch_norm: bool = Field(
        False,
        description="BatchNorm after the head's hidden layers (the reference code's "
        "use_bn_in_head); small CNNs need it (docs/methods.md)",
    )
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.04, gt=0.0, description="after the warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0.0, description="at step 0")
    warmup_teacher_temp_steps: int = Field(
        0, ge=0, description="global optimizer steps of the linear teacher-temperature warm-up"
    )
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="of the teacher's centre")
    centering: Literal["mean", "sinkhorn_knopp"] = Field(
        "mean",
        description="the teacher's targets: its logits less a running centre (DINO's), or "
        "Sinkhorn-Knopp over the global batch's global crops (DINOv2's sinkhorn_knopp; "
        "iBOT: over its hidden patches too)",
    )
    koleo_weight: float = Field(
        0.0,
        ge=0.0,
        description="DINOv2's KoLeo regulariser on the student's backbone features of each "
        "global crop (its ViT recipes: 0.1); 0: off",
    )
    freeze_last_layer_epochs: int = Field(
        1, ge=0, description="epochs at the start in which the prototypes do not learn"
    )
    base_momentum: float = Field(
        0.996, ge=0.0, le=1.0, description="teacher momentum at step 0, rising to 1"
    )
    schedule: int | None = Field(None, ge=1, description="optimizer steps; null: the whole run")


DEFAULTS = DINOConfig()  # the class's defaults are its section's


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU between), L2 normalisation, then a
    weight-normalised linear layer onto `out_dim` prototypes whose norm is fixed at 1 when
    `norm_last_layer` (the paper's default, which stabilises training).

    `batch_norm` puts a BatchNorm after each hidden Linear (the reference code's
    `use_bn_in_head`, off for ViTs). A CNN's pooled ReLU features share one large mean
    direction; without it every sample's bottleneck output points the same way, centring
    removes all that is left and training collapses to the uniform distribution (loss
    ln(out_dim)); docs/methods.md has the measurement."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = DEFAULTS.out_dim,
        hidden_dim: int = DEFAULTS.hidden_dim,
        bottleneck_dim: int = DEFAULTS.bottleneck_dim,
        norm_last_layer: bool = DEFAULTS.norm_last_layer,
        batch_norm: bool = DEFAULTS.batch_norm,
    ):
        super().__init__()

        def hidden(width_in: int) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            return [nn.Linear(width_in, hidden_dim), *norm, nn.GELU()]

        self.mlp = nn.Sequential(
            *hidden(in_dim), *hidden(hidden_dim), nn.Linear(hidden_dim, bottleneck_dim)
        )
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's and the student's distributions over views.

    teacher: (G*B, K) logits of the G global crops, student: (V*B, K) logits of all V crops
    (globals first). With p_t = softmax((teacher - center) / t_teacher) (`centering:
    sinkhorn_knopp`: p_t = DINOv2's 3 Sinkhorn-Knopp rounds on exp(teacher / t_teacher)
    over all G*B rows, their sums all-reduced, no centre) and
    log p_s = log_softmax(student / t_student):
    loss = mean over pairs (g, v), v != g, of mean_b sum_k -p_t[g] * log p_s[v].
    The centre is a buffer: after each training step it moves towards the mean teacher
    logit of the global batch (all-reduced), centre <- m * centre + (1 - m) * mean.
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = DEFAULTS.student_temp,
        center_momentum: float = DEFAULTS.center_momentum,
        centering: str = DEFAULTS.centering,
    ):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.centering = centering
        # kept under Sinkhorn-Knopp too, unused, so a checkpoint loads whichever is chosen
        self.register_buffer("center", torch.zeros(1, out_dim))

    def targets(self, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The teacher's distributions, (G*B, K), no gradient."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn(teacher, teacher_temp, SINKHORN_ITERATIONS)
        return F.softmax((teacher - self.center) / teacher_temp, dim=-1)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float, globals_: int
    ) -> torch.Tensor:
        batch = teacher.shape[0] // globals_
        targets = self.targets(teacher, teacher_temp).chunk(globals_)
        log_probs = F.log_softmax(student / self.student_temp, dim=-1).split(batch)
        losses = [
            -(t * log_probs[v]).sum(-1).mean()
            for g, t in enumerate(targets)
            for v in range(len(log_probs))
            if v != g
        ]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        if self.centering == "sinkhorn_knopp":
            return
        total = teacher.sum(0, keepdim=True)
        count = torch.tensor([float(teacher.shape[0])], device=teacher.device)
        distributed.all_reduce_sum(total)
        distributed.all_reduce_sum(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


SINKHORN_ITERATIONS = 3  # DINOv2's, fixed in its code


def _head(features: int, c: DINOConfig) -> DINOHead:
    return DINOHead(
        features, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.norm_last_layer, c.batch_norm
    )


class DINO(Method):
    """Student = backbone + DINOHead; teacher = momentum copies of both (BYOL's fused EMA,
    momentum on a cosine from `base_momentum` to 1 over global steps). The teacher sees the
    two global crops, the student every crop (multi-crop: `augment.image.local_crops`).
    The teacher temperature rises linearly from `warmup_teacher_temp` to `teacher_temp` over
    `warmup_teacher_temp_steps` global optimizer steps, so a resumed run continues the same
    curve. The head's last layer (the prototypes) does not learn during the first
    `freeze_last_layer_epochs` epochs, as in the paper. Batches are
    `((global0, global1, local0, ...), y)`; y is ignored."""

    num_views = 2  # global crops; the loop appends the local ones
    multi_crop = True

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        out_dim: int = DEFAULTS.out_dim,
        student_temp: float = DEFAULTS.student_temp,
        teacher_temp: float = DEFAULTS.teacher_temp,
        warmup_teacher_temp: float = DEFAULTS.warmup_teacher_temp,
        warmup_teacher_temp_steps: int = DEFAULTS.warmup_teacher_temp_steps,
        center_momentum: float = DEFAULTS.center_momentum,
        centering: str = DEFAULTS.centering,
        koleo_weight: float = DEFAULTS.koleo_weight,
        base_momentum: float = DEFAULTS.base_momentum,
        schedule: int | None = DEFAULTS.schedule,
        freeze_last_layer_epochs: int = DEFAULTS.freeze_last_layer_epochs,
        **setup: Any,
    ):
        """`setup`: `learning_rate`, `optimizer`, `optimizer_kwargs`, `lr_scheduler`,
        `lr_scheduler_kwargs`, as every method."""
        super().__init__()
        self.backbone = backbone
        self.head = head or _head(
            infer_features(backbone), DEFAULTS.model_copy(update={"out_dim": out_dim})
        )
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = DINOLoss(out_dim, student_temp, center_momentum, centering)
        self.koleo_weight = koleo_weight
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_steps = warmup_teacher_temp_steps
        self.base_momentum, self.schedule_length = base_momentum, schedule
        self.momentum, self.step = base_momentum, 0
        self.freeze_last_layer_epochs, self.epoch = freeze_last_layer_epochs, 0
        self.take_setup(**setup)

    def current_teacher_temp(self) -> float:
        if self.step >= self.warmup_teacher_temp_steps:
            return self.teacher_temp
        share = self.step / self.warmup_teacher_temp_steps
        return self.warmup_teacher_temp + share * (self.teacher_temp - self.warmup_teacher_temp)

    def koleo_term(self, global_features: torch.Tensor) -> torch.Tensor | float:
        """koleo_weight * the KoLeo term of each global crop's features, summed over the
        crops as DINOv2 does; this rank's rows only, as its code (a per-device batch)."""
        if self.koleo_weight == 0:
            return 0.0
        return self.koleo_weight * sum(koleo(f) for f in global_features.chunk(2))

    def _loss(self, views, update_center: bool) -> torch.Tensor:
        crops = list(views)
        features = backbone_by_crop_size(self.backbone, crops)
        student = self.head(features)  # one head pass
        with torch.no_grad():
            teacher = self.head_momentum(self.backbone_momentum(torch.cat(crops[:2])).flatten(1))
        loss = self.criterion(student, teacher, self.current_teacher_temp(), globals_=2)
        if update_center:
            self.criterion.update_center(teacher)
        return loss + self.koleo_term(features[: 2 * len(crops[0])])

    def training_step(self, batch):
        return {"loss": self._loss(batch[0], update_center=True)}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0], update_center=False)}

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        named = [*self.backbone.named_parameters(), *self.head.named_parameters()]
        return [(name, p) for name, p in named if p.requires_grad]

    def param_groups(self):
        """As DINO's code (`get_params_groups`): weights decay (and follow the weight-decay
        schedule, 0.04 -> 0.4), biases and norm parameters never do."""
        return weights_decay_only(self._trainable())

    def upgrade_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state saved when DINO had one param group (every parameter decayed): its
        per-parameter state goes to the same parameters, now split in two groups."""
        if len(state["param_groups"]) != 1:
            return state
        (old,) = state["param_groups"]
        trainable = self._trainable()
        if len(old["params"]) != len(trainable):
            return state  # not that layout: the optimizer's own check speaks
        ids = dict(zip([id(p) for _, p in trainable], old["params"], strict=True))
        groups = []
        for group in self.param_groups():
            saved = {**old, "params": [ids[id(p)] for p in group["params"]]}
            if group.get("weight_decay") == 0.0:
                exempt_saved_group(saved)
            groups.append(saved)
        return {**state, "param_groups": groups}

    def on_training_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_after_backward(self) -> None:
        """The paper's first-epoch freeze of the prototypes: their gradients are dropped
        (the optimizer skips them, weight decay included) while the rest of the head and
        the backbone learn, which keeps early training from collapsing onto few
        prototypes. Keyed to the epoch the loop announces, so a resumed run agrees."""
        if self.epoch < self.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.step = step
        length = self.schedule_length or total_steps
        self.momentum = cosine_schedule(step, length, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, self.momentum)
        update_momentum(self.head, self.head_momentum, self.momentum)

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        if stage != "train":
            return {}
        return {"momentum": float(self.momentum), "teacher_temp": self.current_teacher_temp()}

    def extra_state(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "step": self.step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.momentum, self.step = state["momentum"], state["step"]


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    head = _head(parts.features, parts.section)
    return DINO(parts.backbone, head=head, **parts.options_for(DINO), **parts.setup)


BUILTIN = Builtin("dino", DINO, DINOConfig, build, "DINO (Caron et al. 2021), multi-crop")
