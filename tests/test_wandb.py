"""Weights & Biases (optional extra) through Ray's own integration, in offline mode (no
account, no network): one W&B run per rayssl run, logged by rank 0, continued by a resume;
one per Tune trial. The runs' files are read back: W&B 0.31 has no Python reader for its
offline `.wandb` files (its reader moved into its Go core), so `_records` reads the
LevelDB-style log they are (7-byte header, 32 KiB blocks, 7-byte record headers) and
parses each record with W&B's own protobuf classes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_search

from rayssl.cli import main
from rayssl.cluster import RunFailed, fit
from rayssl.config import load_train_config

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _hermetic_wandb(tmp_path, monkeypatch):
    """W&B's own settings and caches in this test's folder, its console quiet."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, record = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        record = chunk if kind in (1, 2) else record + chunk  # full/first, middle/last
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


def _read_run(folder: Path) -> dict:
    """An offline run folder's id, project, group, config keys and logged epochs."""
    (path,) = folder.glob("run-*.wandb")
    out: dict = {"history": []}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(id=record.run.run_id, project=record.run.project, group=record.run.run_group)
            out["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            items = record.history.item
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            )
    return out


def test_one_wandb_run_per_rayssl_run_logged_each_epoch_and_continued_by_a_resume(write_config):
    """Local mode (rank 0 is this process): a run that fails after epoch 1 and its
    --resume write two offline segments of one W&B run (the run folder's name as its id);
    the config and every epoch's numbers are in them, and the resumed segment holds the
    run's own numbers for epochs 2 and 3."""
    config = write_config(
        {
            "name": "tracked",
            "num_workers": 0,
            "epochs": 3,
            "tracking": {"wandb": {"project": "demo", "group": "g", "mode": "offline"}},
        }
    )
    with pytest.raises(RunFailed):
        fit(load_train_config(config), crash_after_epoch=1)
    summary = fit(load_train_config(config), resume=True)
    run_dir = Path(summary["path"]).parent
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2
    first, resumed = (_read_run(s) for s in segments)
    assert first["id"] == resumed["id"] == run_dir.name
    assert first["project"] == "demo" and first["group"] == "g"
    assert first["config"]["method"] == "supervised" and first["config"]["epochs"] == 3
    assert [h["epoch"] for h in first["history"]] == [1]
    logged = {h["epoch"]: h for h in resumed["history"]}
    assert set(logged) >= {2, 3}
    for h in summary["history"]:
        if h["epoch"] in (2, 3):
            assert logged[h["epoch"]]["train_loss"] == pytest.approx(h["train_loss"])
            assert logged[h["epoch"]]["_step"] == h["epoch"]
    assert "test_accuracy" in logged[3]


# the per-trial callback shares its sampled-values wrapper with MLflow's, whose search test
# (test_tracking) is in the default suite, as the per-run W&B test above: slow here
@pytest.mark.slow
def test_a_search_logs_one_wandb_run_per_trial(ray_session, write_config, tmp_path):
    base = write_config(
        {
            "epochs": 2,
            "num_workers": 1,
            "data": {"batch_size": 16},
            "tracking": {"wandb": {"project": "search", "mode": "offline"}},
        }
    )
    search = write_search(tmp_path, base)
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    segments = sorted((tmp_path / "tune").glob("*/wandb/offline-run-*"))
    runs = [_read_run(s) for s in segments]
    assert len(runs) == 2 and len({r["id"] for r in runs}) == 2
    assert sorted(r["config"]["optimizer.lr"] for r in runs) == [1.0e-3, 1.0e-2]
    for run in runs:
        assert not any(k.startswith("_") and k != "_wandb" for k in run["config"])
        assert len([h for h in run["history"] if "val_accuracy" in h]) == 2
