"""Shared fixtures: a real local Ray (few CPUs), tiny configs, and a per-test MNIST-1D cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

# One thread per process: tests run 2 Ray workers on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# User code that tests name by import path (tests/helpers: a VICReg method, factories) must
# import in Ray's workers too, whichever test starts Ray: they inherit this environment.
HELPERS = str(Path(__file__).parent / "helpers")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HELPERS, os.environ.get("PYTHONPATH")) if p)


def assert_states_equal(a: dict, b: dict, where: str = "") -> None:
    """Two state dicts (or nested ones, e.g. an optimizer's) hold the same keys and bitwise
    equal tensors; other values compare with ==. `where` names the key that differs."""
    assert a.keys() == b.keys(), where
    for key, value in a.items():
        here = f"{where}.{key}" if where else str(key)
        other = b[key]
        if isinstance(value, dict):
            assert_states_equal(value, other, here)
        elif isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), here
        else:
            assert value == other, here


def gloo_group(rank: int, world: int, rendezvous: str) -> None:
    """Join a real 2-process gloo group through a rendezvous file. A TCP port found free and
    released by the parent can be taken by another process (a Ray of an earlier test) before
    rank 0 binds it; a file in the test's own tmp_path cannot."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=60)
    url = f"file://{rendezvous}"
    dist.init_process_group("gloo", init_method=url, rank=rank, world_size=world, timeout=timeout)


def leave_gloo_group() -> None:
    """End a spawned gloo worker: wait for the other rank, destroy the group, and leave the
    process without interpreter finalisation. Under load, gloo's threads still being torn
    down at finalisation abort the process ('terminate called without an active exception',
    SIGABRT) after every result is written: 1 run in 40 of a 2-rank VICReg worker with two
    busy loops beside it, 0 in 80 with this exit; three CI runs lost a test to it."""
    import os
    import sys

    import torch.distributed as dist

    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # mp.spawn reads exit code 0 as success; results are already on disk


TINY = {
    "epochs": 3,
    "num_workers": 2,
    "max_failures": 0,
    "data": {"name": "synthetic", "shape": [1, 16], "num_samples": 256, "batch_size": 32},
    "backbone": {"name": "cnn1d", "width": 8},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "lr_scheduler": {"name": "warmup_cosine", "warmup_epochs": 1},
}


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config dict (merged over TINY unless base=None) to a YAML file; return its path."""

    def write(overrides: dict | None = None, *, name: str = "tiny", base: dict | None = TINY):
        from rayssl.config import deep_merge

        base = dict(base or {})
        overrides = overrides or {}
        if "name" in overrides.get("backbone", {}):
            base.pop("backbone", None)  # another backbone takes none of the base's options
        cfg = deep_merge(base, overrides)
        cfg.setdefault("storage_path", str(tmp_path / "runs"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


@pytest.fixture(scope="session")
def _ray_at_exit():
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def ray_session(_ray_at_exit):
    """A real local Ray with 4 logical CPUs on this 2-core machine, shared by the tests of
    the session (started again if a test shut it down: tests/test_jobs.py does, so that its
    own Ray head is the only cluster its jobs see)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    return ray


def one_process_loop(overrides=None, select_targets=False, sink=None):
    """A one-process Loop on TINY + `overrides`; `select_targets`: LFR picks its targets on
    the training inputs, as the Ray worker does."""
    from rayssl.config import deep_merge, validate_train_config
    from rayssl.data import load_splits
    from rayssl.engine import Loop
    from rayssl.methods.registry import build_method
    from rayssl.seeds import seed_everything

    base = {**TINY, "num_workers": 1}
    if overrides and "backbone" in overrides:
        base.pop("backbone")  # another backbone takes none of TINY's backbone options
    cfg = validate_train_config(deep_merge(base, overrides or {}))
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    sample = splits.train[0] if select_targets else None
    method = build_method(cfg, splits.sample_shape, splits.num_classes, selection_sample=sample)
    return Loop(method, splits, cfg, sink=sink)


def timm_or_skip() -> None:
    """Skip the calling module where timm is not installed (it is in the test extra, so CI
    runs it); where timm is installed but cannot import (a torchvision built for another
    torch) that is a failure, not a skip."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed: pip install -e '.[vit]'", allow_module_level=True)
    import timm  # noqa: F401


# a test that needs timm: skipped where it is not installed (see `timm_or_skip`)
needs_timm = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("timm") is None,
    reason="timm is not installed: pip install -e '.[vit]'",
)


# a tiny self-supervised run on images: the image folder's and the shards' tests
IMAGE_SSL = {
    "method": "simclr",
    "epochs": 1,
    "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    "simclr": {"temperature": 0.5},
    "eval": {"every": 1, "linear_probe": False},
}


def assert_bad_data_refused(cases, data: dict, write_config, storage: Path) -> None:
    """Each `(data overrides, expected text)` of `cases`, over `data`: `rayssl train` of a
    2-worker `IMAGE_SSL` run (supervised where the overrides say `_supervised`) exits 2
    with one line naming the problem, no traceback, and nothing written under `storage`."""
    from click.testing import CliRunner

    from rayssl.cli import main

    for overrides, expected in cases:
        supervised = overrides.pop("_supervised", False)
        cfg = {
            **({"backbone": IMAGE_SSL["backbone"]} if supervised else IMAGE_SSL),
            "num_workers": 2,
            "data": {**data, **overrides},
        }
        result = CliRunner().invoke(main, ["train", str(write_config(cfg))])
        assert result.exit_code == 2, (expected, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rayssl: error:"), result.output
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in result.output
        assert not storage.exists()


def assert_streams_to_two_workers(data: dict, write_config, scored: int) -> None:
    """A 2-epoch `IMAGE_SSL` run on 2 workers (SimCLR's views, linear probe) streaming
    `data` (240 training samples, global batch 32): every step ran, every loss is finite,
    and the probes, each rank over its share of the streamed fit and test splits, equal
    one process's over the same checkpoint (`rayssl eval`) up to a tie among `scored`."""
    import math

    from rayssl.cluster import fit
    from rayssl.config import load_train_config
    from rayssl.inference.evaluate import evaluate_checkpoint

    data = {"in_memory": False, "val_fraction": 0, "batch_size": 32, "probe_samples": 120,
            "augment": {"preset": "simclr"}, **data}  # fmt: skip
    probes = {"every": 1, "linear_probe": True}
    cfg = load_train_config(write_config({**IMAGE_SSL, "epochs": 2, "data": data, "eval": probes}))
    summary = fit(cfg)
    assert summary["global_steps"] == 2 * (240 // 2 // 16)  # each worker: 120, batch 16
    assert all(math.isfinite(h["train_loss"]) for h in summary["history"])
    last, alone = summary["history"][-1], evaluate_checkpoint(summary["checkpoint"])
    assert abs(last["knn_acc"] - alone["knn_acc"]) <= 1 / scored
    assert abs(last["linear_acc"] - alone["linear_acc"]) <= 1 / scored


def write_search(tmp_path: Path, base: Path) -> Path:
    """A two-trial FIFO search over optimizer.lr (1e-3, 1e-2) on `base`, both at once, its
    storage under `tmp_path / "tune"`; returns the search file."""
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base": base.name,
                "space": {"optimizer.lr": {"choice": [1.0e-3, 1.0e-2]}},
                "metric": "val_accuracy",
                "mode": "max",
                "num_samples": 2,
                "scheduler": {"name": "fifo"},
                "max_concurrent_trials": 2,
                "storage_path": str(tmp_path / "tune"),
            }
        )
    )
    return search
