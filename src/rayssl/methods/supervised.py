"""Supervised training of backbone + head."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from rayssl import distributed, nets
from rayssl.config.base import MethodConfig
from rayssl.errors import ConfigError
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.nets import vision_transformer
from rayssl.optim import groups as optim_groups

if TYPE_CHECKING:
    from torchmetrics import Metric, MetricCollection


CLASS_SCORES = ("accuracy", "f1", "precision", "recall")


class ClassScores:
    """Accuracy (the share of correct predictions) and macro F1, precision and recall over
    every update of every rank since `reset`, from a confusion matrix kept on the device.
    Macro averages skip a class that is neither a target nor a prediction (torchmetrics'
    rule); a class's score whose denominator is 0 counts as 0.

    Hand-written, not torchmetrics (tests check the scores against it): importing
    torchmetrics 1.9 costs about 1.7 s of every worker's start-up (its `__init__` imports
    scipy.signal, torchvision and matplotlib whenever they are installed:
    Lightning-AI/torchmetrics#3457, open), and its class statistics count with
    `torch.bincount`, which reads the input's maximum back on CUDA, a device sync per step;
    `index_add_` into a confusion matrix reads nothing back."""

    def __init__(self, names: list[str], num_classes: int, prefix: str = ""):
        unknown = set(names) - set(CLASS_SCORES)
        if unknown:
            raise ValueError(f"unknown class scores {sorted(unknown)}: choose from {CLASS_SCORES}")
        self.names, self.num_classes, self.prefix = list(names), num_classes, prefix
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Count (target, argmax of `scores`) pairs; nothing is read back."""
        if self.counts.device != scores.device:  # follows the model to its device
            self.counts = self.counts.to(scores.device)
        cells = target.to(self.counts.device) * self.num_classes + scores.argmax(dim=1)
        self.counts.index_add_(0, cells, torch.ones_like(cells))

    def compute(self) -> dict[str, float]:
        """The scores over every rank: one all-reduce and one read (every rank calls this)."""
        matrix = distributed.all_reduce_sum(self.counts.clone()).view(self.num_classes, -1)
        matrix = matrix.double().cpu()
        hits = matrix.diagonal()
        targets, predictions = matrix.sum(dim=1), matrix.sum(dim=0)
        present = (targets + predictions) > 0

        def macro(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
            score = torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)
            return float(score[present].mean()) if present.any() else 0.0

        every = {
            "accuracy": float(hits.sum() / matrix.sum()) if matrix.sum() else 0.0,
            "f1": macro(2 * hits, targets + predictions),
            "precision": macro(hits, predictions),
            "recall": macro(hits, targets),
        }
        return {f"{self.prefix}{n}": every[n] for n in self.names}

    def reset(self) -> None:
        self.counts.zero_()


