"""The package as a user installs it: a built wheel, not this checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import rayssl

ROOT = Path(__file__).parents[1]


# no PYTHONPATH: the venv must find the wheel's rayssl, not a checkout on the path
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(args, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_wheel_installs_with_its_example_configs_and_trains_one_epoch(tmp_path):
    """`pip wheel .` gives a wheel holding the example configs; installed into a fresh venv
    (its dependencies from this environment's site-packages), its `rayssl --version` is
    the package's, `rayssl configs --copy` writes the configs elsewhere, and one local-mode
    epoch trains from the copy, far from this checkout."""
    wheels = tmp_path / "wheels"
    build = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT]
    _run([sys.executable, "-m", *build], cwd=tmp_path)
    (wheel,) = wheels.glob("rayssl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rayssl/examples/configs/supervised_mnist1d.yaml" in names
    assert "rayssl/examples/tune_configs/simclr_mnist1d.yaml" in names
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "rayssl"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    where = _run([python, "-c", "import rayssl; print(rayssl.__file__)"], cwd=work)
    assert where.startswith(str(venv)), where  # the wheel's rayssl, not this checkout's
    assert _run([command, "--version"], cwd=work).strip() == f"rayssl, version {rayssl.__version__}"
    listed = _run([command, "configs"], cwd=work)
    assert "configs/simclr_mnist1d.yaml" in listed and "tune_configs/" in listed
    _run([command, "configs", "--copy", "examples"], cwd=work)
    assert (work / "examples" / "tune_configs" / "simclr_mnist1d.yaml").is_file()
    sets = ["epochs=1", "num_workers=0", "storage_path=runs"]
    config = work / "examples" / "configs" / "supervised_mnist1d.yaml"
    _run([command, "train", config, *[a for s in sets for a in ("--set", s)]], cwd=work)
    (summary,) = (work / "runs").glob("*/summary.json")
    assert json.loads(summary.read_text())["epochs_run"] == 1
    again = subprocess.run(
        [command, "configs", "--copy", "examples"], cwd=work, capture_output=True, text=True
    )
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
