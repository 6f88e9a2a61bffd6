"""Checkpoint and export files are data: a crafted `state.pt` or export is refused in one
line by every command that reads one, with nothing it names imported or called; states
written before RNG states were tensors still load and restore."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import HELPERS

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import ConfigError, load_train_config
from rayssl.runs.pretrained import EXPORT_FORMAT, load_exported
from rayssl.runs.state import STATE_FILE, capture_rng, load_state, restore_rng, save_state


class _Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_refusal(result, marker: Path, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not marker.exists()  # nothing in the file ran


def test_a_crafted_state_is_refused_by_every_command(write_config, tmp_path):
    config = write_config({"name": "victim", "num_workers": 0, "epochs": 1})
    summary = fit(load_train_config(config))
    run_dir = Path(summary["path"]).parent
    (state_file,) = run_dir.glob(f"*/{STATE_FILE}")
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "config": {}}, state_file)

    runner = CliRunner()
    refused = "names 'posix.system', which a rayssl state never holds"
    (run_dir / "summary.json").unlink()  # so the table reads the newest state
    result = runner.invoke(main, ["runs", str(run_dir.parent)])
    assert result.exit_code == 0 and "unreadable" in result.output, result.output
    listed = runner.invoke(main, ["runs", str(run_dir.parent), "--json"])
    assert refused in listed.output and not marker.exists()
    downstream = write_config(
        {"name": "down", "num_workers": 0, "epochs": 1, "backbone": {"init_from": str(run_dir)}},
        name="down",
    )
    for args in (
        ["plot", str(run_dir), "--out", str(tmp_path / "p.png")],
        ["eval", str(run_dir)],
        ["export", str(run_dir), "--out", str(tmp_path / "b.pt")],
        ["train", str(config), "--resume"],
        ["train", str(downstream)],
    ):
        _one_line_refusal(runner.invoke(main, args), marker, refused)


def test_an_export_naming_an_import_path_is_rebuilt_only_when_trusted(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS)
    marker = tmp_path / "called"
    export = tmp_path / "backbone.pt"
    torch.save(
        {
            "format": EXPORT_FORMAT,
            "backbone": {"name": "marker:touch", "path": str(marker)},
            "input_shape": [1, 8],
            "normalize": None,
            "source": {},
            "state_dict": {},
        },
        export,
    )
    with pytest.raises(ConfigError, match="by import path.*trust_import_paths"):
        load_exported(export)
    assert not marker.exists()
    module, meta = load_exported(export, trust_import_paths=True)  # the caller's choice
    assert marker.exists() and meta["backbone"]["name"] == "marker:touch"


def test_eval_rebuilds_a_config_with_import_paths_only_when_trusted(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS)
    marker = tmp_path / "called"
    from rayssl.config import validate_train_config

    cfg = validate_train_config(
        {
            "data": {"name": "synthetic", "shape": [1, 8], "num_samples": 64, "batch_size": 16},
            "backbone": {"name": "cnn1d", "width": 4},
        }
    ).model_dump(mode="json")
    cfg["backbone"] = {"name": "marker:touch", "path": str(marker)}
    save_state({"config": cfg, "model": {}, "method_extra": {}}, tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "ckpt")])
    _one_line_refusal(result, marker, "names 'marker:touch' by import path")
    assert "--trust-import-paths" in result.output


def test_a_state_written_with_numpy_rng_arrays_still_loads_and_restores(tmp_path):
    """Checkpoints written before RNG states were tensors (numpy's key array pickled as an
    ndarray) load with weights_only and put every generator back where it was."""
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    old = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # the old layout: a numpy array inside
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    expected = (random.random(), np.random.rand(), torch.rand(1))
    save_state({"rng": [old]}, tmp_path)
    loaded = load_state(tmp_path)["rng"][0]
    restore_rng(loaded)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    # and the new layout holds no numpy object at all
    save_state({"rng": [capture_rng()]}, tmp_path / "new")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new" / STATE_FILE) == []


def _script_with_setstate(path: Path, extra: dict[str, bytes | str]) -> None:
    """A TorchScript archive whose `__setstate__` prints a marker: torch.jit.load runs it."""
    from typing import Tuple  # noqa: UP035 - TorchScript reads the annotation

    class Loud(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, bool]:  # noqa: UP006
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:  # noqa: UP006
            print("RAN-AT-LOAD")
            self.w = state[0]
            self.training = state[1]

        def forward(self, x):
            return x

    torch.jit.save(torch.jit.script(Loud()), str(path), _extra_files=extra)


def test_a_torchscript_file_is_read_as_data_without_running_its_code(tmp_path, capfd):
    """Audit 35.1: init_from and load_exported ran a TorchScript archive's code at load."""
    import io
    import json

    from rayssl.runs.pretrained import TORCHSCRIPT_STATE, read

    # the control: torch.jit.load does run the archive's code
    _script_with_setstate(tmp_path / "control.pt", {})
    torch.jit.load(str(tmp_path / "control.pt"))
    assert "RAN-AT-LOAD" in capfd.readouterr().out

    record = {
        "format": EXPORT_FORMAT,
        "backbone": {"name": "mlp", "hidden": [4]},
        "input_shape": [1, 8],
        "normalize": None,
        "source": {},
    }
    old = tmp_path / "old.ts"  # metadata but no weights as data: refused, nothing runs
    _script_with_setstate(old, {"rayssl.json": json.dumps(record)})
    with pytest.raises(ConfigError, match="reading them would run the archive's code"):
        read(str(old))
    with pytest.raises(ConfigError, match="torchscript=True"):
        load_exported(old)
    assert "RAN-AT-LOAD" not in capfd.readouterr().out

    from rayssl import nets

    net = nets.call_factory(nets.BACKBONES["mlp"], {"hidden": [4]}, input_shape=(1, 8))
    weights = io.BytesIO()
    torch.save(net.state_dict(), weights)
    crafted = tmp_path / "crafted.ts"  # with weights as data: read, still nothing runs
    _script_with_setstate(
        crafted, {"rayssl.json": json.dumps(record), TORCHSCRIPT_STATE: weights.getvalue()}
    )
    pretrained = read(str(crafted))
    module, meta = load_exported(crafted)
    assert "RAN-AT-LOAD" not in capfd.readouterr().out
    assert meta["backbone"] == record["backbone"]
    for key, value in net.state_dict().items():
        assert torch.equal(pretrained.state[key], value)
        assert torch.equal(module.state_dict()[key], value)
    load_exported(crafted, torchscript=True)  # only when asked by name
    assert "RAN-AT-LOAD" in capfd.readouterr().out


