"""The Ray Data path: training rows stay in Parquet and are streamed to 2 real Ray Train
workers (`get_dataset_shard`), for data larger than memory."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import load_train_config


def _write(path, x, y):
    flat = pa.array(list(x.reshape(len(x), -1)), type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"x": flat, "y": pa.array(y)}), path, row_group_size=64)


@pytest.fixture
def parquet_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(640, 1, 16)).astype(np.float32)
    y = (x.reshape(640, -1) @ rng.normal(size=(16, 4))).argmax(1)  # a learnable rule
    folder = tmp_path / "train"
    folder.mkdir()
    _write(folder / "part-0.parquet", x[:256], y[:256])  # a folder of files, like Ray writes
    _write(folder / "part-1.parquet", x[256:512], y[256:512])
    _write(tmp_path / "test.parquet", x[512:], y[512:])
    return folder, tmp_path / "test.parquet"


def test_parquet_rows_stream_to_two_workers(ray_session, write_config, parquet_files):
    train, test = parquet_files
    data = {
        "name": "parquet",
        "path": str(train),
        "test_path": str(test),
        "shape": [1, 16],
        "batch_size": 32,
        "shuffle_buffer": 64,
    }
    cfg = load_train_config(
        write_config(
            {"epochs": 4, "data": data, "optimizer": {"lr": 1e-2}, "lr_scheduler": {"name": "none"}}
        )
    )
    summary = fit(cfg)
    history = summary["history"]
    assert summary["global_steps"] == 4 * (512 // 2 // 16)  # every worker: 256 rows, batch 16
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.4  # chance is 0.25


def test_bad_parquet_input_is_one_line(write_config, parquet_files, tmp_path):
    train, _ = parquet_files
    cases = [
        ({"path": str(train), "x_column": "pixels"}, "has no column(s) pixels"),
        ({"path": str(train), "shape": [1, 40]}, "hold 16 values, data.shape [1, 40] needs 40"),
        ({"path": str(tmp_path / "missing")}, "is not readable parquet"),
    ]
    for data, expected in cases:
        config = write_config({"data": {"name": "parquet", "batch_size": 32, **data}})
        result = CliRunner().invoke(main, ["train", str(config)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.output


def test_a_mid_epoch_resume_of_a_stream_runs_the_epochs_remaining_steps(ray_session):
    """Streamed batches restored at step 3 of an 8-step epoch run the 5 steps left, from a
    fresh pass of a real Ray Data stream (Ray Data's split keeps no order to resume)."""
    import ray.data

    from rayssl.data import StreamedBatches

    rows = [{"x": [float(i)] * 4, "y": i % 3} for i in range(64)]
    dataset = ray.data.from_items(rows)
    batches = StreamedBatches(dataset.iterator(), 64, (1, 4), 8)
    assert len(batches) == 8 and len(list(batches)) == 8
    batches.set_epoch(0, start_step=3)
    rest = list(batches)
    assert len(rest) == 5 and all(x.shape == (8, 1, 4) for x, _ in rest)


@pytest.mark.slow  # a search's data bundle per trial: test_tune's multi-worker trials
def test_a_streamed_search_whose_trials_fill_the_cluster_finishes(
    write_config, parquet_files, tmp_path
):
    """`rayssl tune` of Parquet data in its own process, on the local Ray it starts (this
    machine's CPUs, 2 here): 1-worker trials would take every CPU, and Ray Data's read
    tasks, scheduled outside the trials' placement groups, waited forever (reproduced: 4
    trials RUNNING on 4/4 CPUs, no step in 3 minutes). Each trial now reserves its own data
    bundle, so the search finishes."""
    import csv
    import os
    import subprocess
    import sys

    import yaml

    train, test = parquet_files
    data = {"name": "parquet", "path": str(train), "test_path": str(test), "shape": [1, 16]}
    base = write_config({"epochs": 1, "num_workers": 1, "data": {**data, "batch_size": 32}})
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base": base.name,
                "space": {"optimizer.lr": {"choice": [1.0e-3, 1.0e-2]}},
                "metric": "train_loss",
                "mode": "min",
                "num_samples": 2,
                "scheduler": {"name": "fifo"},
                "max_concurrent_trials": 2,
                "storage_path": str(tmp_path / "tune"),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "tune", str(search)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (experiment,) = (tmp_path / "tune").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 2 and all(r["epochs"] == "1" and not r["error"] for r in rows)
