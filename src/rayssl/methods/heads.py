"""Projection and prediction heads, and the multi-crop backbone pass, shared by the
self-supervised methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLPHead(nn.Sequential):
    """Linear layers through `dims`, with BatchNorm + ReLU between them (not after the last);
    `output_batch_norm`: a BatchNorm (no ReLU) after the last too, as SimCLR's code;
    `output_affine=False` drops that BatchNorm's scale and shift (MoCo v3's projector)."""

    def __init__(
        self,
        dims: Sequence[int],
        batch_norm: bool = True,
        output_batch_norm: bool = False,
        output_affine: bool = True,
    ):
        layers: list[nn.Module] = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(dims) - 2
            norm = batch_norm and (not last or output_batch_norm)
            layers.append(nn.Linear(din, dout, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm1d(dout, affine=output_affine or not last))
            if not last:
                layers.append(nn.ReLU())
        super().__init__(*layers)


def infer_features(module: nn.Module) -> int:
    """Output width of a backbone, read from its last layer that declares one."""
    for layer in reversed(list(module.modules())):
        for attr in ("out_features", "num_features", "out_channels"):
            if isinstance(getattr(layer, attr, None), int):
                return getattr(layer, attr)
    raise ValueError("cannot infer the backbone's output width; pass the heads explicitly")


def backbone_by_crop_size(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """Multi-crop: one backbone pass per crop size (globals, then locals), the features of
    every crop in the order given, flattened: (sum of batch sizes, features)."""
    by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for crop in crops:
        by_size.setdefault(tuple(crop.shape[-2:]), []).append(crop)
    return torch.cat([backbone(torch.cat(group)).flatten(1) for group in by_size.values()])