class SimpleSupervisedModel(Method):
    """backbone -> adapter (optional) -> flatten (optional) -> fc, trained on `loss_fn`.

    Batches are `(x, y)`. A stage's metrics are a `ClassScores` (what `rayssl train` builds)
    or a dict of torchmetrics metrics (Minerva's API), reported as `train_<name>`,
    `val_<name>`, `test_<name>`; the loop reports `<stage>_loss`. Both reduce over all ranks
    under DDP, so a metric is the global one. With `mix`, a training batch becomes
    `mix(x, y)`, mixed inputs and soft targets (timm's `Mixup`: mixup / cutmix), trained on
    soft-target cross-entropy.
    """

    def __init__(
        self,
        backbone: nn.Module,
        fc: nn.Module,
        loss_fn: nn.Module,
        adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learning_rate: float = 1e-3,
        flatten: bool = True,
        train_metrics: dict[str, Metric] | ClassScores | None = None,
        val_metrics: dict[str, Metric] | ClassScores | None = None,
        test_metrics: dict[str, Metric] | ClassScores | None = None,
        freeze_backbone: bool = False,
        feature_norm: nn.Module | None = None,
        backbone_lr_scale: float = 1.0,
        layer_decay: float | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.fc = fc
        self.loss_fn = loss_fn
        self.adapter = adapter
        self.flatten = flatten
        self.freeze_backbone = freeze_backbone
        self.feature_norm = feature_norm  # e.g. BatchNorm1d(affine=False): standardised features
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay
        # a training batch mixed into (inputs, soft targets), e.g. timm's Mixup; its targets
        # carry their own smoothing, so the loss on them is plain soft-target cross-entropy
        self.mix = mix
        self.soft_loss = nn.CrossEntropyLoss()
        if layer_decay is not None and not vision_transformer.is_vit(backbone):
            raise ConfigError(
                "optimizer.layer_decay decays the lr block by block of a ViT backbone "
                f"(backbone.name: vit); {type(backbone).__name__} has no blocks: remove it"
            )
        self.take_setup(
            learning_rate, optimizer, optimizer_kwargs, lr_scheduler, lr_scheduler_kwargs
        )
        # One MetricCollection per stage; torchmetrics keeps its state out of state_dict.
        self.train_metrics = _collection(train_metrics, "train")
        self.val_metrics = _collection(val_metrics, "val")
        self.test_metrics = _collection(test_metrics, "test")
        if freeze_backbone:
            # Frozen before any DDP wrapping, so DDP never registers these parameters.
            self.backbone.requires_grad_(False)

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone and the rest; the backbone's lr is `backbone_lr_scale` x the lr (a
        fine-tune that moves pretrained weights less than the new head). With
        `layer_decay`, the backbone's blocks in groups of their own (`_layer_decay_groups`)."""
        if self.layer_decay is not None:
            return self._layer_decay_groups()
        if self.backbone_lr_scale == 1.0:
            return super().param_groups()
        ids = {id(p) for p in self.backbone.parameters()}
        trained = [p for p in self.parameters() if p.requires_grad]
        backbone = [p for p in trained if id(p) in ids]
        groups = [{"params": [p for p in trained if id(p) not in ids]}]
        if backbone:
            groups.append({"params": backbone, "lr": self.learning_rate * self.backbone_lr_scale})
        return groups

    def _layer_decay_groups(self) -> list[dict[str, Any]]:
        """MAE's and BEiT's fine-tuning: ViT block i at lr x backbone_lr_scale x
        layer_decay^(depth - i), the embeddings one step further down, the final norm and
        everything past the backbone at the full lr; no weight decay on biases, norms, the
        position embedding or the CLS token."""
        depth = len(self.backbone.blocks)
        backbone = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        ids = {id(p) for _, p in backbone}
        rest = [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in ids]
        no_decay = set(self.backbone.no_weight_decay())
        groups = optim_groups.layer_decay_groups(
            backbone,
            lambda name: vision_transformer.layer_id(name, depth),
            depth,
            self.layer_decay,
            self.learning_rate * self.backbone_lr_scale,
            no_decay,
        )
        top = optim_groups.layer_decay_groups(
            rest, lambda name: depth + 1, depth, self.layer_decay, self.learning_rate
        )
        return groups + top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_backbone:
            self.backbone.eval()  # frozen means frozen BatchNorm statistics too
            with torch.no_grad():
                features = self.backbone(x)
        else:
            features = self.backbone(x)
        if self.adapter is not None:
            features = self.adapter(features)
        if self.flatten:
            features = features.flatten(1)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        return self.fc(features)

    def _single_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str):
        x, y = batch
        y_hat = self(x)
        loss = self.loss_fn(y_hat, y)
        metrics = self._stage_metrics(stage)
        if metrics is not None:
            metrics.update(y_hat.detach(), y)
        return {"loss": loss}

    def training_step(self, batch):
        if self.mix is None:
            return self._single_step(batch, "train")
        x, soft_targets = self.mix(*batch)  # no train metrics: the targets are mixtures
        return {"loss": self.soft_loss(self(x).float(), soft_targets)}

    def validation_step(self, batch):
        return self._single_step(batch, "val")

    def test_step(self, batch):
        return self._single_step(batch, "test")

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for `x` in eval mode."""
        was_training = self.training
        self.eval()
        out = self(x)
        self.train(was_training)
        return out

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        metrics = self._stage_metrics(stage)
        if metrics is None:
            return {}
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        return values

    def _stage_metrics(self, stage: str) -> MetricCollection | ClassScores | None:
        return getattr(self, f"{stage}_metrics")


def _collection(
    metrics: dict[str, Metric] | ClassScores | None, stage: str
) -> MetricCollection | ClassScores | None:
    """A stage's metrics: a `ClassScores` (named by its own prefix) as it is, or a dict of
    torchmetrics metrics collected under the stage's prefix."""
    if isinstance(metrics, ClassScores):
        return metrics
    if not metrics:
        return None
    # imported here: torchmetrics takes ~1.6 s to import (scipy.signal, matplotlib), which
    # every process that imports the method registry would pay, supervised run or not
    from torchmetrics import MetricCollection

    return MetricCollection(dict(metrics), prefix=f"{stage}_")


