"""`rayssl tune`: search config validation (before Ray starts) and a real small search."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayssl.cli import main
from rayssl.config import ConfigError
from rayssl.runs.state import load_state
from rayssl.tune import load_search


@pytest.fixture
def write_search(tmp_path, write_config):
    def write(overrides: dict | None = None):
        base = write_config({"epochs": 3, "num_workers": 1, "data": {"batch_size": 16}})
        search = {
            "base": base.name,
            "space": {"optimizer.lr": {"loguniform": [1.0e-3, 3.0e-2]}},
            "metric": "val_accuracy",
            "mode": "max",
            "num_samples": 3,
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "max_concurrent_trials": 2,
            "storage_path": str(tmp_path / "tune"),
            **(overrides or {}),
        }
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(search))
        return path

    return write


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"space": {"optimizer.learning_rate": {"uniform": [0.1, 0.2]}}},
            "space.optimizer.learning_rate: optimizer.learning_rate: unknown key",
        ),
        (
            {"space": {"optimizer.lr": {"uniform": [0.2, 0.1]}}},
            "range [0.2, 0.1] is empty or inverted",
        ),
        ({"space": {"optimizer.lr": {"loguniform": [0.0, 0.1]}}}, "loguniform needs low > 0"),
        ({"space": {"optimizer.lr": {"choice": []}}}, "choice needs at least one value"),
        ({"space": {}}, "space: Dictionary should have at least 1 item"),
        (
            {"scheduler": {"name": "hyperband"}},
            "scheduler.name: Input should be 'asha', 'fifo' or 'pbt'",
        ),
        ({"search": "bayesopt"}, "search: Input should be 'random' or 'optuna'"),
        (
            {"space": {"optimizer.lr": {"uniform": [-1.0, 0.1]}}},
            "space.optimizer.lr: optimizer.lr: Input should be greater than 0",
        ),
        ({"base": "missing.yaml"}, "base: config file"),
        (
            {"metric": "linear_acc", "overrides": {"method": "simclr", "eval": {"every": 2}}},
            "scheduler.grace_period (1) must be a multiple of eval.every (2)",
        ),
        (
            {"scheduler": {"name": "pbt"}, "space": {"data.batch_size": {"choice": [16, 32]}}},
            "space.data.batch_size: scheduler 'pbt' changes only optimizer.lr",
        ),
        (
            {"scheduler": {"name": "pbt"}, "space": {"optimizer.lr": {"grid": [0.01, 0.02]}}},
            "use choice instead of grid",
        ),
        # audit 35.17: every trial ran, then 'best nope nan', exit 0
        ({"metric": "nope"}, "metric: 'nope' is not reported by this search's runs"),
        ({"metric": "linear_acc"}, "metric: 'linear_acc' is not reported"),  # supervised
        ({"name": "../escaped"}, "name: a run name may not be empty or start with '.'"),
    ],
)
def test_bad_searches_fail_before_ray(write_search, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_search(write_search(overrides))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_resources_beyond_the_cluster(write_search, ray_session):
    result = CliRunner().invoke(
        main, ["tune", str(write_search({"resources": {"workers_per_trial": 8}}))]
    )
    assert (
        result.exit_code == 2
        and "resources: num_workers x cpus_per_worker = 8 CPUs" in result.output
    )


def test_small_search_reports_table_best_config_and_plot(write_search, ray_session, tmp_path):
    result = CliRunner().invoke(main, ["tune", str(write_search())])
    assert result.exit_code == 0, result.output
    (experiment,) = (tmp_path / "tune").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 3 and all(0 < float(r["optimizer.lr"]) < 0.03 for r in rows)
    assert all(1 <= int(r["epochs"]) <= 3 for r in rows)
    scores = [float(r["val_accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    best = yaml.safe_load((experiment / "best.yaml").read_text())
    assert best["optimizer"]["lr"] == pytest.approx(float(rows[0]["optimizer.lr"]))
    assert (experiment / "val_accuracy.png").stat().st_size > 1000
    assert list(experiment.rglob("events.out.tfevents*")), "no TensorBoard logs"
    # 1-worker trials run in the trial's process and give Tune their checkpoints
    states = list(experiment.glob("*/checkpoint_*/state.pt"))
    assert states and load_state(states[0].parent)["config"]["num_workers"] == 1
    assert not list((experiment / "trials").iterdir())  # no nested Ray Train runs
    per_trial = [float(r["start_to_first_step_s"]) for r in rows if r.get("start_to_first_step_s")]
    assert per_trial and max(per_trial) < 30  # trial start -> first step, no Train start-up


def test_multi_worker_trials_fit_a_torch_trainer_each(write_search, ray_session, tmp_path):
    search = write_search(
        {
            "num_samples": 1,
            "scheduler": {"name": "fifo"},
            "resources": {"workers_per_trial": 2},
            "max_concurrent_trials": 3,
        }
    )
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    assert "max_concurrent_trials 3 lowered to 2" in result.output  # 4 CPUs, 2 per trial
    (experiment,) = (tmp_path / "tune").iterdir()
    (row,) = list(csv.DictReader(open(experiment / "results.csv")))
    assert int(row["epochs"]) == 3
    (state,) = [
        load_state(p.parent) for p in (experiment / "trials").glob("*/checkpoint_*/state.pt")
    ][-1:]
    assert state["world_size"] == 2


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(write_search, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    search = write_search(
        {"num_samples": 3, "max_concurrent_trials": 1, "scheduler": {"name": "fifo"}}
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "tune", str(search)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    finished: dict[Path, str] = {}
    deadline = time.time() + 240
    while not finished and time.time() < deadline and driver.poll() is None:
        for result in (tmp_path / "tune").glob("*/run_trial_*/result.json"):
            lines = result.read_text().splitlines()
            if lines and json.loads(lines[-1]).get("training_iteration") == 3:  # all 3 epochs
                finished[result] = result.read_text()
        time.sleep(0.5)
    assert finished and driver.poll() is None, "no trial finished while the driver was alive"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()

    resumed = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "tune", str(search), "--resume"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (experiment,) = (tmp_path / "tune").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 3 and all(r["epochs"] == "3" for r in rows)
    for result, text in finished.items():
        assert result.read_text() == text  # a finished trial was not run again


@pytest.mark.slow
def test_pbt_copies_the_better_trial_and_perturbs_its_learning_rate(write_search, tmp_path):
    search = write_search(
        {
            "num_samples": 2,
            "space": {"optimizer.lr": {"loguniform": [1.0e-4, 3.0e-2]}},
            "scheduler": {
                "name": "pbt",
                "perturbation_interval": 2,
                "quantile_fraction": 0.5,
                "synch": True,
            },
            "overrides": {"epochs": 4, "data": {"num_samples": 512}},
        }
    )
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    (experiment,) = (tmp_path / "tune").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 2 and all(r["epochs"] == "4" for r in rows)
    # With 2 trials and quantile 0.5, at every interval the weaker trial copies the stronger:
    # it restarts in its own process from the donor's Tune checkpoint (get_checkpoint), under
    # a perturbed learning rate that neither trial started with.
    states = [load_state(p.parent) for p in experiment.glob("*/checkpoint_*/state.pt")]
    assert any(s["loop"]["resumed_at"] for s in states)  # some trial was restarted
    lrs = {s["config"]["optimizer"]["lr"] for s in states}
    assert len(lrs) > 2, lrs  # a perturbed value (0.8x or 1.2x the donor's) was used
    assert (experiment / "pbt_global.txt").read_text().strip()  # PBT's log of each copy


def test_a_search_on_a_storage_uri_writes_there_and_resumes(
    write_search, ray_session, tmp_path, monkeypatch
):
    """storage_path as a URI (file:// through pyarrow, as s3:// or gs:// go): the search,
    its results and --resume live under the URI; nothing lands in a local 'file:' folder."""
    monkeypatch.chdir(tmp_path)
    search = write_search(
        {
            "storage_path": f"file://{tmp_path}/store",
            "num_samples": 2,
            "scheduler": {"name": "fifo"},
        }
    )
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    (experiment,) = (tmp_path / "store").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 2 and (experiment / "best.yaml").is_file()
    assert (experiment / "val_accuracy.png").stat().st_size > 1000
    assert not any(p.name.startswith("file:") for p in tmp_path.iterdir())
    again = CliRunner().invoke(main, ["tune", str(search), "--resume"])
    assert again.exit_code == 0, again.output
    assert [p.name for p in (tmp_path / "store").iterdir()] == [experiment.name]  # the same


def test_a_search_from_a_pretrained_backbone_gives_every_trial_its_normalisation(
    write_config, ray_session, tmp_path
):
    """A base config with `backbone.init_from` and no `data.normalize` trains every trial
    on inputs normalised as the backbone was trained (as a run does), and best.yaml says so.
    Before, only the driver's copy of the config took them: trials normalised afresh."""
    from rayssl.config import validate_train_config
    from rayssl.methods.registry import build_method
    from rayssl.runs.state import save_state

    stats = {"mean": [0.25], "std": [2.0]}
    source_cfg = validate_train_config({**TINY_SOURCE, "data": {**TINY_DATA, "normalize": stats}})
    method = build_method(source_cfg, (1, 16), 4)
    save_state(
        {
            "config": source_cfg.model_dump(mode="json"),
            "model": method.state_dict(),
            "method_extra": method.extra_state(),
            "loop": {"epoch": 1},
            "input": {"shape": [1, 16], "normalize": stats},
        },
        tmp_path / "source",
    )
    base = write_config(
        {
            "epochs": 1,
            "num_workers": 1,
            "data": {"batch_size": 16},
            "backbone": {"init_from": str(tmp_path / "source")},
        }
    )
    search = {
        "base": base.name,
        "space": {"optimizer.lr": {"choice": [1.0e-3]}},
        "metric": "val_accuracy",
        "mode": "max",
        "num_samples": 1,
        "scheduler": {"name": "fifo"},
        "storage_path": str(tmp_path / "tune"),
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    result = CliRunner().invoke(main, ["tune", str(tmp_path / "search.yaml")])
    assert result.exit_code == 0, result.output
    (experiment,) = (tmp_path / "tune").iterdir()
    (state,) = experiment.glob("*/checkpoint_*/state.pt")
    trained = load_state(state.parent)
    assert trained["config"]["data"]["normalize"] == stats
    assert trained["input"]["normalize"] == stats
    best = yaml.safe_load((experiment / "best.yaml").read_text())
    assert best["data"]["normalize"] == stats
    assert trained["loop"]["epoch"] == 1


TINY_DATA = {"name": "synthetic", "shape": [1, 16], "num_samples": 256, "batch_size": 32}
TINY_SOURCE = {"method": "supervised", "backbone": {"name": "cnn1d", "width": 8}}
