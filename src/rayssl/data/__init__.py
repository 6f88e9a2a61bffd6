"""Data: built-in datasets, in-memory batching and batched augmentations."""

from rayssl.data.augment import Augment
from rayssl.data.batches import TensorBatches
from rayssl.data.datasets import Splits, load_splits

__all__ = ["Augment", "Splits", "TensorBatches", "load_splits"]
