"""`s3://` against a real S3-compatible server: moto's server, started by the test on
loopback. An image folder in a bucket streams to two Ray Train workers (train and test
splits), the run checkpoints into the bucket, `rayssl eval` probes the run from there, and
`rayssl embed` reads both the run and the images from it and writes its Parquet there.
Elsewhere URIs are tested through `file://`.

moto 5.2.6 or later: earlier 5.x answered CompleteMultipartUpload with the root element
`CompleteMultipartUploadResponse` (moto#10055); the AWS SDK for C++ in pyarrow reads that as
an error embedded in a 200 OK and retries until it gives up, so no upload ever completed."""

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

pytest.importorskip("moto", minversion="5.2.6")

from rayssl.data.demo import write_digit_images  # noqa: E402

BUCKET = "rayssl-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(tmp_path, monkeypatch) -> dict:
    """A moto S3 server on 127.0.0.1 holding one empty bucket; returns the environment a
    user would set (endpoint and keys) for this process and the commands it starts."""
    import pyarrow.fs as pafs

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=(tmp_path / "moto.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "rayssl",
        "AWS_SECRET_ACCESS_KEY": "rayssl-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, (tmp_path / "moto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.time() < deadline, "moto's server did not start"
                time.sleep(0.2)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        pafs.S3FileSystem(
            endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True
        ).create_dir(BUCKET)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group, started above
        server.wait(timeout=30)


def _rayssl(*args: str, env: dict) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=420,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run


@pytest.mark.slow
def test_stream_checkpoint_and_embed_in_an_s3_bucket(s3, tmp_path):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    local = tmp_path / "digits"
    write_digit_images(local, train=64, test=50, seed=3)
    pafs.copy_files(str(local), f"s3://{BUCKET}/digits", source_filesystem=pafs.LocalFileSystem())
    bucket = f"s3://{BUCKET}"
    config = tmp_path / "s3.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "simclr",
                "name": "in-bucket",
                "epochs": 2,
                "num_workers": 2,
                "cpus_per_worker": 1,
                "storage_path": f"{bucket}/runs",
                "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
                "data": {
                    "name": "images",
                    "path": f"{bucket}/digits/train",
                    "test_path": f"{bucket}/digits/test",
                    "in_memory": False,
                    "val_fraction": 0,
                    "batch_size": 16,
                    "eval_batch_size": 16,
                    "probe_samples": 16,
                    "normalize": "dataset",
                },
            }
        )
    )
    trained = _rayssl("train", str(config), env=s3)
    assert "knn_acc" in trained.stdout + trained.stderr

    fs, runs = pafs.FileSystem.from_uri(f"{bucket}/runs")
    (run,) = [
        i.base_name for i in fs.get_file_info(pafs.FileSelector(runs)) if i.base_name[0] != "."
    ]
    assert run.startswith("in-bucket-")  # the run's folder, named by its start time
    stored = fs.get_file_info(pafs.FileSelector(f"{runs}/{run}", recursive=True))
    states = [i.path for i in stored if i.base_name == "state.pt"]
    assert len(states) >= 1, [i.path for i in stored]  # the checkpoint is in the bucket
    assert not any(Path(i.path).name.endswith(".tmp") for i in stored)

    # the run's probes again, from the bucket: rayssl eval of a run at a URI
    evaluated = _rayssl("eval", f"{bucket}/runs/{run}", env=s3)
    assert "knn_acc" in evaluated.stdout and "linear_acc" in evaluated.stdout, evaluated.stdout

    out = f"{bucket}/embeddings"
    _rayssl("embed", f"{bucket}/runs/{run}", f"{bucket}/digits/test", "--out", out,
            "--actors", "2", env=s3)  # fmt: skip
    fs, where = pafs.FileSystem.from_uri(out)
    table = pq.read_table(where, filesystem=fs).sort_by("source")
    files = sorted(f.relative_to(local / "test") for f in (local / "test").rglob("*.png"))
    assert table.column("source").to_pylist() == [f"{bucket}/digits/test/{f}" for f in files]
    assert table.column("label").to_pylist() == [int(f.parent.name) for f in files]
    assert len(table.column("embedding")[0]) > 0
    assert fs.get_file_info(f"{where}/_rayssl-embeddings.json").type == pafs.FileType.File


@pytest.mark.slow
def test_webdataset_shards_stream_and_embed_from_an_s3_bucket(s3, tmp_path):
    """Shards in a bucket: indexed by one sequential read each, streamed to two workers by
    Ray Data's reader, the test split read by byte range on each rank, then embedded."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    pytest.importorskip("webdataset")
    local = tmp_path / "shards"
    write_digit_images(local, train=64, test=30, seed=3, shard_size=20)
    pafs.copy_files(str(local), f"s3://{BUCKET}/shards", source_filesystem=pafs.LocalFileSystem())
    bucket = f"s3://{BUCKET}"
    config = tmp_path / "wds.yaml"
    data = {
        "name": "webdataset", "path": f"{bucket}/shards/train",
        "test_path": f"{bucket}/shards/test/shard-{{000000..000001}}.tar", "in_memory": False,
        "val_fraction": 0, "batch_size": 16, "eval_batch_size": 16, "probe_samples": 16,
    }  # fmt: skip
    config.write_text(
        yaml.safe_dump(
            {
                "method": "simclr",
                "name": "shards",
                "epochs": 1,
                "num_workers": 2,
                "cpus_per_worker": 1,
                "storage_path": str(tmp_path / "runs"),
                "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
                "data": data,
            }  # fmt: skip
        )
    )
    trained = _rayssl("train", str(config), env=s3)
    assert "knn_acc" in trained.stdout + trained.stderr
    (run,) = (tmp_path / "runs").iterdir()
    out = tmp_path / "emb"
    _rayssl("embed", str(run), f"{bucket}/shards/test", "--out", str(out), env=s3)
    table = pq.read_table(out)
    assert table.num_rows == 30 and len(set(table.column("source").to_pylist())) == 30
    assert all(s.startswith(f"{bucket}/shards/test/shard-") for s in table["source"].to_pylist())
    labels = table.column("label").to_pylist()  # the .cls of each sample, none missing
    assert set(labels) <= set(range(10)) and len(set(labels)) >= 5


@pytest.mark.slow
def test_shards_in_a_bucket_are_indexed_in_the_tasks_of_a_joined_cluster(s3, tmp_path):
    """A driver given RAY_ADDRESS (as under `ray job submit`) indexes shards at an s3:// URI
    in that cluster's tasks: each task opens the bucket with the driver's endpoint and its
    own node's credentials, and the driver's own indexing is made to fail."""
    import json

    import pyarrow.fs as pafs
    import ray

    pytest.importorskip("webdataset")
    local = tmp_path / "shards"
    write_digit_images(local, train=64, test=10, seed=3, shard_size=20)
    pafs.copy_files(str(local), f"s3://{BUCKET}/shards", source_filesystem=pafs.LocalFileSystem())
    ray.shutdown()  # a Ray of this test's own, its nodes started with the bucket's keys
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        probe = Path(__file__).parent / "helpers" / "index_probe.py"
        env = {
            **os.environ,
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "RAYSSL_CACHE": str(tmp_path / "cache"),
        }
        run = subprocess.run(
            [sys.executable, str(probe), f"s3://{BUCKET}/shards/train"],
            capture_output=True, text=True, env=env, timeout=240,
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["samples"] == 64 and found["joined"]
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.json"))) == 4
