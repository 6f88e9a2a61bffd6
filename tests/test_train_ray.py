"""Real Ray Train runs: 2 workers on gloo, real checkpoints on disk, real restarts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_states_equal

from rayssl.cluster import fit
from rayssl.cluster.faults import CRASH_ENV
from rayssl.config import ConfigError, load_train_config
from rayssl.runs.state import load_state
from rayssl.runs.storage import SNAPSHOT_FILE, checkpoint_dir_name

# Augmentation and dropout make exactness depend on restored RNG and view seeding.
EXACT = {
    "epochs": 4,
    "max_failures": 0,
    "data": {"augment": {"shift": 2, "jitter": 0.05}},
    "backbone": {"name": "mlp", "hidden": [32], "dropout": 0.2},
}


def _train(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _final_state(storage: Path, name: str) -> dict:
    (run,) = [p for p in storage.iterdir() if p.name.startswith(f"{name}-")]
    return load_state(_checkpoints(run)[-1])


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir())


def _registered(run: Path) -> list[str]:
    snapshot = json.loads((run / SNAPSHOT_FILE).read_text())
    return sorted(r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"])


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["loop"]["global_step"] == b["loop"]["global_step"]
    assert a["loop"]["epoch"] == b["loop"]["epoch"] == 4
    assert_states_equal(a["model"], b["model"])
    assert_states_equal(a["optimizer"]["state"], b["optimizer"]["state"])


@pytest.mark.slow  # exact --resume: local mode (below) and test_runs' resumed Ray run
def test_interrupted_and_resumed_equals_uninterrupted(write_config, tmp_path):
    storage = tmp_path / "runs"
    straight = _train(write_config({**EXACT, "name": "straight"}, name="straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "epoch 4/4" in straight.stdout + straight.stderr  # rank 0's progress line

    cut_cfg = write_config({**EXACT, "name": "cut"}, name="cut")
    crashed = _train(cut_cfg, env={CRASH_ENV: "2"})
    assert crashed.returncode == 1
    assert "injected failure after epoch 2" in crashed.stderr.strip().splitlines()[-1]
    (cut_run,) = [p for p in storage.iterdir() if p.name.startswith("cut-")]
    assert not (cut_run / "summary.json").exists()
    # the workers waited for each other before failing, so Ray Train registered epoch 2
    assert [c.name for c in _checkpoints(cut_run)] == _registered(cut_run)
    # what a rank failing while rank 0 uploads leaves: a folder Ray Train never registered
    orphan = cut_run / checkpoint_dir_name()
    shutil.copytree(_checkpoints(cut_run)[-1], orphan)

    resumed = _train(cut_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {orphan.name} of run '{cut_run.name}'" in resumed.stdout + resumed.stderr
    assert not orphan.exists()
    _assert_same_training_state(_final_state(storage, "straight"), _final_state(storage, "cut"))

    summary = json.loads((cut_run / "summary.json").read_text())
    assert summary["epochs_run"] == 4 and [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["best"]["metric"] == "val_accuracy" and summary["config"]["epochs"] == 4
    assert "test_accuracy" in summary["final_metrics"] and summary["mean_samples_per_s"] > 0
    # num_to_keep: 2 (the default) bounds the checkpoints on disk
    assert len(_checkpoints(cut_run)) == 2


# The resize itself is also checked in the default suite by test_loop (a restore on another
# world size records it) and test_data (global batches independent of the worker count).
@pytest.mark.slow
def test_a_crashed_run_resumed_on_fewer_workers_records_the_resize(write_config, tmp_path):
    """Resumed on fewer workers: the global batch and so the steps per epoch (7) stay,
    epochs 3 and 4 run once each, one line says so, and the summary records the resize."""
    storage = tmp_path / "runs"
    cut_cfg = write_config({**EXACT, "name": "cut"}, name="cut")
    crashed = _train(cut_cfg, env={CRASH_ENV: "2"})
    assert crashed.returncode == 1
    (cut_run,) = [p for p in storage.iterdir() if p.name.startswith("cut-")]
    shrunk = _train(cut_cfg, "--resume", "--set", "num_workers=1")
    assert shrunk.returncode == 0, shrunk.stderr[-3000:]
    output = shrunk.stdout + shrunk.stderr
    assert output.count("resized from 2 to 1 workers at epoch 3, step 14") == 1
    summary = json.loads((cut_run / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert [h["step"] for h in summary["history"]] == [7, 14, 21, 28]
    assert [h["workers"] for h in summary["history"]] == [2, 2, 1, 1]
    assert summary["resumed_at"] == [2]
    assert summary["resizes"] == [{"epoch": 2, "step": 14, "from": 2, "to": 1}]


@pytest.mark.slow  # FailureConfig restarts: test_ssl_ray (and the slow SIGKILL test)
def test_failed_worker_restarts_from_checkpoint_with_failure_config(write_config, tmp_path):
    storage = tmp_path / "runs"
    straight = _train(write_config({**EXACT, "name": "straight"}, name="straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    retried = _train(
        write_config({**EXACT, "name": "retried", "max_failures": 1}, name="retried"),
        env={CRASH_ENV: "2"},
    )
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "injected failure after epoch 2" in retried.stderr  # it did fail once
    _assert_same_training_state(_final_state(storage, "straight"), _final_state(storage, "retried"))


def test_in_process_fit_of_an_elastic_range_and_resume_checks(ray_session, write_config, tmp_path):
    """num_workers [1, 3] on the session's 4-CPU Ray: Ray Train's elastic policy starts 3
    workers (the most that fit), each takes a third of the global batch of 48, and nothing
    is resized. Then `rayssl eval` of the run, and refusals before Ray Train starts."""
    cfg = load_train_config(
        write_config(
            {
                "num_workers": [1, 3],
                "max_failures": 1,
                "epochs": 2,
                "elastic_check_s": 1,
                "data": {"batch_size": 48},
            }
        )
    )
    summary = fit(cfg)
    assert summary["epochs_run"] == 2 and Path(summary["path"]).is_file()
    assert [h["workers"] for h in summary["history"]] == [3, 3]
    assert summary["resizes"] == [] and summary["resumed_at"] == []

    from click.testing import CliRunner

    from rayssl.cli import main

    probed = CliRunner().invoke(main, ["eval", str(Path(summary["path"]).parent)])
    assert probed.exit_code == 0 and "knn_acc" in probed.output and "linear_acc" in probed.output
    empty = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert empty.exit_code == 2 and "neither state.pt nor a checkpoint" in empty.output

    with pytest.raises(ConfigError, match="does not fit this config's network"):
        fit(
            load_train_config(write_config({"num_workers": 1, "backbone": {"width": 4}})),
            resume=True,
        )
    with pytest.raises(ConfigError, match="CPUs, but the Ray cluster has 4"):
        fit(load_train_config(write_config({"num_workers": 8, "data": {"batch_size": 64}})))
    with pytest.raises(ConfigError, match="CPUs, but the Ray cluster has 4"):
        elastic = {"num_workers": [5, 6], "max_failures": 1, "data": {"batch_size": 60}}
        fit(load_train_config(write_config(elastic)))


def test_local_mode_runs_in_the_driver_and_resumes_exactly(write_config, tmp_path):
    """num_workers 0: Ray Train's local mode, no Ray cluster; rayssl writes the checkpoints
    itself. Crashed after epoch 2 and resumed, it ends torch.equal to an uninterrupted run."""
    local = {**EXACT, "num_workers": 0}
    straight = _train(write_config({**local, "name": "straight"}, name="straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "epoch 4/4" in straight.stdout
    assert "Running in local mode" not in straight.stdout + straight.stderr  # rayssl's lines only
    (run,) = (tmp_path / "runs").glob("straight-*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["start_to_first_step_s"] > 0
    assert len(_checkpoints(run)) == 2  # checkpoint.num_to_keep
    assert summary["checkpoint"].endswith(_checkpoints(run)[-1].name)

    cut_cfg = write_config({**local, "name": "cut"}, name="cut")
    crashed = _train(cut_cfg, env={CRASH_ENV: "2"})
    assert crashed.returncode == 1
    assert crashed.stderr.strip().splitlines()[-1].startswith("rayssl: error: run 'cut-")
    assert "injected failure after epoch 2" in crashed.stderr
    resumed = _train(cut_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 3/4" in resumed.stdout and "epoch 2/4" not in resumed.stdout
    _assert_same_training_state(
        _final_state(tmp_path / "runs", "straight"), _final_state(tmp_path / "runs", "cut")
    )
    (cut_run,) = (tmp_path / "runs").glob("cut-*")
    assert json.loads((cut_run / "summary.json").read_text())["resumed_at"] == [2]
