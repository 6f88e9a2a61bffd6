"""The `data:` section: where samples come from, how they are batched, viewed and normalised."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from rayssl.config.base import Strict

ViewP = float | list[float]  # a probability, or one per view ([view0, view1]: BYOL)


class LocalCropsConfig(Strict):
    """Multi-crop (DINO, SwAV): small crops added after the global views, for methods that take
    them. Each is a random resized crop of `scale` at `size`, then the view pipeline's
    jitter and grayscale, blur with `blur_p`, solarize with `solarize_p`."""

    number: int = Field(6, ge=0, description="local crops per sample; 0: none")
    size: int | None = Field(
        None, ge=2, description="their side in pixels; null: 3/7 of the global views' side"
    )
    scale: tuple[float, float] = Field((0.05, 0.4), description="area fraction range")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="blur probability")
    solarize_p: float = Field(0.0, ge=0.0, le=1.0, description="solarize probability")

    @model_validator(mode="after")
    def _scale(self) -> LocalCropsConfig:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError("augment.image.local_crops.scale must be [low, high] in (0, 1]")
        return self


class RandAugmentConfig(Strict):
    """RandAugment after the crop and flip (see `rayssl.data.rand_augment`); the defaults are
    timm's `rand-m9-mstd0.5-inc1`, the policy of MAE's, DeiT's and iBOT's fine-tuning."""

    num_ops: int = Field(2, ge=1, le=8, description="ops drawn per sample (with replacement)")
    magnitude: float = Field(9.0, ge=0.0, le=10.0, description="mean magnitude, of 10")
    magnitude_std: float = Field(
        0.5, ge=0.0, description="per-op Gaussian noise on the magnitude (clipped to [0, 10])"
    )
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a drawn op applies")


class EraseConfig(Strict):
    """Random erasing of the normalised training views (see `rayssl.data.erasing`); the
    defaults are timm's, with MAE's fine-tuning probability (its `--reprob 0.25`)."""

    p: float = Field(0.25, ge=0.0, le=1.0, description="probability that a sample has a box erased")
    scale: tuple[float, float] = Field((0.02, 1 / 3), description="the box's area fraction range")
    ratio: tuple[float, float] = Field((0.3, 1 / 0.3), description="its aspect ratio range")

    @model_validator(mode="after")
    def _ranges(self) -> EraseConfig:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError("augment.image.erase.scale must be [low, high] in (0, 1]")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError("augment.image.erase.ratio must be [low, high] with 0 < low <= high")
        return self


class ImageViewsConfig(Strict):
    """SimCLR / BYOL views of (C, H, W) images in [0, 1] (see `rayssl.data.image_views`).
    Probabilities may be a pair [view0, view1], for asymmetric views."""

    size: int | None = Field(None, ge=1, description="output side; null: the input's")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area fraction range")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="aspect ratio range")
    flip_p: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    jitter_p: ViewP = Field(0.8, description="colour jitter probability (ops in random order)")
    brightness: float = Field(0.4, ge=0.0, description="jitter: factor in [1-b, 1+b]")
    contrast: float = Field(0.4, ge=0.0, description="jitter: factor in [1-c, 1+c]")
    saturation: float = Field(0.2, ge=0.0, description="jitter: factor in [1-s, 1+s]")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="jitter: hue shift in [-h, h] turns")
    grayscale_p: ViewP = Field(0.2, description="grayscale probability")
    blur_p: ViewP = Field(0.5, description="Gaussian blur probability")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="blur sigma range")
    blur_kernel: int | None = Field(
        None,
        ge=3,
        description="odd blur kernel side; null: a tenth of the image side, at least 3 (the "
        "SimCLR paper's rule; 3 px at 32 px, which truncates sigmas above about 0.5)",
    )
    solarize_p: ViewP = Field(0.0, description="solarize probability")
    solarize_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="solarize inverts pixels above this"
    )
    rand_augment: RandAugmentConfig | None = Field(
        None,
        description="RandAugment after the crop and flip, before the colour ops (supervised "
        "fine-tuning: configs/finetune_vit_*.yaml); null: none",
    )
    erase: EraseConfig | None = Field(
        None,
        description="random erasing of each view after normalisation (N(0, 1) noise in a box; "
        "MAE's fine-tuning: {p: 0.25}); null: none",
    )
    local_crops: LocalCropsConfig | None = Field(
        None, description="multi-crop: smaller local crops after the global views (DINO, SwAV)"
    )
    cuda_graph: bool = Field(
        True,
        description="on a GPU, replay each view as a CUDA graph (one launch in place of "
        "~1,900 small ones; the same views); false: launch its ops one by one",
    )

    @model_validator(mode="after")
    def _ranges(self) -> ImageViewsConfig:
        for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not values or any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"augment.image.{name} must be in [0, 1] (or a list of such)")
        for name, (low, high) in (
            ("crop_scale", self.crop_scale),
            ("crop_ratio", self.crop_ratio),
            ("blur_sigma", self.blur_sigma),
        ):
            if not 0 < low <= high:
                raise ValueError(f"augment.image.{name} must be [low, high] with 0 < low <= high")
        if self.crop_scale[1] > 1:
            raise ValueError("augment.image.crop_scale must lie within (0, 1]")
        if self.blur_kernel is not None and self.blur_kernel % 2 == 0:
            raise ValueError(
                f"augment.image.blur_kernel must be odd (got {self.blur_kernel}); e.g. "
                f"{self.blur_kernel + 1}"
            )
        return self


# The papers' view parameters (as lightly ships them); `augment.image` keys override them.
VIEW_PRESETS: dict[str, dict[str, Any]] = {
    "simclr": {
        "brightness": 0.8,
        "contrast": 0.8,
        "saturation": 0.8,
        "hue": 0.2,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": 0.5,
        "solarize_p": 0.0,
    },
    "byol": {
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": [1.0, 0.1],
        "solarize_p": [0.0, 0.2],
    },
}


class AugmentConfig(Strict):
    """Batched, seeded augmentations applied to training inputs (see `rayssl.data.augment`)."""

    shift: int = Field(0, ge=0, description="max circular-free shift along the last axis")
    scale: float = Field(0.0, ge=0.0, lt=1.0, description="amplitude scaling in [1-s, 1+s]")
    jitter: float = Field(0.0, ge=0.0, description="std of additive Gaussian noise")
    flip: bool = Field(False, description="random horizontal flip (images)")
    stretch: float = Field(0.0, ge=0.0, lt=1.0, description="time-stretch by [1-s, 1+s]")
    mask: int = Field(0, ge=0, description="zero a random window of up to this many steps")
    crop: int = Field(0, ge=0, description="images: random crop after padding by this much")
    preset: Literal["simclr", "byol"] | None = Field(
        None, description="image views with the paper's parameters (fills `image`)"
    )
    image: ImageViewsConfig | None = Field(None, description="SimCLR/BYOL image views")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in VIEW_PRESETS:
            image = data.get("image") or {}
            if isinstance(image, dict):
                data = {**data, "image": {**VIEW_PRESETS[data["preset"]], **image}}
        return data


class NormalizeConfig(Strict):
    # finiteness is checked below, in the one line this union member's errors read as
    model_config = ConfigDict(allow_inf_nan=True)

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> NormalizeConfig:
        finite = all(math.isfinite(v) for v in (*self.mean, *self.std))
        if len(self.mean) != len(self.std) or not finite or any(v <= 0 for v in self.std):
            raise ValueError("data.normalize needs finite mean and std of equal length, std > 0")
        return self


class DataConfig(Strict):
    name: Literal["mnist1d", "digits", "synthetic", "npz", "parquet", "images", "webdataset"] = (
        "mnist1d"
    )
    path: str | None = Field(
        None,
        description="npz: a file with x, y (optional x_test, y_test); parquet: a file, folder "
        "or s3:// / gs:// URI of the training rows, streamed to the workers by Ray Data; "
        "images: a folder (or URI) of images, one subfolder per class or flat (no labels); "
        "webdataset: a .tar shard, a folder of them or a brace pattern "
        "(train-{000000..000099}.tar), local or at a URI, each sample an image and "
        "optionally its .cls label",
    )
    test_path: str | None = Field(
        None, description="parquet, images, webdataset: test rows / images / shards"
    )
    val_path: str | None = Field(
        None, description="parquet, images, webdataset: validation rows / images / shards"
    )
    x_column: str = Field(
        "x", description="parquet: column of flattened float samples, or of encoded images"
    )
    y_column: str = Field("y", description="parquet: column of integer labels")
    probe_samples: int = Field(
        4096,
        ge=2,
        description="streamed data: training rows read on the driver for the dataset "
        "statistics of normalize, LFR's target selection and the preflight step (at most "
        "256 MiB of them as float32: all 4,096 up to 64x64 RGB, 445 at 224 px)",
    )
    shuffle_buffer: int = Field(
        2048, ge=0, description="parquet: rows in each worker's shuffle buffer (0: no shuffle)"
    )
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="images, webdataset: resize every image to this side (or [H, W]); "
        "null: as stored",
    )
    color: Literal["rgb", "grayscale"] = Field(
        "rgb", description="images, webdataset: decoded channels"
    )
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="images, webdataset: decode once and hold in memory (true), stream from "
        "storage (false), or auto: in memory when the decoded training set fits in 1 GiB",
    )
    eval_limit_mb: int = Field(
        1024,
        ge=1,
        description="images held in memory: a val / test split up to this size (MiB, as "
        "float32) is decoded on the driver and shared with every worker; a larger one, like "
        "every split of streamed data, stays in storage and each worker reads its share",
    )
    prefetch_batches: int = Field(2, ge=0, description="parquet: batches fetched ahead")
    pin_memory: bool = Field(False, description="parquet + use_gpu: page-locked host batches")
    read_concurrency: int | None = Field(None, ge=1, description="parquet: Ray Data read tasks")
    batch_size: int = Field(128, ge=1, description="global batch, split evenly across workers")
    eval_batch_size: int = Field(1024, ge=1, description="per-worker batch of val / test")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of train held out")
    labels_per_class: int | None = Field(
        None,
        ge=1,
        description="train on only this many labelled samples of each class (a seeded, "
        "class-balanced subset of the training split once val is held out): linear "
        "evaluation or fine-tuning with few labels; null: every training sample",
    )
    cache_dir: str | None = Field(None, description="where generated MNIST-1D is cached")
    shape: list[int] = Field(
        [1, 40], min_length=1, description="synthetic, parquet: one sample's shape"
    )
    num_samples: int = Field(1024, ge=2, description="synthetic: number of train samples")
    num_classes: int = Field(10, ge=2, description="synthetic: number of classes")
    augment: AugmentConfig = AugmentConfig()
    normalize: Literal["dataset", "sample"] | NormalizeConfig | None = Field(
        None,
        description="per-channel (x - mean) / std of every input, training views and "
        "evaluation alike: 'dataset' (computed from the training split), {mean, std}, or "
        "'sample' (each input's own mean and std per channel: removes a per-image colour "
        "cast and brightness)",
    )

    @model_validator(mode="after")
    def _path_for_npz(self) -> DataConfig:
        if self.name in ("npz", "parquet", "images", "webdataset") and not self.path:
            raise ValueError(f"data.path is required when data.name is '{self.name}'")
        if any(s < 1 for s in self.shape):
            raise ValueError(f"data.shape must hold positive sizes, got {self.shape}")
        size = self.image_size
        if size is not None and min([size] if isinstance(size, int) else size) < 1:
            raise ValueError(f"data.image_size must be positive, got {size}")
        if self.labels_per_class and self.name == "parquet":
            raise ValueError(
                "data.labels_per_class picks samples by label before training; parquet "
                "streams its rows unread: write the subset to its own parquet, or use npz"
            )
        return self
