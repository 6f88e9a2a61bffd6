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
from conftest import assert_states_equal

from rayssl.runs.state import STATE_FILE, load_state, save_state

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


# slow: the NaN stop is covered in the default suite by tests/test_loop.py (the message, and a
# real 2-process gloo group where one rank's NaN stops both), a failed run's one line and
# --resume by tests/test_train_ray.py; this one runs both through Ray workers and the CLI.
@pytest.mark.slow
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


def _snapshot(path: Path) -> dict:
    """Ray Train's checkpoint-manager snapshot, or {} while Ray is rewriting it (the file is
    written in place: a read can see it empty or half written)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, FileNotFoundError):
        return {}


@pytest.mark.slow  # a worker's restart from its checkpoint, bitwise: test_ssl_ray[dino, lfr]
def test_sigkill_of_a_worker_mid_epoch_restarts_exactly(write_config, tmp_path):
    """SIGKILL one worker of this run (its pid recorded by the run's own backbone) in the
    middle of epoch 2: the run restarts from epoch 1's checkpoint and ends bitwise equal to
    an uninterrupted run."""
    steps_per_epoch = 115  # 7,373 training samples, 3,686 per worker, 32 per worker-batch
    overrides = {
        "epochs": 4,
        "max_failures": 1,
        "data": {
            "shape": [1, 64],
            "num_samples": 8192,
            "batch_size": 64,
            "augment": {"shift": 2, "jitter": 0.05},
        },
    }

    def config(name: str) -> Path:
        backbone = {
            "name": "recording:recorded_cnn",
            "width": 16,
            "record_dir": str(tmp_path / name),
        }
        return write_config({**overrides, "name": name, "backbone": backbone}, name=name)

    code, output = _run(config("straight"))
    assert code == 0, output[-3000:]

    proc = _train(config("killed"))
    storage, records = tmp_path / "runs", tmp_path / "killed"
    killed = steps_at_kill = None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and proc.poll() is None:
        runs = list(storage.glob("killed-*/checkpoint_manager_snapshot.json"))
        workers = list(records.glob("rank1-*.steps"))
        snap = _snapshot(runs[0]) if runs else {}
        if workers and snap.get("latest_checkpoint_result"):
            steps = int(workers[0].read_text() or 0)
            if steps >= steps_per_epoch + 10:  # epoch 1's checkpoint is in, epoch 2 is running
                killed, steps_at_kill = int(workers[0].name.split("-")[1].split(".")[0]), steps
                os.kill(killed, signal.SIGKILL)
                snapshot = snap  # what Ray Train had registered when the kill landed
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, (out + err)[-3000:]
    assert steps_at_kill < 2 * steps_per_epoch  # the kill landed inside epoch 2's steps
    assert snapshot["latest_checkpoint_result"]["metrics"]["epoch"] == 1  # before epoch 2's
    (run,) = storage.glob("killed-*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_at"] == [1]  # a second attempt resumed from epoch 1's checkpoint
    assert len(list(records.glob("rank1-*.steps"))) == 2  # a new rank-1 process

    a, b = _latest_state(storage, "straight"), _latest_state(storage, "killed")
    assert a["loop"]["global_step"] == b["loop"]["global_step"] == 4 * steps_per_epoch
    assert_states_equal(a["model"], b["model"])


def test_two_resumes_started_together_one_trains_the_other_is_one_line(write_config, tmp_path):
    """Audit 35.6: both trained the run into one folder; the "driver still runs" check read
    a record written only after preflight. Now the first to claim the run trains it."""
    config = write_config({"name": "twice", "num_workers": 0, "epochs": 1})
    code, out = _run(config)
    assert code == 0, out
    more = ("--resume", "--set", "epochs=40")
    first, second = _train(config, *more), _train(config, *more)
    results = [(p.returncode, o + e) for p in (first, second) for o, e in [p.communicate(300)]]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (refused,) = [out for code, out in results if code == 2]
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and "is being trained by another driver" in lines[0], lines
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == list(range(1, 41))  # trained once


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:100], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: os.urandom(len(b)), id="random-bytes"),
    ],
)
def test_a_damaged_state_is_one_line_and_resume_falls_back(write_config, tmp_path, damage):
    """Audit 35.7: a truncated, empty or overwritten state.pt gave rayssl eval and --resume
    a traceback, a bare 'Aborted!' or a garbled line; --resume did not fall back to the
    older checkpoint the run keeps."""
    from click.testing import CliRunner

    from rayssl.cli import main

    config = write_config({"name": "damaged", "num_workers": 0, "epochs": 2})
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    older, newest = sorted(run.glob("checkpoint_*"))
    state = newest / STATE_FILE
    state.write_bytes(damage(state.read_bytes()))

    result = runner.invoke(main, ["eval", str(run)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"'{state}': not a readable rayssl state" in lines[0], lines

    result = runner.invoke(main, ["train", str(config), "--resume", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    assert f"passed over '{state}'" in result.output and f"from {older.name}" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]  # epoch 2 trained again

    for folder in run.glob("checkpoint_*"):  # nothing readable left: one line
        (folder / STATE_FILE).write_bytes(b"")
    result = runner.invoke(main, ["train", str(config), "--resume", "--set", "epochs=4"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "has no readable checkpoint" in lines[0], lines


@pytest.mark.parametrize("schedule", ["onecycle", "warmup_cosine"])
def test_a_finished_run_extended_with_more_epochs_follows_the_longer_schedule(
    write_config, tmp_path, schedule
):
    """Audit 35.8: extending a finished onecycle run failed ('Tried to step 29 times') and
    marked the run failed: the old schedule's total steps came back with the checkpoint.
    The schedule now takes the resumed config's length from where it stood."""
    from click.testing import CliRunner

    from rayssl.cli import main

    config = write_config(
        {"name": "longer", "num_workers": 0, "epochs": 2, "lr_scheduler": {"name": schedule}}
    )
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    before = json.loads((run / "summary.json").read_text())["history"]
    result = runner.invoke(main, ["train", str(config), "--resume", "--set", "epochs=4"])
    assert result.exit_code == 0, result.output
    history = json.loads((run / "summary.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert history[:2] == before  # the epochs already run are the run's own
    lrs = [h["lr"] for h in history]
    # both schedules end a 2-epoch run near 0; stretched to 4 epochs, epoch 3 trains at a
    # real lr again and the schedule still comes down at its new end
    assert lrs[2] > 5 * lrs[1] and lrs[3] < lrs[2]


def test_a_full_disk_is_one_line_at_start_and_mid_run_and_leaves_no_temp_file(
    write_config, tmp_path
):
    """Audit 35.9: a full disk passed the writability probe (it wrote 0 bytes) and left a
    folder holding only `.run.json.tmp`; mid-run, writing the "failed" record failed too: a
    traceback, a record stuck at "running", a stray temp file. A file-size limit stands in
    for the full disk at start (the write fails the same way), /dev/full mid-run."""
    storage = tmp_path / "runs"
    config = write_config({"name": "full", "num_workers": 0, "epochs": 30})
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from rayssl.cli import main\n"
        f"sys.argv = ['rayssl', 'train', {str(config)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and f"storage_path '{storage}' is not writable" in lines[0], lines
    assert "free some space" in lines[0]
    assert [p for p in storage.rglob("*")] == []  # no run folder, no temporary file

    # mid-run: the disk fills before the run fails; its "failed" record cannot be written
    env_crash = {**os.environ, "RAYSSL_CRASH_AFTER_EPOCH": "20", "PYTHONPATH": HELPERS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "train", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_crash,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        records = list(storage.glob("full-*/run.json"))
        if records and json.loads(records[0].read_text())["status"] == "running":
            break
        time.sleep(0.2)
    (record,) = records
    (record.parent / ".run.json.tmp").symlink_to("/dev/full")  # writes there: ENOSPC
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out + err)[-3000:]
    assert "Traceback" not in out + err
    (line,) = [line for line in err.strip().splitlines() if line.startswith("rayssl: error:")]
    assert "its run record could not be written either" in line
    assert "No space left on device" in line and "interrupted" in line
    assert not (record.parent / ".run.json.tmp").exists()
    assert not (record.parent / ".run.json.tmp").is_symlink()