class SupervisedConfig(MethodConfig):
    older_runs_lack: ClassVar[dict[str, Any]] = {"standardize_features": False}
    flatten: bool = Field(True, description="flatten backbone features before the head")
    freeze_backbone: bool = Field(
        False, description="train the head only (linear evaluation), BatchNorm statistics too"
    )
    standardize_features: bool | None = Field(
        None,
        description="a BatchNorm1d(affine=False) on the flattened features before the head, "
        "as the linear probes of SSL papers; null: on when freeze_backbone is",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy smoothing")
    mixup_alpha: float = Field(
        0.0,
        ge=0.0,
        description="mixup: a training batch blended with itself reversed, weight ~ Beta(a, a), "
        "targets alike (timm's Mixup, one draw per batch); 0: off. MAE's fine-tuning: 0.8",
    )
    cutmix_alpha: float = Field(
        0.0,
        ge=0.0,
        description="cutmix (images): a box of the reversed batch pasted in, area ~ Beta(a, a), "
        "targets by area; 0: off. MAE's fine-tuning: 1.0",
    )
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="share of training batches mixed")
    mix_switch_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="with both on: the chance a batch takes cutmix"
    )

    metrics: list[Literal["accuracy", "f1", "precision", "recall"]] = Field(
        ["accuracy"], description="reported per split; f1 / precision / recall are macro"
    )

    def check_run(self, cfg: Any) -> None:
        """Mixing pairs each sample with the one at the mirrored place of its worker's batch,
        so every worker's batch must be even (timm's Mixup asserts it)."""
        if not (self.mixup_alpha or self.cutmix_alpha):
            return
        low, high = cfg.num_workers if cfg.elastic else (cfg.num_workers, cfg.num_workers)
        counts, batch = range(max(1, low), max(1, high) + 1), cfg.data.batch_size
        odd = [n for n in counts if (batch // n) % 2]
        if odd:
            raise ValueError(
                f"supervised.mixup_alpha / cutmix_alpha mix each worker's batch with itself "
                f"reversed, so it must be even: data.batch_size {batch} over {odd[0]} "
                f"worker(s) gives {batch // odd[0]}; use a multiple of "
                f"{math.lcm(*(2 * n for n in counts))}"
            )


def build(parts: Parts) -> Method:
    """A head on the backbone, with the configured loss smoothing and metrics."""
    cfg, features, num_classes = parts.cfg, parts.features, parts.num_classes
    head = nets.call_factory(
        cfg.head.factory(nets.HEADS), cfg.head.kwargs, in_features=features, num_classes=num_classes
    )

    names = cfg.supervised.metrics
    mix = batch_mix(cfg.supervised, parts.sample_shape, num_classes)

    def metrics(stage: str) -> ClassScores | None:
        # accuracy is the plain share of correct predictions; f1/precision/recall are macro
        return ClassScores(names, num_classes, prefix=f"{stage}_") if names else None

    return SimpleSupervisedModel(
        backbone=parts.backbone,
        fc=head,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.supervised.label_smoothing),
        flatten=cfg.supervised.flatten,
        train_metrics=None if mix is not None else metrics("train"),
        val_metrics=metrics("val"),
        test_metrics=metrics("test"),
        freeze_backbone=cfg.supervised.freeze_backbone,
        feature_norm=nn.BatchNorm1d(features, affine=False) if standardized(cfg) else None,
        backbone_lr_scale=cfg.optimizer.backbone_lr_scale,
        layer_decay=cfg.optimizer.layer_decay,
        mix=mix,
        **parts.setup,
    )


def batch_mix(c: SupervisedConfig, sample_shape: tuple[int, ...], num_classes: int):
    """timm's `Mixup` for `c`'s mixup / cutmix (None when both are off), one draw per batch
    as MAE's and DeiT's fine-tuning use it, `c.label_smoothing` folded into its targets. It
    draws from NumPy's global RNG, which each rank's checkpoint entry carries (exact
    resume). timm's, not written here: the reference recipes call exactly this."""
    if not (c.mixup_alpha or c.cutmix_alpha):
        return None
    if c.cutmix_alpha and len(sample_shape) != 3:
        raise ConfigError(
            f"supervised.cutmix_alpha pastes boxes between images (C, H, W); samples are "
            f"shaped {list(sample_shape)}: use mixup_alpha alone, or set cutmix_alpha 0"
        )
    try:
        from timm.data import Mixup
    except ImportError as exc:  # torchvision built for another torch fails here too
        raise ConfigError(
            f"supervised.mixup_alpha / cutmix_alpha need timm with a torchvision built for "
            f"this torch ({exc}); pip install 'rayssl[timm]'"
        ) from None
    return Mixup(
        mixup_alpha=c.mixup_alpha,
        cutmix_alpha=c.cutmix_alpha,
        prob=c.mix_prob,
        switch_prob=c.mix_switch_prob,
        mode="batch",
        label_smoothing=c.label_smoothing,
        num_classes=num_classes,
    )


def standardized(cfg: Any) -> bool:
    """Whether a supervised run standardises its features before the head (on by default
    for a frozen backbone: frozen SSL features have arbitrary scales, and a linear head
    trained on them with a short schedule stays far from what a standardised probe reads)."""
    c = cfg.supervised
    wanted = c.freeze_backbone if c.standardize_features is None else c.standardize_features
    return wanted and c.flatten


BUILTIN = Builtin(
    "supervised",
    SimpleSupervisedModel,
    SupervisedConfig,
    build,
    "labels: cross-entropy through a head (linear evaluation with freeze_backbone)",
)
