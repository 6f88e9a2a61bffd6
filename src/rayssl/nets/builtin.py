"""Backbones and heads. Each factory takes the data's shape and returns a plain nn.Module.

Backbones map a batch `(B, *input_shape)` to features `(B, F)`; heads map `(B, F)` to
`(B, num_classes)`. Users may name any importable factory "package.module:function"
instead; rayssl passes `input_shape` / `in_features` / `num_classes` when the factory
accepts them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rayssl.nets.vision_transformer import vit

INFERRED_ARGS = ("input_shape", "in_features", "num_classes")


def mlp(input_shape: Sequence[int], hidden: Sequence[int] = (256, 256), dropout: float = 0.0):
    """Flatten, then Linear-BatchNorm-ReLU blocks. Features: `hidden[-1]`."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


def _conv_block(conv: type[nn.Module], norm: type[nn.Module], cin: int, cout: int, k: int):
    return nn.Sequential(conv(cin, cout, k, padding=k // 2, bias=False), norm(cout), nn.ReLU(True))


def cnn1d(
    input_shape: Sequence[int], width: int = 64, depth: int = 3, kernel_size: int = 5, pool: int = 1
):
    """1D CNN for `(C, L)` signals: `depth` conv blocks, a max-pool after the second, then
    average pooling to `pool` positions (1: global). Features: `width * pool`."""
    if len(input_shape) == 1:
        input_shape = (1, *input_shape)
    if len(input_shape) != 2:
        raise ValueError(f"cnn1d takes (channels, length) samples, got shape {tuple(input_shape)}")
    layers: list[nn.Module] = [_AddChannel(1)]
    channels = input_shape[0]
    for i in range(depth):
        layers.append(_conv_block(nn.Conv1d, nn.BatchNorm1d, channels, width, kernel_size))
        channels = width
        if i == 1:
            layers.append(nn.MaxPool1d(2))
    layers += [nn.AdaptiveAvgPool1d(pool), nn.Flatten()]
    return nn.Sequential(*layers)


def cnn2d(input_shape: Sequence[int], width: int = 32, depth: int = 3, kernel_size: int = 3):
    """Small 2D CNN for `(C, H, W)` images; width doubles after each pooled block."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn2d takes (channels, height, width) samples, got {tuple(input_shape)}")
    layers: list[nn.Module] = []
    channels, out = input_shape[0], width
    for i in range(depth):
        layers.append(_conv_block(nn.Conv2d, nn.BatchNorm2d, channels, out, kernel_size))
        channels = out
        if i < depth - 1 and min(input_shape[1:]) >> (i + 1) >= 2:
            layers.append(nn.MaxPool2d(2))
            out *= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5),
    1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _resnet(
    input_shape: Sequence[int], name: str, block: type, depths: Sequence[int], width: int, stem: str
) -> nn.Sequential:
    if len(input_shape) != 3:
        raise ValueError(
            f"{name} takes (channels, height, width) samples, got {tuple(input_shape)}"
        )
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got '{stem}'")
    if stem == "cifar":  # small images: 3x3 stride-1 stem, no max-pool (SimCLR's CIFAR variant)
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)]
    else:  # the original 7x7 stride-2 stem and 3x3 stride-2 max-pool
        layers = [nn.Conv2d(input_shape[0], width, 7, 2, 3, bias=False)]
    layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    if stem == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    cin = width
    expansion = getattr(block, "expansion", 1)
    for stage, depth in enumerate(depths):
        planes = width * 2**stage
        for i in range(depth):
            layers.append(block(cin, planes, 2 if stage > 0 and i == 0 else 1))
            cin = planes * expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def resnet18(input_shape: Sequence[int], width: int = 64, stem: str = "cifar"):
    """ResNet-18. `stem: cifar` (3x3, no max-pool; small images) or `imagenet` (7x7 stride 2
    and max-pool). Features: `8 * width`."""
    return _resnet(input_shape, "resnet18", _BasicBlock, (2, 2, 2, 2), width, stem)


def resnet50(input_shape: Sequence[int], width: int = 64, stem: str = "imagenet"):
    """ResNet-50 (bottleneck blocks 3-4-6-3). `stem` as resnet18's. Features: `32 * width`."""
    return _resnet(input_shape, "resnet50", _Bottleneck, (3, 4, 6, 3), width, stem)


class _AddChannel(nn.Module):
    """Lets (B, L) batches into a 1D CNN by adding the channel axis when it is missing."""

    def __init__(self, channel_dim: int):
        super().__init__()
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(self.channel_dim) if x.dim() == 2 else x


def linear(in_features: int, num_classes: int):
    """A single linear classifier."""
    return nn.Linear(in_features, num_classes)


def mlp_classifier(in_features: int, num_classes: int, hidden: Sequence[int] = (256,)):
    """Linear-ReLU layers, then a linear classifier."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU(inplace=True)]
        in_features = h
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "cnn2d": cnn2d,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": vit,  # timm's VisionTransformer (nets/vision_transformer.py), imported when built
}
HEADS: dict[str, Callable[..., nn.Module]] = {"linear": linear, "mlp": mlp_classifier}


def call_factory(factory: Callable[..., Any], kwargs: dict[str, Any], **inferred: Any) -> nn.Module:
    """Call a net factory with the user's kwargs plus the inferred args (`input_shape`,
    `in_features`, `num_classes`) that it names. A factory that only takes `**kwargs` gets
    none: it usually forwards them (timm's `create_model` passes them to the model class)."""
    params = inspect.signature(factory).parameters
    extra = {k: v for k, v in inferred.items() if k in params}
    module = factory(**kwargs, **extra)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"factory {factory.__name__} returned {type(module).__name__}, not nn.Module"
        )
    return module


def output_features(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of features the module outputs per sample, found with one dry forward."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, *input_shape))
    module.train(was_training)
    return math.prod(out.shape[1:])
