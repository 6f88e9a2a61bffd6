"""Run folders written by an earlier rayssl still resume: the checkpoint format, the run
records and the config keys are part of the public surface.

`tests/fixtures/runs_before_split/` holds two BYOL runs of 2 epochs written by rayssl before
its orchestration moved into packages (commit 43ba64a): one in local mode, one by Ray Train
with 2 workers (Ray's own checkpoint snapshot included). Each test copies one, resumes it for
a third epoch with today's code, and checks that the old epochs are kept and the new one ran
from the saved state.

`tests/fixtures/runs_before_homes/` holds two local runs written before each method got one
module and each part of the loop its own state (commit 0ab7d53): SimSiam (a param group
outside the LR schedule, the online probe) and DINO (its centre and teacher temperature,
the weight-decay schedule, OneCycle).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayssl.cli import main
from rayssl.runs.state import load_state_file

FIXTURES = Path(__file__).parent / "fixtures" / "runs_before_split"
BEFORE_HOMES = Path(__file__).parent / "fixtures" / "runs_before_homes"


def _resume_old_run(
    tmp_path: Path, name: str, in_process: bool = True, fixtures: Path = FIXTURES
) -> tuple[dict, dict]:
    """Copy the old run folder, resume it for 3 epochs (with `rayssl train --resume`, in this
    process or as a command of its own); return (old state, new state)."""
    (old_dir,) = fixtures.glob(f"{name}-*")
    runs = tmp_path / "runs"
    shutil.copytree(old_dir, runs / old_dir.name)
    raw = yaml.safe_load((fixtures / f"{name}.yaml").read_text())
    raw.update(epochs=3, storage_path=str(runs))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    old_newest = json.loads((old_dir / "summary.json").read_text())["history"][-1]
    old = load_state_file(sorted(old_dir.glob("checkpoint_*/state.pt"))[-1])
    assert old["loop"]["epoch"] == 2 and old["loop"]["history"][-1]["epoch"] == old_newest["epoch"]

    if in_process:
        result = CliRunner().invoke(main, ["train", str(config), "--resume"])
        code, output = result.exit_code, result.output
    else:  # a Ray run: its own process, so no Ray stays initialised in this one
        command = [sys.executable, "-m", "rayssl.cli", "train", str(config), "--resume"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        code, output = proc.returncode, proc.stdout + proc.stderr
    assert code == 0, output
    assert old_dir.name in output  # the old folder continued, no new run started
    assert [p.name for p in runs.iterdir()] == [old_dir.name]
    summary = json.loads((runs / old_dir.name / "summary.json").read_text())
    newest = sorted((runs / old_dir.name).glob("checkpoint_*/state.pt"))[-1]
    return old, {**load_state_file(newest), "summary": summary}


def _check_continued(old: dict, new: dict) -> None:
    history = new["loop"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == old["loop"]["history"]  # the old epochs are kept as they were
    assert new["loop"]["resumed_at"] == [2]
    steps_per_epoch = old["loop"]["global_step"] // 2
    assert new["loop"]["global_step"] == 3 * steps_per_epoch  # trained on from step 2's end
    assert new["summary"]["epochs_run"] == 3
    # the weights moved on from the saved ones (the run trained a third epoch)
    assert new["model"].keys() == old["model"].keys()
    assert any(not new["model"][k].equal(old["model"][k]) for k in old["model"])


def test_a_local_run_written_before_the_split_resumes(tmp_path: Path):
    old, new = _resume_old_run(tmp_path, "old_local")
    _check_continued(old, new)


@pytest.mark.parametrize("name", ["homes_simsiam", "homes_dino"])
def test_a_run_written_before_one_home_per_method_resumes(tmp_path: Path, name: str):
    old, new = _resume_old_run(tmp_path, name, fixtures=BEFORE_HOMES)
    _check_continued(old, new)
    assert new["optimizer"]["param_groups"][0].keys() == old["optimizer"]["param_groups"][0].keys()
    if name == "homes_simsiam":  # the online probe's state went on with the run
        assert new["online_probe"].keys() == old["online_probe"].keys()


@pytest.mark.slow  # ~40 s: a Ray cluster of its own; the format is the local test's
def test_a_ray_run_written_before_the_split_resumes(tmp_path: Path):
    old, new = _resume_old_run(tmp_path, "old_ray", in_process=False)
    _check_continued(old, new)
    assert new["world_size"] == 2 and len(new["rng"]) == 2
