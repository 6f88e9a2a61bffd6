"""Bad input through the real CLI: one line, exit code 2, no traceback, nothing written."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from rayssl.cli import main


def _run(args):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"optimizer": {"lr": -1}}, "optimizer.lr: Input should be greater than 0"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"trainer": 3}, "trainer: unknown key"),
        ({"num_workers": "two"}, "num_workers: Input should be a valid integer"),
        ({"data": {"batch_size": 4096}}, "larger than the training set"),
        ({"data": {"name": "npz", "path": "/nonexistent/x.npz"}}, "does not exist"),
        ({"backbone": {"name": "no_such_pkg.nets:big"}}, "cannot import module 'no_such_pkg.nets'"),
        ({"backbone": {"name": "cnn2d"}}, "cannot take samples of shape (1, 16)"),
        ({"max_failures": -2}, "max_failures: Input should be greater than or equal to -1"),
    ],
)
def test_bad_config_exits_2_with_one_line(write_config, tmp_path, overrides, expected):
    path = write_config(overrides)
    code, output = _run(["train", str(path)])
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayssl: error:"), output
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists()


def test_nan_in_data_and_unwritable_storage(write_config, tmp_path):
    data = tmp_path / "nan.npz"
    x = np.random.rand(64, 1, 16)
    x[3, 0, 2] = np.nan
    np.savez(data, x=x, y=np.zeros(64, dtype=int))
    code, output = _run(["train", str(write_config({"data": {"name": "npz", "path": str(data)}}))])
    assert code == 2 and "NaN/Inf" in output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, output = _run(["train", str(write_config({"storage_path": str(blocker / "runs")}))])
    assert code == 2 and "storage_path" in output and "not writable" in output


def test_set_and_resume_errors(write_config, tmp_path):
    path = write_config()
    code, output = _run(["train", str(path), "--set", "optimizer.lr"])
    assert code == 2 and "expected KEY=VALUE" in output
    code, output = _run(["train", str(path), "--resume"])
    assert code == 2 and "--resume: no run named 'tiny' with a checkpoint" in output


def test_real_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not valid YAML at line" in proc.stderr
