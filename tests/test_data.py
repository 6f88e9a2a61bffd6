import numpy as np
import pytest
import torch

from rayssl.config import ConfigError, DataConfig
from rayssl.data import Augment, TensorBatches, load_splits
from rayssl.data.augment import random_shift


def test_mnist1d_is_generated_offline_and_cached(tmp_path):
    cfg = DataConfig(name="mnist1d", cache_dir=str(tmp_path), val_fraction=0.1)
    splits = load_splits(cfg)
    assert splits.sample_shape == (1, 40) and splits.num_classes == 10
    assert (
        len(splits.train[0]) == 3600 and len(splits.val[0]) == 400 and len(splits.test[0]) == 1000
    )
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    again = load_splits(cfg)
    assert torch.equal(again.train[0], splits.train[0])
    # a cached set is read without importing mnist1d (matplotlib, scipy: ~1 s of a start)
    import subprocess
    import sys

    code = (
        "import sys; from rayssl.config import DataConfig; from rayssl.data import load_splits; "
        f"load_splits(DataConfig(name='mnist1d', cache_dir={str(tmp_path)!r})); "
        "print('mnist1d' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_and_synthetic_shapes():
    digits = load_splits(DataConfig(name="digits", val_fraction=0.0))
    assert digits.sample_shape == (1, 8, 8) and digits.val is None
    assert len(digits.train[0]) + len(digits.test[0]) == 1797
    synth = load_splits(DataConfig(name="synthetic", shape=[3, 5, 7], num_samples=64, batch_size=8))
    assert synth.sample_shape == (3, 5, 7) and synth.num_classes <= 10


def test_labels_per_class_subsets_the_training_split_only():
    cfg = DataConfig(name="mnist1d", val_fraction=0.1, batch_size=16, labels_per_class=5)
    full = load_splits(cfg.model_copy(update={"labels_per_class": None}))
    few = load_splits(cfg)
    assert torch.bincount(few.train[1]).tolist() == [5] * 10
    assert torch.equal(few.val[0], full.val[0]) and torch.equal(few.test[0], full.test[0])
    rows = {tuple(r.tolist()) for r in full.train[0].flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in few.train[0].flatten(1))
    assert torch.equal(load_splits(cfg).train[0], few.train[0])  # seeded
    with pytest.raises(ConfigError, match=r"data.labels_per_class \(500\): class 0 has"):
        load_splits(cfg.model_copy(update={"labels_per_class": 500}))


def test_npz_user_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(50, 2, 10), y=np.arange(50) % 3)
    splits = load_splits(DataConfig(name="npz", path=str(path), batch_size=8, val_fraction=0.2))
    assert splits.sample_shape == (2, 10) and splits.num_classes == 3 and splits.test is None
    assert len(splits.train[0]) == 40


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"x": np.random.rand(20, 4)}, "lacks array(s) y"),
        ({"x": np.full((20, 4), np.nan), "y": np.zeros(20)}, "NaN/Inf"),
        ({"x": np.random.rand(20, 4), "y": np.zeros(19)}, "one label per sample"),
        ({"x": np.random.rand(20, 4), "y": np.full(20, 0.5)}, "integer class labels"),
        (
            {"x": np.random.rand(20, 4), "y": np.zeros(20), "x_test": np.zeros((3, 4))},
            "both x_test",
        ),
    ],
)
def test_malformed_npz_gives_one_line(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_splits(DataConfig(name="npz", path=str(path), batch_size=4))


def test_missing_file_and_batch_larger_than_data(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_splits(DataConfig(name="npz", path=str(tmp_path / "nope.npz")))
    with pytest.raises(ConfigError, match="larger than the training set"):
        load_splits(DataConfig(name="synthetic", num_samples=16, batch_size=64))


def test_batches_shard_disjointly_and_reshuffle_per_epoch():
    x = torch.arange(100).float()[:, None]
    y = torch.arange(100)
    shards = [TensorBatches(x, y, 10, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = [torch.cat([b[1] for b in s]) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 50
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    first = seen[0].clone()
    shards[0].set_epoch(1)
    assert not torch.equal(torch.cat([b[1] for b in shards[0]]), first)


def test_global_batches_do_not_depend_on_the_number_of_workers():
    """An elastic run resizes between (or within) epochs: global batch k of an epoch must be
    the same samples on 1, 2 or 4 workers, so the schedule sees the same training."""
    x, y = torch.zeros(103, 1), torch.arange(103)
    global_batch = 20

    def global_batches(world: int, epoch: int = 5) -> list[list[int]]:
        shards = []
        for rank in range(world):
            batches = TensorBatches(x, y, global_batch // world, rank=rank, world_size=world)
            batches.set_epoch(epoch)
            shards.append([b[1].tolist() for b in batches])
        return [sorted(sum(parts, [])) for parts in zip(*shards, strict=True)]

    one = global_batches(1)
    assert len(one) == 103 // global_batch == 5
    assert global_batches(2) == one and global_batches(4) == one
    assert global_batches(2, epoch=6) != one
    # every sample at most once per epoch
    flat = sum(one, [])
    assert len(flat) == len(set(flat)) == 100


def test_a_mid_epoch_resume_on_another_world_size_continues_the_epoch():
    """Steps 1-2 on 2 workers, the rest on 1: together exactly the epoch's global batches."""
    x, y = torch.zeros(64, 1), torch.arange(64)
    whole = TensorBatches(x, y, 8)
    whole.set_epoch(3)
    expected = [b[1].tolist() for b in whole]
    before = []
    for rank in range(2):
        part = TensorBatches(x, y, 4, rank=rank, world_size=2)
        part.set_epoch(3)
        before.append([b[1].tolist() for b in part][:2])
    after = TensorBatches(x, y, 8)
    after.set_epoch(3, start_step=2)
    resumed = [a + b for a, b in zip(*before, strict=True)] + [b[1].tolist() for b in after]
    assert resumed == expected


def test_eval_batches_cover_every_sample_once():
    x, y = torch.zeros(7, 1), torch.arange(7)
    shards = [
        TensorBatches(x, y, 2, rank=r, world_size=2, shuffle=False, drop_last=False)
        for r in range(2)
    ]
    labels = sorted(torch.cat([b[1] for s in shards for b in s]).tolist())
    assert labels == list(range(7))


def test_augment_is_reproducible_from_the_generator():
    from rayssl.config import AugmentConfig

    aug = Augment(AugmentConfig(shift=3, scale=0.2, jitter=0.1))
    x = torch.randn(8, 1, 40)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape


def test_shift_moves_samples_without_wrapping():
    x = torch.arange(10.0).view(1, 1, 10).repeat(64, 1, 1)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    diffs = (out - x)[:, 0, 5]  # an interior position moves by exactly -shift
    assert set(diffs.tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0} and len(set(diffs.tolist())) > 1
    assert out.min() == 0 and out.max() == 9  # edges repeat, values never wrap around
