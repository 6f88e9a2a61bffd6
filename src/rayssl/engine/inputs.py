"""What the method sees: views of a batch, normalised (`data.normalize`) and in the
configured memory layout; and the clean features the probes read."""

from __future__ import annotations

from typing import Any

import torch

from rayssl.config import TrainConfig
from rayssl.data import Augment, Splits, input_normalizer, input_statistics
from rayssl.methods import Method


class Inputs:
    def __init__(self, method: Method, cfg: TrainConfig, splits: Splits):
        self.method = method
        self.augment = Augment(cfg.data.augment)
        self.normalize = input_normalizer(cfg.data, splits) or (lambda x: x)
        self.channels_last = cfg.performance.channels_last
        # what a sample looks like to the backbone, saved with every checkpoint for
        # `rayssl export` and `backbone.init_from`: its shape and normalisation
        stats = input_statistics(cfg.data, splits)
        self.record = {
            "shape": list(splits.sample_shape),
            "normalize": {"mean": stats[0].tolist(), "std": stats[1].tolist()} if stats else None,
        }

    def views(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """The method's training input: one augmented batch, or a tuple of `num_views`
        views (with DINO's local crops for a `multi_crop` method)."""
        if self.method.num_views > 1:
            multi_crop = getattr(self.method, "multi_crop", False)
            views = self.augment.views(x, generator, self.method.num_views, multi_crop)
            return tuple(self.layout(view) for view in views)
        return self.layout(self.augment(x, generator) if self.augment.active else x)

    def evaluation(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """An evaluation input: an SSL loss needs its views; predictions see clean inputs."""
        return self.views(x, generator) if self.method.num_views > 1 else self.layout(x)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised and in the configured memory layout: what every input of the method,
        training view or evaluation batch, goes through."""
        x = self.normalize(x)
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def clean_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the probes read: the backbone in eval mode on clean inputs (no gradient, no
        BatchNorm update)."""
        self.method.eval()
        features = self.method.embed(self.layout(x))
        self.method.train()
        return features
