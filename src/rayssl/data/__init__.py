"""Data: built-in datasets, in-memory batching and batched augmentations."""

from rayssl.data.augment import Augment
from rayssl.data.batches import StreamedBatches, TensorBatches
from rayssl.data.datasets import Splits, input_normalizer, input_statistics, load_splits

__all__ = [
    "Augment",
    "Splits",
    "StreamedBatches",
    "TensorBatches",
    "input_normalizer",
    "input_statistics",
    "load_splits",
]
