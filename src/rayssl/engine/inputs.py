"""What the method sees: this rank's batches; views of a batch, normalised
(`data.normalize`) and in the configured memory layout; the clean features the probes read."""

from __future__ import annotations

from typing import Any

import torch

from rayssl.config import TrainConfig
from rayssl.data import (
    Augment,
    Splits,
    StreamedBatches,
    TensorBatches,
    input_statistics,
)
from rayssl.data.datasets import channel_normalizer, sample_normalizer
from rayssl.data.erasing import random_erase
from rayssl.data.stored import StoredShard, StoredSplit
from rayssl.engine.features import FrozenFeatures
from rayssl.errors import ConfigError
from rayssl.methods import Method


class Inputs:
    """What the method sees of a batch: the training views (augmentation on the device,
    then normalisation and memory layout), the evaluation inputs, and clean features for the
    probes (`FrozenFeatures`). Owns the record of a sample's shape and normalisation that
    every checkpoint carries."""

    def __init__(self, method: Method, cfg: TrainConfig, splits: Splits):
        self.method = method
        self.augment = Augment(cfg.data.augment)
        stats = input_statistics(cfg.data, splits)  # one pass over the data, used twice
        dims = len(splits.sample_shape)
        per_sample = cfg.data.normalize == "sample"
        normalize = sample_normalizer(dims) if per_sample else channel_normalizer(stats, dims)
        # the probes' features; `layout` is what every input of the method goes through
        self.channels_last = cfg.performance.channels_last
        self.frozen = FrozenFeatures(method.embed, normalize, self.channels_last)
        # what a sample looks like to the backbone, saved with every checkpoint for
        # `rayssl export` and `backbone.init_from`: its shape and normalisation
        self.record = {
            "shape": list(splits.sample_shape),
            "normalize": "sample"
            if per_sample
            else ({"mean": stats[0].tolist(), "std": stats[1].tolist()} if stats else None),
        }

    def state_dict(self) -> dict[str, Any]:
        """What a sample looks like to the backbone (checkpoint key `input`), read by
        `rayssl export`, `rayssl eval` and `backbone.init_from`."""
        return {"input": self.record}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume under the record a checkpoint carries: the weights were trained on inputs
        normalised by it, so a resumed run keeps the saved statistics even where the data's
        own have moved since (a bucket that grew). Samples of another shape are refused."""
        saved = state.get("input")
        if saved is None:  # a checkpoint without the record: the data's, as derived
            return
        if list(saved["shape"]) != self.record["shape"]:
            raise ConfigError(
                f"data: samples are shaped {self.record['shape']}, the checkpoint's run was "
                f"trained on {list(saved['shape'])}; resume it with the data it was trained on"
            )
        if saved["normalize"] != self.record["normalize"]:
            dims = len(saved["shape"])
            self.frozen = FrozenFeatures.of_record(
                self.method.embed, saved["normalize"], dims, self.channels_last
            )
            self.record = {"shape": list(saved["shape"]), "normalize": saved["normalize"]}

    def views(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """The method's training input: one augmented batch, or a tuple of `num_views`
        views (with the local crops of a `multi_crop` method: DINO, SwAV)."""
        if self.method.num_views > 1:
            multi_crop = getattr(self.method, "multi_crop", False)
            views = self.augment.views(x, generator, self.method.num_views, multi_crop)
            return tuple(self._erased(self.layout(view), generator) for view in views)
        x = self.layout(self.augment(x, generator) if self.augment.active else x)
        return self._erased(x, generator)

    def _erased(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A normalised training view with random erasing (`augment.image.erase`), in the
        configured layout again (the blend returns a contiguous batch)."""
        image = self.augment.cfg.image
        if image is None or image.erase is None:
            return x
        return self.frozen.in_memory_layout(random_erase(x, image.erase, generator))

    def evaluation(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """An evaluation input: an SSL loss needs its views; predictions see clean inputs."""
        return self.views(x, generator) if self.method.num_views > 1 else self.layout(x)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised and in the configured memory layout: what every input of the method,
        training view or evaluation batch, goes through."""
        return self.frozen.layout(x)

    def frozen_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of clean inputs, as it is (the caller sets eval mode):
        `engine/features.py`, the definition `rayssl embed` shares."""
        return self.frozen(x)

    @torch.no_grad()
    def clean_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the probes read: the backbone in eval mode on clean inputs (no gradient, no
        BatchNorm update)."""
        self.method.eval()
        features = self.frozen(x)
        self.method.train()
        return features


def train_batches(cfg: TrainConfig, splits: Splits, device, rank: int, world_size: int, shard):
    """This rank's training batches: its Ray Data `shard` of a stream (streamed data), else
    its share of the in-memory training split, reshuffled every epoch."""
    d, per_worker = cfg.data, cfg.data.batch_size // world_size
    if splits.stream is not None:
        if shard is None:
            raise ValueError("streamed data (parquet, images) needs a Ray Data shard")
        stream = splits.stream
        batches = StreamedBatches(
            shard,
            stream.num_rows,
            stream.shape,
            per_worker,
            world_size=world_size,
            x_column=stream.x_column,
            y_column=stream.y_column,
            device=device,
            seed=cfg.seed,
            shuffle_buffer=d.shuffle_buffer,
            prefetch_batches=d.prefetch_batches,
            pin_memory=d.pin_memory and device.type == "cuda",
            scale=stream.scale,
        )
    else:
        x, y = (t.to(device) for t in splits.train)
        batches = TensorBatches(
            x,
            y,
            per_worker,
            rank=rank,
            world_size=world_size,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
    if len(batches) == 0:
        raise ValueError(
            f"each worker gets fewer samples than its batch of {batches.batch_size}; "
            "lower data.batch_size"
        )
    return batches


def eval_batches(split, cfg: TrainConfig, device, rank: int, world_size: int):
    """This rank's share of an evaluation split, in order: rows rank, rank + world_size, ...
    of an in-memory split, or the same share of a `StoredSplit`'s files (read by Ray Data
    on every pass). Every row lands on exactly one rank, whatever the world size."""
    if split is None:
        return None
    if isinstance(split, StoredSplit):
        return StoredShard(split, rank, world_size, cfg.data.eval_batch_size, device)
    x, y = (t.to(device) for t in split)
    return TensorBatches(
        x,
        y,
        cfg.data.eval_batch_size,
        rank=rank,
        world_size=world_size,
        shuffle=False,
        seed=cfg.seed,
        drop_last=False,
    )
