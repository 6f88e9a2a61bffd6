"""Methods by import path: a VICReg written only against the `Method` contract
(tests/helpers/vicreg.py) trains on 2 real Ray Train workers with LARS and global-batch
BatchNorm from the config, and restarts exactly;
its options are checked before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_states_equal

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.runs.state import load_state

HELPERS = str(Path(__file__).parent / "helpers")
VICREG = {
    "method": "vicreg:VICReg",
    "method_options": {"proj_dim": 16, "cov": 0.5},
    "epochs": 3,
    # the papers' image views: this test is also the default suite's check that the image
    # pipeline restarts exactly on 2 workers (test_ssl_ray's SimCLR one is marked slow)
    "data": {
        "shape": [3, 16, 16],
        "num_samples": 128,
        "batch_size": 32,
        "augment": {"preset": "byol"},
    },
    "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    "eval": {"every": 1, "linear_probe": False},
    # the large-batch tools reach a plug-in method through config alone
    "optimizer": {"name": "lars", "lr": 0.1, "weight_decay": 1e-4},
    "model": {"sync_batchnorm": True},
}


@pytest.fixture(autouse=True)
def helpers_importable(monkeypatch):
    monkeypatch.syspath_prepend(HELPERS)  # the driver; Ray's workers: conftest's PYTHONPATH


def test_vicreg_by_import_path_on_two_workers_restarts_exactly(ray_session, write_config, tmp_path):
    straight = fit(
        load_train_config(write_config({**VICREG, "storage_path": str(tmp_path / "a")}, name="a"))
    )
    retried = fit(
        load_train_config(
            write_config(
                {**VICREG, "max_failures": 1, "storage_path": str(tmp_path / "b")}, name="b"
            )
        ),
        crash_after_epoch=2,
    )
    a, b = load_state(straight["checkpoint"]), load_state(retried["checkpoint"])
    # resumed from a checkpoint: epoch 2's, or epoch 1's when the crash came before Ray
    # Train registered epoch 2's (the controller registers reports asynchronously)
    assert a["method"] == "VICReg" and retried["resumed_at"] in ([1], [2])
    assert "knn_acc" in straight["final_metrics"]  # probes run on its backbone
    assert_states_equal(a["model"], b["model"])
    assert_states_equal(a["optimizer"]["state"], b["optimizer"]["state"])
    assert a["config"]["method_options"] == {"proj_dim": 16, "cov": 0.5}
    assert all("momentum_buffer" in v for v in a["optimizer"]["state"].values())  # LARS's


def test_unknown_method_options_are_one_line(write_config, tmp_path):
    config = write_config({**VICREG, "method_options": {"proj_dim": 8, "lambda_": 1.0}})
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "rayssl: error: method_options: lambda_ not taken by vicreg:VICReg (it takes: proj_dim, "
        "sim, var, cov)"
    ]
    missing = write_config({**VICREG, "method": "vicreg:Nope"}, name="missing")
    result = CliRunner().invoke(main, ["train", str(missing)])
    assert result.exit_code == 2 and "module 'vicreg' has no attribute 'Nope'" in result.output
    assert not (tmp_path / "runs").exists()
