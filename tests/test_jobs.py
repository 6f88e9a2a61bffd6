"""`ray job submit` against a real Ray cluster started on loopback with `ray start --head`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A Ray head on loopback (its own ports and temp dir), stopped by killing its process
    group so that no other Ray on this machine is touched."""
    import ray

    # A local Ray of this test process (another module's) would share the machine's CPUs
    # and Ray's session files with the head; its jobs must see only the head's cluster.
    if ray.is_initialized():
        ray.shutdown()
    gcs, dashboard = _free_port(), _free_port()
    # Ray's unix sockets live under --temp-dir: keep it short (pytest's tmp_path is too long).
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=3",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # Ray 2.60 turns token authentication on for `ray start`; a loopback test cluster
        # opts out (a real cluster keeps it and its users pass the token to `ray job`).
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    # Ready when a no-op job runs: the job server answers before the node's job agent has
    # registered ("No available agent to submit job"), which takes longer on a busy machine.
    noop = [RAY, "job", "submit", "--address", address, "--", "python", "-c", "pass"]
    while time.time() < deadline:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        probe = subprocess.run(noop, capture_output=True, env=env)
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the Ray head did not come up")
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_train(head, tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(
        yaml.safe_dump(
            {
                "epochs": 2,
                "num_workers": 2,
                "storage_path": str(tmp_path / "runs"),
                "data": {
                    "name": "synthetic",
                    "shape": [1, 16],
                    "num_samples": 256,
                    "batch_size": 32,
                },
                "backbone": {"name": "cnn1d", "width": 8},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    submitted = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head,
            "--working-dir",
            str(workdir),
            "--",
            "rayssl",
            "train",
            "tiny.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
    assert "succeeded" in submitted.stdout.lower()
    (summary,) = (tmp_path / "runs").glob("tiny-*/summary.json")
    assert json.loads(summary.read_text())["epochs_run"] == 2


def test_job_submit_tune(head, tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(
        yaml.safe_dump(
            {
                "epochs": 2,
                "num_workers": 1,
                "data": {
                    "name": "synthetic",
                    "shape": [1, 16],
                    "num_samples": 256,
                    "batch_size": 32,
                },
                "backbone": {"name": "cnn1d", "width": 8},
            }
        )
    )
    (workdir / "search.yaml").write_text(
        yaml.safe_dump(
            {
                "base": "tiny.yaml",
                "space": {"optimizer.lr": {"choice": [1.0e-3, 1.0e-2]}},
                "num_samples": 2,
                "scheduler": {"name": "fifo"},
                "storage_path": str(tmp_path / "tune"),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    submitted = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head,
            "--working-dir",
            str(workdir),
            "--",
            "rayssl",
            "tune",
            "search.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
    (results,) = (tmp_path / "tune").glob("search*/results.csv")
    assert len(results.read_text().strip().splitlines()) == 3  # header + 2 trials
