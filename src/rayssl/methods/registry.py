"""The built-in methods, one line each, and how a config becomes a method.

A built-in method is one module in this package: its class, its config section (a
`MethodConfig`), its builder and a `BUILTIN = Builtin(...)` naming them. `BUILTIN_MODULES`
lists those modules; the config's schema (`TrainConfig`'s sections and `method:`), the CLI's
method list and docs/configuration.md are made from it. A method outside the package needs
none of this: `method: "package.module:Class"` (`build_user_method`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rayssl import nets
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.optim.setup import optimizer_setup

if TYPE_CHECKING:
    from rayssl.config import TrainConfig

# one line per built-in method: its module under rayssl/methods/
BUILTIN_MODULES = (
    "supervised",
    "byol",
    "simclr",
    "lfr",
    "barlow_twins",
    "vicreg",
    "moco",
    "dino",
    "swav",
    "simsiam",
    "nnclr",
    "mae",
    "ibot",
)

BUILTINS: dict[str, Builtin] = {}
for _module in BUILTIN_MODULES:
    _builtin: Builtin = importlib.import_module(f"rayssl.methods.{_module}").BUILTIN
    BUILTINS[_builtin.name] = _builtin


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
    """Build the configured method. Call under the same seed on every rank. A built-in
    method's module builds it (`Builtin.build`); then `Method.prepare` sees
    `selection_sample` (LFR selects its targets on it); `broadcast` shares rank 0's choice
    with every rank.
    `pretrained` (`backbone.init_from`, read once on the driver) is loaded into the backbone
    before the method wraps it, so a momentum copy (BYOL, MoCo, DINO) starts from it too."""
    backbone = build_backbone(cfg, sample_shape, pretrained)
    features = nets.output_features(backbone, sample_shape)
    setup = optimizer_setup(cfg)
    if not cfg.builtin_method:
        return build_user_method(cfg, backbone, features, sample_shape, num_classes, setup)
    parts = Parts(
        cfg,
        backbone,
        features,
        tuple(sample_shape),
        num_classes,
        setup,
        new_backbone=lambda: build_backbone(cfg, sample_shape),
    )
    method = BUILTINS[cfg.method].build(parts)
    if selection_sample is not None:
        method.prepare(selection_sample, broadcast)
    return method


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
