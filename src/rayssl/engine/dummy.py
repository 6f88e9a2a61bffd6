"""A Ray-free trainer on synthetic data: smoke tests, throughput."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rayssl.config import TrainConfig, deep_merge, validate_train_config
from rayssl.data import load_splits
from rayssl.engine import Loop, TrainingIterationStats
from rayssl.methods.registry import build_method
from rayssl.seeds import seed_everything

DEFAULTS: dict[str, Any] = {
    "num_workers": 1,
    "data": {"name": "synthetic", "shape": [1, 40], "num_samples": 1024, "batch_size": 64},
}


class DummyTrainer:
    """Builds the configured method on synthetic data and runs it in this process."""

    def __init__(self, overrides: dict[str, Any] | None = None):
        self.cfg: TrainConfig = validate_train_config(deep_merge(DEFAULTS, overrides or {}))
        splits = load_splits(self.cfg.data, self.cfg.seed)
        seed_everything(self.cfg.seed)
        self.method = build_method(
            self.cfg, splits.sample_shape, splits.num_classes, selection_sample=splits.train[0]
        )
        self.loop = Loop(self.method, splits, self.cfg)

    def iterate(self, num_iterations: int) -> Iterator[TrainingIterationStats]:
        """Run `num_iterations` optimizer steps, crossing epochs as needed."""
        if num_iterations <= 0:
            raise ValueError(f"num_iterations must be positive, got {num_iterations}")
        done = 0
        while True:
            self.loop.start_epoch()
            for stats in self.loop.iterate():
                yield stats
                done += 1
                if done == num_iterations:
                    return
            self.loop.state.epoch += 1
