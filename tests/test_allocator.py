"""glibc's malloc in the processes that train (cluster/start.py: ALLOCATOR_ENV): Ray Train's
workers, locally and on a cluster, and a local Ray's processes for Tune's in-process trials
get one arena that never maps a block of its own, so a step's large activations come from
memory the process already has instead of being mapped and zero-filled afresh each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HELPERS, TINY

sys.path.insert(0, HELPERS)  # as Ray's workers and the subprocesses below find it
from malloc_probe import BLOCK, HUGE, probe_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


IN_A_THREAD = """
import json, sys, threading
from malloc_probe import where_a_block_lives  # tests/helpers, on the PYTHONPATH
out = {}
thread = threading.Thread(target=lambda: out.update(where_a_block_lives()))
thread.start()
thread.join()
print(json.dumps(out))
"""


def plain_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RAY_ADDRESS"))}


def test_glibc_maps_a_large_block_on_its_own_by_default():
    """What the settings change, on this machine: as glibc comes, a 24-MB block made in a
    thread of a fresh process is a mapping of its own (so the checks below can fail)."""
    done = subprocess.run(
        [sys.executable, "-c", IN_A_THREAD],
        capture_output=True, text=True, env=plain_env(), timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["mapped_bytes"] >= BLOCK


def test_ray_train_workers_take_large_blocks_from_their_heap(ray_session, tmp_path):
    """Blocks up to 32 MB from the heap, kept for the next step; larger ones mapped on their
    own, so they go back to the system when freed: with every block taken from a heap that
    is never trimmed, an iBOT demo worker (270-MB patch logits) held 8.5 GB where its step
    peaks at 6.8 GB (benchmarks/worker_rss.sh)."""
    from rayssl.cluster.trainer import build_trainer
    from rayssl.config import validate_train_config
    from rayssl.runs.storage import Storage

    cfg = validate_train_config({**TINY, "num_workers": 2, "storage_path": str(tmp_path)})
    storage = Storage.resolve(str(tmp_path / "runs"))
    build_trainer(cfg, None, storage, "probe", train_fn=probe_worker).fit()
    out = tmp_path / "runs" / "probe" / "probe"
    for rank in (0, 1):
        seen = json.loads((out / f"rank{rank}.json").read_text())
        assert seen["env"] == {
            "MALLOC_ARENA_MAX": "1",
            "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
            "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
        }
        assert seen["mapped_bytes"] == 0, f"rank {rank}: the block was mapped on its own"
        assert seen["huge_mapped_bytes"] >= HUGE, f"rank {rank}: 256 MB taken from the heap"


LOCAL_RAY = """
import json, sys
import rayssl.cli
from rayssl.cluster.start import init_ray
import ray
from malloc_probe import where_a_block_lives  # tests/helpers, on the PYTHONPATH

init_ray(None, min_cpus=1, allocator=sys.argv[1] == "tuned")
print(json.dumps(ray.get(ray.remote(num_cpus=1)(where_a_block_lives).remote())))
ray.shutdown()
"""


@pytest.mark.parametrize("allocator", ["tuned", pytest.param("default", marks=pytest.mark.slow)])
def test_a_local_ray_for_in_process_trials_passes_the_settings_on(allocator, tmp_path):
    """`init_ray(allocator=True)` (a Tune search whose trials step in Tune's actor): every
    process of the local Ray it starts; without it, glibc as it comes. A value in the
    driver's environment wins."""
    env = plain_env()
    env["MALLOC_TRIM_THRESHOLD_"] = "999999"  # the user's own, kept
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY, allocator],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if allocator == "tuned":
        assert seen["env"] == {
            "MALLOC_ARENA_MAX": "1",
            "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
            "MALLOC_TRIM_THRESHOLD_": "999999",
        }
        assert seen["mapped_bytes"] == 0
        assert seen["huge_mapped_bytes"] >= HUGE
    else:
        assert seen["env"]["MALLOC_MMAP_THRESHOLD_"] is None
        assert seen["mapped_bytes"] >= BLOCK


@pytest.mark.parametrize("users", [None, pytest.param("131072", marks=pytest.mark.slow)])
def test_local_mode_trains_with_the_settings_in_the_commands_own_process(
    users, write_config, tmp_path
):
    """`rayssl train` with num_workers 0 trains in its own main thread: `tune_this_process`
    sets glibc there, so a 24-MB block of a training forward (a user backbone that probes,
    tests/helpers/malloc_probe.py) comes from the heap; a MALLOC_MMAP_THRESHOLD_ the user
    sets is kept, and glibc maps the block on its own again."""
    out = tmp_path / "mapped"
    backbone = {"name": "malloc_probe:probed_cnn", "width": 8, "out": str(out)}
    config = write_config(
        {**TINY, "epochs": 1, "num_workers": 0, "backbone": backbone,
         "storage_path": str(tmp_path / "runs")}
    )  # fmt: skip
    env = plain_env()
    if users is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = users
    done = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(config)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    mapped = int(out.read_text())
    assert mapped == 0 if users is None else mapped >= BLOCK
