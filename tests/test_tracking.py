"""MLflow tracking (optional extra) against a real local sqlite store: one MLflow run per
rayssl run, params, per-epoch metrics, the summary; a failed run and its --resume share the
MLflow run, with every epoch logged exactly once."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import write_search

from rayssl.cli import main
from rayssl.cluster import RunFailed, fit
from rayssl.config import load_train_config

mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow  # rank 0's MLflow logging: test_a_search_logs_one_mlflow_run_per_trial
def test_mlflow_run_survives_a_failure_and_resume(ray_session, write_config, tmp_path, monkeypatch):
    """2 Ray workers (each in Ray's own working directory) and the README's relative sqlite
    URI: rank 0 logs into the driver's database, and a --resume logs only the epochs the
    MLflow run lacks."""
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///mlflow.db"  # relative to the directory the command runs in
    config = write_config(
        {
            "name": "tracked",
            "epochs": 3,
            "tracking": {"mlflow_uri": uri, "experiment": "demo"},
        }
    )
    with pytest.raises(RunFailed):
        fit(load_train_config(config), crash_after_epoch=2)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    (failed,) = client.search_runs([experiment.experiment_id])
    assert failed.info.status == "FAILED" and "injected" in failed.data.tags["rayssl_error"]
    before = client.get_metric_history(failed.info.run_id, "train_loss")
    assert sorted(m.step for m in before) == [1, 2]  # logged by rank 0 in the worker

    summary = fit(load_train_config(config), resume=True)
    (run,) = client.search_runs([experiment.experiment_id])  # the same MLflow run
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert "rayssl_error" not in run.data.tags  # a successful resume clears the old error
    assert run.data.tags["rayssl_run"] == summary["run"]
    assert run.data.params["optimizer.lr"] == "0.003" and run.data.params["epochs"] == "3"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2, 3]  # each epoch once
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(
        [h["train_loss"] for h in summary["history"]]
    )
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(
        summary["final_metrics"]["test_accuracy"]
    )
    (final,) = client.get_metric_history(run.info.run_id, "final_test_accuracy")
    assert final.step == 3 and final.timestamp > 0  # at the run's last epoch, not step 0


def test_a_tracking_outage_never_stops_training(write_config, tmp_path, capsys, monkeypatch):
    """The MLflow store breaks after the run opened: every epoch still trains and is
    checkpointed, one warning line says so, and the summary is written."""
    db = tmp_path / "mlflow.db"
    config = write_config(
        {
            "name": "outage",
            "num_workers": 0,
            "epochs": 2,
            "tracking": {"mlflow_uri": f"sqlite:///{db}", "experiment": "demo"},
        }
    )
    cfg = load_train_config(config)
    from rayssl.cluster import driver

    opened = driver.open_mlflow

    def open_then_break(*args):
        run = opened(*args)
        db.write_bytes(b"not a database" * 100)  # the store is gone from here on
        return run

    monkeypatch.setattr(driver, "open_mlflow", open_then_break)
    summary = fit(cfg)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    warnings = [line for line in capsys.readouterr().out.splitlines() if "MLflow" in line]
    assert [w for w in warnings if "training goes on" in w] == warnings[:1], warnings
    assert len(warnings) == 2 and "not closed" in warnings[1]  # the driver's close, at the end
    assert summary["path"].endswith("summary.json")


def test_an_unusable_mlflow_uri_is_one_line(write_config, tmp_path):
    config = write_config({"num_workers": 0, "tracking": {"mlflow_uri": "nosuch://x"}})
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "tracking.mlflow_uri 'nosuch://x' cannot be used" in lines[0]


def test_a_search_logs_one_mlflow_run_per_trial(ray_session, write_config, tmp_path):

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = write_config(
        {
            "epochs": 2,
            "num_workers": 1,
            "data": {"batch_size": 16},
            "tracking": {"mlflow_uri": uri, "experiment": "search"},
        }
    )
    search = write_search(tmp_path, base)
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.001", "0.01"]
    for run in runs:
        assert not any(k.startswith("_") for k in run.data.params)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
        assert len(steps) == 2


def test_an_unreachable_server_warns_and_no_credential_is_shown_or_stored(write_config, tmp_path):
    """Audit 35.4 and 35.10: a server that does not answer blocked the start through
    MLflow's whole retry schedule, then left an empty run folder; its URI's password was
    echoed and stored in run.json, summary.json and state.pt."""
    import socket

    with socket.socket() as s:  # a local port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:s3cret-pw@127.0.0.1:{port}/?token=t0ken-s3cret"
    config = write_config(
        {"name": "unreachable", "num_workers": 0, "epochs": 1, "tracking": {"mlflow_uri": uri}}
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and "trains without MLflow" in warnings[0], result.output
    assert "alice:***@127.0.0.1" in warnings[0]
    assert "s3cret" not in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    stored = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"run.json", "summary.json", "state.pt"} <= {p.name for p in stored}
    for path in stored:
        assert b"s3cret" not in path.read_bytes(), path


def test_redacted_uris_keep_what_names_the_store():
    from rayssl.config import redact_uri

    assert redact_uri("https://me:pw@host:5000/x") == "https://me:***@host:5000/x"
    assert redact_uri("https://tok@host/") == "https://***@host/"
    assert redact_uri("http://host/?api_key=1&x=2") == "http://host/?api_key=***&x=2"
    assert redact_uri("http://me:pw@h/", "failed: h/?x&pw") == "failed: h/?x&***"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact_uri("databricks") == "databricks"
