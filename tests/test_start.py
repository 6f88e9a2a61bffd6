"""Starting Ray for a run (cluster/start.py) beside other Ray instances on the host, and what
the embedded cluster exposes. Each test starts and stops only the processes it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HELPERS = str(Path(__file__).parent / "helpers")

LISTENERS = r"""
import json, os, sys, time
import rayssl.cli  # as `rayssl train` starts: before Ray is imported
from rayssl.cluster.start import init_ray
from rayssl.config import validate_train_config
import ray

init_ray(validate_train_config({"num_workers": 1}))
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
time.sleep(2)

def children(pids):
    found = set(pids)
    for _ in range(4):
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    parent = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if parent in found:
                    found.add(int(p))
    return found

ours = children({os.getpid()})
inodes = {}
for pid in ours:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes[link[8:-1]] = pid
    except OSError:
        pass
ports = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
            address, port = cols[1].rsplit(":", 1)
            ports.append([address, int(port, 16)])
import http.client
external, answered = sys.argv[1], []
for address, port in ports:
    if address in ("0100007F", "00000000000000000000000001000000"):
        continue  # loopback only
    try:  # asked from the host's external address, as another machine would
        conn = http.client.HTTPConnection(external, port, timeout=2)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        if response.status == 200 and b"# HELP" in response.read(1000000):
            answered.append(port)
    except (OSError, http.client.HTTPException):
        pass
print(json.dumps({"ports": ports, "answered": answered}))
ray.shutdown()
"""


def _external_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: picks the outward interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_embedded_ray_serves_no_unauthenticated_metrics_off_this_host():
    """Audit 35.5: the local Ray's processes listened on every interface, and its metrics
    endpoint answered GET /metrics, without authentication, on the host's external address.
    Now every server of the embedded cluster listens on loopback only."""
    import json

    external = _external_ip()
    if external is None:
        pytest.skip("this host has no external interface to try")
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", LISTENERS, external],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ports"]  # the cluster's own servers were found
    assert not found["answered"], f"GET /metrics answered on {external}:{found['answered']}"
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert all(address in loopback for address, _ in found["ports"]), found["ports"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_head_started_on_this_host_neither_captures_nor_disturbs_a_run(write_config, tmp_path):
    """Audit 35.11 and 35.12: with `ray start --head` on the same host, `rayssl train` joined
    it and failed (num_cpus passed to a cluster it joins: 34 lines); with another Ray
    instance on the host every run printed Ray Train's PlacementGroupCleaner traceback; a
    RAY_ADDRESS of a token-auth cluster without its token gave 75 lines."""
    import shutil
    import tempfile

    port = _free_port()
    short = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # Ray's socket paths take <= 107 bytes
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", f"--temp-dir={short}"],
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        log = tmp_path / "head.log"
        deadline = time.time() + 90
        while "Ray runtime started" not in log.read_text() and time.time() < deadline:
            assert head.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "Ray runtime started" in log.read_text(), log.read_text()[-3000:]
        config = write_config({"name": "beside", "epochs": 1})
        env = {**os.environ, "PYTHONPATH": HELPERS}
        env.pop("RAY_ADDRESS", None)
        run = subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", str(config)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        said = run.stdout + run.stderr
        # (Ray Train's controller may still log a resource-request timeout that Ray itself
        # calls safe to ignore when the cores are busy: not what this test is about)
        assert "PlacementGroupCleaner" not in said, said[-3000:]
        assert "multiple active Ray instances" not in said and "num_cpus" not in said
        assert yaml.safe_load(config.read_text())["name"] == "beside"

        env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
        joined = subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", str(config)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert joined.returncode == 2, (joined.stdout + joined.stderr)[-3000:]
        lines = (joined.stdout + joined.stderr).strip().splitlines()
        assert len(lines) == 1 and "cannot join that Ray cluster" in lines[0], lines
        assert "token" in lines[0]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's own process group, started above
        head.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)