def test_a_checkpoint_without_an_input_record_imports_nothing_untrusted(tmp_path, monkeypatch):
    """Audit 35.2: export and init_from validated such a checkpoint's config, importing the
    import paths it names and reading its data.path, without --trust-import-paths."""
    monkeypatch.syspath_prepend(HELPERS)
    from rayssl.config import validate_train_config

    marker = tmp_path / "called"
    cfg = validate_train_config(
        {
            "data": {"name": "synthetic", "shape": [1, 8], "num_samples": 64, "batch_size": 16},
            "backbone": {"name": "cnn1d", "width": 4},
        }
    ).model_dump(mode="json")
    cfg["method"] = "marker:touch"  # validating the config imports and inspects it
    cfg["backbone"] = {"name": "marker:touch", "path": str(marker)}
    save_state(
        {"config": cfg, "model": {"backbone.w": torch.zeros(1)}, "loop": {"epoch": 1}},
        tmp_path / "ckpt",
    )
    sys_modules_before = "marker" in __import__("sys").modules
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "--out", "b.pt"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "predates rayssl's input record" in lines[0], result.output
    assert "--trust-import-paths" in lines[0]
    assert not marker.exists() and not Path("b.pt").exists()
    assert ("marker" in __import__("sys").modules) == sys_modules_before
