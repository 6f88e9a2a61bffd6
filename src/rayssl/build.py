"""Turn a validated TrainConfig (plus the data's shape) into a method with its optimizer setup."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from rayssl import nets
from rayssl.config import TrainConfig
from rayssl.methods import Method, SimpleSupervisedModel
from rayssl.methods.barlow_twins import BarlowTwins
from rayssl.methods.byol import BYOL
from rayssl.methods.dino import DINO, DINOHead
from rayssl.methods.heads import MLPHead
from rayssl.methods.lfr import LearnFromRandomnessModel, RandomProjector, RepeatedModuleList
from rayssl.methods.moco import MoCo
from rayssl.methods.nnclr import NNCLR
from rayssl.methods.simclr import SimCLR
from rayssl.methods.simsiam import SimSiam
from rayssl.methods.swav import SwAV
from rayssl.methods.vicreg import VICReg
from rayssl.optim import schedules
from rayssl.optim.lars import LARS

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "lars": LARS,
}

METRICS = {
    "accuracy": MulticlassAccuracy,
    "f1": MulticlassF1Score,
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
}


def optimizer_setup(cfg: TrainConfig) -> dict[str, Any]:
    """The seed-style optimizer / lr_scheduler arguments (class + kwargs) of every method."""
    opt = cfg.optimizer
    kwargs: dict[str, Any] = {"weight_decay": opt.weight_decay}
    if opt.name == "sgd":
        kwargs["momentum"] = opt.momentum
    elif opt.name == "lars":
        kwargs.update(momentum=opt.momentum, trust_coefficient=opt.trust_coefficient)
    else:
        kwargs["betas"] = tuple(opt.betas)
    sched = cfg.lr_scheduler
    scheduler, scheduler_kwargs = {
        "none": (None, {}),
        "onecycle": (schedules.onecycle, {"pct_start": sched.pct_start}),
        "warmup_cosine": (
            schedules.warmup_cosine,
            {"warmup_epochs": sched.warmup_epochs, "min_lr_ratio": sched.min_lr_ratio},
        ),
        "step": (schedules.step_decay, {"step_epochs": sched.step_epochs, "gamma": sched.gamma}),
    }[sched.name]
    return {
        "learning_rate": opt.lr,
        "optimizer": OPTIMIZERS[opt.name],
        "optimizer_kwargs": kwargs,
        "lr_scheduler": scheduler,
        "lr_scheduler_kwargs": scheduler_kwargs,
    }


def build_backbone(
    cfg: TrainConfig, sample_shape: tuple[int, ...], weights: Any = None
) -> nn.Module:
    """The configured backbone; `weights`: a `pretrained.Pretrained` to start from."""
    spec = cfg.backbone
    backbone = nets.call_factory(
        spec.factory(nets.BACKBONES), spec.kwargs, input_shape=sample_shape
    )
    if weights is not None:
        from rayssl.runs.pretrained import load_into

        load_into(backbone, weights, cfg.backbone.model_dump(), cfg.backbone.init_from)
    return backbone


def build_method(
    cfg: TrainConfig,
    sample_shape: tuple[int, ...],
    num_classes: int,
    selection_sample: torch.Tensor | None = None,
    broadcast: Callable[[Any], Any] | None = None,
    pretrained: Any = None,
) -> Method:
    """Build the configured method. Call under the same seed on every rank. LFR selects its
    targets on `selection_sample`; `broadcast` shares rank 0's choice with every rank.
    `pretrained` (`backbone.init_from`, read once on the driver) is loaded into the backbone
    before the method wraps it, so a momentum copy (BYOL, MoCo, DINO) starts from it too."""
    backbone = build_backbone(cfg, sample_shape, pretrained)
    features = nets.output_features(backbone, sample_shape)
    setup = optimizer_setup(cfg)
    if not cfg.builtin_method:
        return build_user_method(cfg, backbone, features, sample_shape, num_classes, setup)
    if cfg.method == "supervised":
        return _supervised(cfg, backbone, features, num_classes, setup)
    if cfg.method == "lfr":
        method = _lfr(cfg, backbone, features, sample_shape, setup)
        if selection_sample is not None:
            method.select_targets(selection_sample, broadcast)
        return method
    return SSL_BUILDERS[cfg.method](cfg, backbone, features, setup)


def _byol(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.byol
    return BYOL(
        backbone,
        projection_head=MLPHead([features, c.proj_hidden, c.proj_dim]),
        prediction_head=MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim]),
        schedule=c.schedule,
        base_momentum=c.base_momentum,
        **setup,
    )


def _simclr(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.simclr
    head = MLPHead([features, c.proj_hidden, c.proj_dim], output_batch_norm=c.output_batch_norm)
    return SimCLR(backbone, projection_head=head, temperature=c.temperature, **setup)


def _barlow_twins(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.barlow_twins
    head = MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim])
    return BarlowTwins(backbone, projection_head=head, lambda_offdiag=c.lambda_offdiag, **setup)


def _vicreg(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.vicreg
    return VICReg(
        backbone,
        projection_head=MLPHead([features, c.proj_hidden, c.proj_hidden, c.proj_dim]),
        sim_weight=c.sim_weight,
        var_weight=c.var_weight,
        cov_weight=c.cov_weight,
        **setup,
    )


def _moco(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.moco
    return MoCo(
        backbone,
        projection_head=MLPHead(
            [features, *[c.proj_hidden] * (c.proj_layers - 1), c.proj_dim],
            output_batch_norm=c.proj_output_batch_norm,
            output_affine=False,
        ),
        prediction_head=MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim]),
        temperature=c.temperature,
        base_momentum=c.base_momentum,
        schedule=c.schedule,
        **setup,
    )


def _dino(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.dino
    return DINO(
        backbone,
        head=DINOHead(
            features, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.norm_last_layer, c.batch_norm
        ),
        out_dim=c.out_dim,
        student_temp=c.student_temp,
        teacher_temp=c.teacher_temp,
        warmup_teacher_temp=c.warmup_teacher_temp,
        warmup_teacher_temp_steps=c.warmup_teacher_temp_steps,
        center_momentum=c.center_momentum,
        base_momentum=c.base_momentum,
        schedule=c.schedule,
        freeze_last_layer_epochs=c.freeze_last_layer_epochs,
        **setup,
    )


def _swav(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.swav
    return SwAV(
        backbone,
        projection_head=MLPHead([features, c.proj_hidden, c.proj_dim]),
        num_prototypes=c.num_prototypes,
        proj_dim=c.proj_dim,
        temperature=c.temperature,
        epsilon=c.epsilon,
        sinkhorn_iterations=c.sinkhorn_iterations,
        freeze_prototypes_epochs=c.freeze_prototypes_epochs,
        queue_length=c.queue_length,
        queue_start_epoch=c.queue_start_epoch,
        **setup,
    )


def _simsiam(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.simsiam
    return SimSiam(
        backbone,
        projection_head=MLPHead(
            [features, c.proj_hidden, c.proj_hidden, c.proj_dim], output_batch_norm=True
        ),
        prediction_head=MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim]),
        fixed_predictor_lr=c.fixed_predictor_lr,
        **setup,
    )


def _nnclr(cfg: TrainConfig, backbone: nn.Module, features: int, setup: dict) -> Method:
    c = cfg.nnclr
    return NNCLR(
        backbone,
        projection_head=MLPHead(
            [features, c.proj_hidden, c.proj_hidden, c.proj_dim], output_batch_norm=True
        ),
        prediction_head=MLPHead(
            [c.proj_dim, c.pred_hidden, c.proj_dim],
            output_batch_norm=c.predictor_output_batch_norm,
        ),
        temperature=c.temperature,
        queue_length=c.queue_length,
        **setup,
    )


# the self-supervised methods whose whole setup is their config section
SSL_BUILDERS: dict[str, Callable[[TrainConfig, nn.Module, int, dict], Method]] = {
    "byol": _byol,
    "simclr": _simclr,
    "barlow_twins": _barlow_twins,
    "vicreg": _vicreg,
    "moco": _moco,
    "dino": _dino,
    "swav": _swav,
    "simsiam": _simsiam,
    "nnclr": _nnclr,
}


def _lfr(
    cfg: TrainConfig,
    backbone: nn.Module,
    features: int,
    sample_shape: tuple[int, ...],
    setup: dict,
) -> LearnFromRandomnessModel:
    c = cfg.lfr
    if c.projector == "backbone":
        encoder, in_dim = (lambda: build_backbone(cfg, sample_shape)), features
    else:
        encoder, in_dim = None, math.prod(sample_shape)
    return LearnFromRandomnessModel(
        backbone,
        projectors=RepeatedModuleList(
            c.num_projectors, RandomProjector, in_dim, c.proj_hidden, c.proj_dim, encoder
        ),
        predictors=RepeatedModuleList(
            c.num_projectors, MLPHead, [features, c.pred_hidden, c.proj_dim], batch_norm=False
        ),
        num_targets=c.num_targets,
        predictor_training_epochs=c.predictor_training_epochs,
        max_backbone_training_steps=c.max_backbone_training_steps,
        selection_batch_size=c.selection_batch_size,
        **setup,
    )


def _supervised(
    cfg: TrainConfig, backbone: nn.Module, features: int, num_classes: int, setup: dict
) -> Method:
    head = nets.call_factory(
        cfg.head.factory(nets.HEADS), cfg.head.kwargs, in_features=features, num_classes=num_classes
    )

    def metrics() -> dict[str, Any]:
        # accuracy is the plain share of correct predictions; f1/precision/recall are macro.
        return {
            n: METRICS[n](num_classes=num_classes, average="micro" if n == "accuracy" else "macro")
            for n in cfg.supervised.metrics
        }

    return SimpleSupervisedModel(
        backbone=backbone,
        fc=head,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.supervised.label_smoothing),
        flatten=cfg.supervised.flatten,
        train_metrics=metrics(),
        val_metrics=metrics(),
        test_metrics=metrics(),
        freeze_backbone=cfg.supervised.freeze_backbone,
        feature_norm=nn.BatchNorm1d(features, affine=False) if standardized(cfg) else None,
        backbone_lr_scale=cfg.optimizer.backbone_lr_scale,
        **setup,
    )


def standardized(cfg: TrainConfig) -> bool:
    """Whether a supervised run standardises its features before the head (on by default
    for a frozen backbone: frozen SSL features have arbitrary scales, and a linear head
    trained on them with a short schedule stays far from what a standardised probe reads)."""
    c = cfg.supervised
    wanted = c.freeze_backbone if c.standardize_features is None else c.standardize_features
    return wanted and c.flatten


def build_user_method(
    cfg: TrainConfig,
    backbone: nn.Module,
    features: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    setup: dict[str, Any],
) -> Method:
    """A `method: "package.module:Class"`: the class gets the backbone, its `method_options`,
    and whichever of `features` (the backbone's output width), `num_classes`,
    `input_shape` and the optimizer setup (`learning_rate`, `optimizer`, ...) it names; the
    setup it does not take is set on the instance, so `configure_optimizers` uses it."""
    import inspect

    from rayssl.config import import_factory

    cls = import_factory(cfg.method)
    params = inspect.signature(cls).parameters
    offered = {
        "features": features,
        "num_classes": num_classes,
        "input_shape": tuple(sample_shape),
        **setup,
    }
    method = cls(
        backbone, **{k: v for k, v in offered.items() if k in params}, **cfg.method_options
    )
    for key, value in setup.items():
        if key not in params:
            setattr(method, key, value)
    return method
