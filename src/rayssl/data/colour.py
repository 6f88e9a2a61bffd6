"""Colour primitives on `(B, C, H, W)` batches in [0, 1] with per-sample factors, as
torchvision defines them (blends with black, the mean grey and the grey image; kornia's
functional `adjust_contrast` / `adjust_saturation` scale instead): shared by the papers'
views (`image_views`) and RandAugment (`rand_augment`)."""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") (torchvision: 0.2989)


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) on x's device and dtype."""
    return values.to(x.device, x.dtype).view(-1, 1, 1, 1)


_CONSTANTS: dict[tuple[tuple[float, ...], torch.device, torch.dtype], torch.Tensor] = {}


def channel_constant(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """(1, C, 1, 1) per-channel constants on x's device and dtype, made once per device and
    dtype: a host-to-device copy on every call would be illegal inside a CUDA graph's
    capture."""
    key = (values, x.device, x.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return _CONSTANTS[key]


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma."""
    return (x * channel_constant(LUMA, x)).sum(1, keepdim=True)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    grey = grayscale(x) if x.shape[1] == 3 else x
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean.expand_as(x), x, f).clamp_(0, 1)  # mean + f (x - mean)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    return torch.lerp(grayscale(x).expand_as(x), x, f).clamp_(0, 1)
