"""What a frozen backbone's features are: one definition for the probes (`engine/evaluation.py`,
`rayssl eval`) and for `rayssl embed`, so that the embeddings a user writes are the features
the probes scored."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from rayssl.data.datasets import channel_normalizer, sample_normalizer

LAYOUT_ENV = "RAYSSL_INFERENCE_LAYOUT"  # "contiguous": no channels_last (benchmarks' A/B)


def inference_channels_last(shape) -> bool:
    """Whether inference (`rayssl embed`, `rayssl eval`) runs the backbone and its batches in
    channels_last: for images (C, H, W), the layout oneDNN's CPU convolutions (and tensor
    cores) take natively. A batch on one CPU thread: ResNet-18 at 224 px about 15-20 %
    faster, the demo's cnn2d about 2x, a ViT alike (BENCHMARKS.md, embed). A training run's
    layout is its own (`performance.channels_last`); the features are the same up to float
    rounding either way."""
    return len(tuple(shape)) == 3 and os.environ.get(LAYOUT_ENV) != "contiguous"


def in_inference_layout(module: torch.nn.Module, shape) -> tuple[torch.nn.Module, bool]:
    """`module` in inference's layout for samples of `shape` (`inference_channels_last`),
    and whether that is channels_last: what the features' batches must be laid out as."""
    channels_last = inference_channels_last(shape)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module, channels_last


class FrozenFeatures:
    """Inputs in [0, 1] normalised as in training, in the training memory layout, through the
    backbone (or a method's `embed`), flattened, as float32."""

    def __init__(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],
        normalize: Callable[[torch.Tensor], torch.Tensor] | None,
        channels_last: bool = False,
    ):
        self.embed = embed
        self.normalize = normalize or (lambda x: x)
        self.channels_last = channels_last

    @classmethod
    def of_record(cls, backbone, normalize, dims: int, channels_last: bool = False):
        """From a checkpoint's input record: `normalize` "sample", {"mean", "std"} or None."""
        if normalize == "sample":
            return cls(backbone, sample_normalizer(dims), channels_last)
        if not normalize:
            return cls(backbone, None, channels_last)
        stats = (torch.tensor(normalize["mean"]), torch.tensor(normalize["std"]))
        return cls(backbone, channel_normalizer(stats, dims), channels_last)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, in the memory layout."""
        return self.in_memory_layout(self.normalize(x))

    def in_memory_layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.layout(x)).flatten(1).float()
