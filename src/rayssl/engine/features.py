"""What a frozen backbone's features are: one definition for the probes (`engine/evaluation.py`,
`rayssl eval`) and for `rayssl embed`, so that the embeddings a user writes are the features
the probes scored."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rayssl.data.datasets import channel_normalizer, sample_normalizer


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
        x = self.normalize(x)
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.layout(x)).flatten(1).float()
