"""Failures mid-run: a worker killed with SIGKILL, a loss that turns NaN, a crash while a
checkpoint is written. Real Ray runs through the real CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rayssl.state import STATE_FILE, load_state, save_state

HELPERS = str(Path(__file__).parent / "helpers")


def _train(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "train", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _run(config: Path, *args: str) -> tuple[int, str]:
    proc = _train(config, *args)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def _latest_state(storage: Path, name: str) -> dict:
    (run,) = [p for p in storage.iterdir() if p.name.startswith(f"{name}-")]
    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    return load_state(run / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])


def test_atomic_state_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    save_state({"step": 1, "w": torch.ones(3)}, tmp_path)

    def crash_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_state({"step": 2, "w": torch.zeros(3)}, tmp_path)
    monkeypatch.undo()
    assert load_state(tmp_path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temp file left


def test_nan_loss_names_epoch_and_step_and_the_last_good_checkpoint_resumes(write_config, tmp_path):
    # 7 steps per epoch on each worker (230 samples, 16 per worker-batch): the 16th training
    # forward is epoch 3, step 2.
    cfg = write_config(
        {
            "name": "diverge",
            "epochs": 4,
            "backbone": {"name": "diverging:diverging_cnn", "nan_after_steps": 15},
        }
    )
    code, output = _run(cfg)
    assert code == 1
    (line,) = [x for x in output.splitlines() if x.startswith("rayssl: error:")]
    assert line.startswith("rayssl: error: run 'diverge-")
    assert "loss became nan at epoch 3, step 2 (global step 16)" in line
    assert _latest_state(tmp_path / "runs", "diverge")["loop"]["epoch"] == 2

    code, output = _run(cfg, "--resume", "--set", "backbone.nan_after_steps=1000000")
    assert code == 0, output[-3000:]
    state = _latest_state(tmp_path / "runs", "diverge")
    assert state["loop"]["epoch"] == 4 and [h["epoch"] for h in state["loop"]["history"]] == [
        1,
        2,
        3,
        4,
    ]


def test_sigkill_of_a_worker_mid_epoch_restarts_exactly(write_config, tmp_path):
    overrides = {
        "epochs": 4,
        "max_failures": 1,
        "data": {
            "shape": [1, 64],
            "num_samples": 8192,
            "batch_size": 64,
            "augment": {"shift": 2, "jitter": 0.05},
        },
        "backbone": {"name": "cnn1d", "width": 16},
    }
    code, output = _run(write_config({**overrides, "name": "straight"}, name="straight"))
    assert code == 0, output[-3000:]

    proc = _train(write_config({**overrides, "name": "killed"}, name="killed"))
    storage, killed = tmp_path / "runs", None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and proc.poll() is None:
        runs = list(storage.glob("killed-*/checkpoint_manager_snapshot.json"))
        if runs and json.loads(runs[0].read_text()).get("latest_checkpoint_result"):
            pids = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True)
            workers = [int(p) for p in pids.stdout.split()]
            if workers:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)  # first checkpoint is in: epoch 2 is running
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, (out + err)[-3000:]

    a, b = _latest_state(storage, "straight"), _latest_state(storage, "killed")
    assert a["loop"]["global_step"] == b["loop"]["global_step"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
