"""Run folders: `--resume`, `init_from` and `rayssl export` by run name find exactly that
run's folders, and a new run reserves its folder so two launches never share one."""

from __future__ import annotations

from pathlib import Path

from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.runs.pretrained import read
from rayssl.runs.storage import Storage, pick_run_name

LOCAL = {"num_workers": 0, "epochs": 1}


def test_a_run_name_never_picks_a_longer_name_that_starts_like_it(write_config, tmp_path):
    """`demo-best-…` (what a search writes) and `demo-v2-…` are newer, with checkpoints:
    `--resume` and `init_from` of `demo` still find `demo-<timestamp>`."""
    demo = fit(load_train_config(write_config({**LOCAL, "name": "demo"}, name="demo")))
    for other in ("demo-best", "demo-v2"):
        fit(load_train_config(write_config({**LOCAL, "name": other}, name=other)))
    storage = Storage(str(tmp_path / "runs"))
    assert storage.newest_run("demo") == demo["run"]
    assert read(str(tmp_path / "runs" / "demo")).source["run"].endswith(demo["run"])
    resumed = load_train_config(write_config({**LOCAL, "name": "demo"}, name="demo"))
    assert pick_run_name(resumed, storage, resume=True) == demo["run"]


def test_launches_in_the_same_second_get_their_own_folders(write_config, tmp_path):
    cfg = load_train_config(write_config({**LOCAL, "name": "twice"}))
    storage = Storage(str(tmp_path / "runs"))
    first = pick_run_name(cfg, storage, resume=False)
    assert (tmp_path / "runs" / first).is_dir()  # reserved before training starts
    second = pick_run_name(cfg, storage, resume=False)
    assert second != first and (tmp_path / "runs" / second).is_dir()
    assert Path(tmp_path / "runs" / first).exists()
