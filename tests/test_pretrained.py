"""Pretrain -> downstream: `backbone.init_from` (runs, checkpoints, exports; BYOL's online
backbone, SimCLR's, LFR's), linear evaluation and fine-tuning with a scaled backbone lr,
and `rayssl export` loaded in a fresh process without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import timm_or_skip

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import ConfigError, validate_train_config
from rayssl.methods.registry import build_method
from rayssl.optim.setup import optimizer_setup
from rayssl.runs.pretrained import read
from rayssl.runs.state import load_state, save_state

IMAGES = {"name": "synthetic", "shape": [3, 16, 16], "num_samples": 128, "batch_size": 32}
BACKBONE = {"name": "cnn2d", "width": 4, "depth": 2}
METHODS = {  # small heads
    "byol": {"byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}},
    "simclr": {"simclr": {"proj_hidden": 16, "proj_dim": 8, "temperature": 0.2}},
    "lfr": {"lfr": {"num_projectors": 4, "proj_dim": 8, "proj_hidden": 16, "pred_hidden": 16}},
}


def _cfg(method: str, **extra):
    raw = {
        "method": method,
        "data": IMAGES,
        "backbone": BACKBONE,
        **METHODS.get(method, {}),
        **extra,
    }
    return validate_train_config(raw)


def _checkpoint(tmp: Path, method: str) -> tuple[Path, torch.nn.Module]:
    """A checkpoint folder of `method` whose backbone differs from any fresh one (and, for
    BYOL, from its momentum copy), in the layout the loop writes."""
    cfg = _cfg(method)
    torch.manual_seed(1)
    method_ = build_method(cfg, (3, 16, 16), 10)
    with torch.no_grad():
        for p in method_.backbone.parameters():
            p.add_(torch.randn_like(p))
    state = {
        "config": cfg.model_dump(mode="json"),
        "model": method_.state_dict(),
        "loop": {"epoch": 3},
        "method_extra": method_.extra_state(),
        "input": {"shape": [3, 16, 16], "normalize": None},
    }
    save_state(state, tmp / method)
    return tmp / method, method_


@pytest.mark.parametrize("method", ["byol", "simclr", "lfr"])
def test_init_from_loads_each_methods_trained_backbone(tmp_path, method):
    folder, trained = _checkpoint(tmp_path, method)
    pretrained = read(str(folder))
    assert pretrained.source["method"] == method and pretrained.input_shape == [3, 16, 16]
    # a supervised run built from it starts from exactly those weights
    cfg = _cfg("supervised", backbone={**BACKBONE, "init_from": str(folder)})
    fresh = build_method(cfg, (3, 16, 16), 10, pretrained=pretrained)
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[key], value), key
    if method == "byol":  # the online backbone, not the momentum copy
        momentum = trained.backbone_momentum.state_dict()
        assert any(
            not torch.equal(v, momentum[k]) for k, v in trained.backbone.state_dict().items()
        )


def test_byol_started_from_a_backbone_starts_its_momentum_copy_there(tmp_path):
    folder, trained = _checkpoint(tmp_path, "simclr")
    cfg = _cfg("byol", backbone={**BACKBONE, "init_from": str(folder)})
    byol = build_method(cfg, (3, 16, 16), 10, pretrained=read(str(folder)))
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(byol.backbone.state_dict()[key], value)
        assert torch.equal(byol.backbone_momentum.state_dict()[key], value)


def test_backbone_lr_scale_gives_the_backbone_its_own_lr():
    cfg = _cfg("supervised", optimizer={"lr": 1e-2, "backbone_lr_scale": 0.1})
    method = build_method(cfg, (3, 16, 16), 10)
    optimizer, _ = method.configure_optimizers(total_steps=10, steps_per_epoch=5)
    backbone = {id(p) for p in method.backbone.parameters()}
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert all(lrs[i] == pytest.approx(1e-3) for i in backbone)
    head = [id(p) for p in method.fc.parameters()]
    assert head and all(lrs[i] == pytest.approx(1e-2) for i in head)
    assert optimizer_setup(cfg)["learning_rate"] == 1e-2
    with pytest.raises(ConfigError, match="optimizer.backbone_lr_scale"):
        validate_train_config(
            {"method": "simclr", "data": IMAGES, "backbone": BACKBONE,
             "optimizer": {"backbone_lr_scale": 0.1}}
        )  # fmt: skip


def test_bad_init_from_is_one_line_and_writes_nothing(tmp_path, write_config):
    folder, _ = _checkpoint(tmp_path, "simclr")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [
        ({**BACKBONE, "width": 8}, folder, "does not fit this run's cnn2d (depth 2, width 8)"),
        ({"name": "cnn1d", "width": 4}, folder, "does not fit this run's cnn1d"),
        (BACKBONE, tmp_path / "missing", "is not a run or checkpoint folder"),
        (BACKBONE, tmp_path / "empty_run", "holds neither state.pt nor a checkpoint"),
        (BACKBONE, tmp_path / "junk.pt", "not a rayssl export"),
    ]
    for backbone, source, expected in cases:
        data = IMAGES if backbone["name"] == "cnn2d" else {**IMAGES, "shape": [1, 16]}
        config = write_config(
            {
                "method": "supervised",
                "data": data,
                "backbone": {**backbone, "init_from": str(source)},
            }
        )
        result = CliRunner().invoke(main, ["train", str(config)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (expected, result.output)
        assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # init_from in one process: test_init_from_* and the exports test here
def test_linear_eval_from_a_pretrained_run_on_two_workers(ray_session, write_config, tmp_path):
    """SimCLR pretrains (2 workers); a supervised run with init_from and a frozen backbone
    (2 workers) ends with exactly the pretrained backbone, BatchNorm statistics included,
    and a trained head; an export of either run loads in a fresh process without Ray."""
    common = {
        "epochs": 1,
        "data": {**IMAGES, "augment": {"preset": "simclr"}},
        "backbone": BACKBONE,
    }
    ssl = fit(
        validate_train_config(
            {
                **common,
                **METHODS["simclr"],
                "method": "simclr",
                "name": "ssl",
                "num_workers": 2,
                "storage_path": str(tmp_path / "runs"),
                "eval": {"every": 0},
            }
        )
    )
    run_dir = Path(ssl["checkpoint"]).parent
    lin = fit(
        validate_train_config(
            {
                **common,
                "data": IMAGES,
                "method": "supervised",
                "name": "linear",
                "num_workers": 2,
                "storage_path": str(tmp_path / "runs"),
                # the run's name: its newest run under the storage path
                "backbone": {**BACKBONE, "init_from": str(tmp_path / "runs" / "ssl")},
                "supervised": {"freeze_backbone": True},
                "optimizer": {"lr": 1e-2},
                "epochs": 3,
            }
        )
    )
    before = load_state(ssl["checkpoint"])["model"]
    after = load_state(lin["checkpoint"])["model"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    # The head trained: a frozen backbone in eval mode and an untrained head give the same
    # epoch loss every epoch. With standardised features the first epoch starts above chance
    # (measured: 2.483, 2.415, 2.426; chance is ln 10 = 2.303) and epoch-to-epoch noise on
    # this tiny set is not monotone, so the check is on the whole run: the last epoch is
    # clearly below the first, and no epoch is above it.
    losses = [h["train_loss"] for h in lin["history"]]
    assert all(later < losses[0] for later in losses[1:])
    assert losses[-1] < losses[0] - 0.02

    # export, then load in a fresh Python process without Ray: same features as the run's
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    cfg = validate_train_config(load_state(ssl["checkpoint"])["config"])
    method = build_method(cfg, (3, 16, 16), 10)
    method.load_state_dict(before)
    method.eval()
    with torch.no_grad():
        expected = method.backbone(x)
    for fmt in ("state_dict", "torchscript"):
        out = tmp_path / f"backbone-{fmt}.pt"
        result = CliRunner().invoke(
            main, ["export", str(run_dir), "--out", str(out), "--format", fmt]
        )
        assert result.exit_code == 0, result.output
        script = (
            "import sys, json, torch\n"
            "from rayssl.runs.pretrained import load_exported\n"
            f"module, meta = load_exported({str(out)!r})\n"
            f"features = module(torch.load({str(tmp_path / 'x.pt')!r}))\n"
            f"torch.save(features.detach(), {str(tmp_path / 'f.pt')!r})\n"
            "print(json.dumps({'ray': any(m.split('.')[0] == 'ray' for m in sys.modules),"
            " 'meta': meta}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["ray"] is False
        assert report["meta"]["input_shape"] == [3, 16, 16]
        assert report["meta"]["backbone"] == BACKBONE
        assert report["meta"]["source"]["method"] == "simclr"
        torch.testing.assert_close(torch.load(tmp_path / "f.pt"), expected)
    # an export is itself a valid init_from
    assert read(str(tmp_path / "backbone-state_dict.pt")).spec == BACKBONE


def test_exports_go_to_uris_in_either_format_and_serve_as_init_from(tmp_path):
    """`rayssl export --out file://…` in both formats; each export (a URI, TorchScript too)
    is a valid init_from with the checkpoint's exact weights."""
    directory, method = _checkpoint(tmp_path, "simclr")
    expected = method.backbone.state_dict()
    # audit 35.18: docs/data.md names a TorchScript export backbone.ts; any suffix serves
    for fmt, name in (("state_dict", "backbone.pt"), ("torchscript", "backbone.ts")):
        uri = f"file://{tmp_path}/exports/{fmt}/{name}"
        result = CliRunner().invoke(main, ["export", str(directory), "--out", uri, "--format", fmt])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "exports" / fmt / name).is_file()
        pretrained = read(uri)
        assert pretrained.spec == BACKBONE and pretrained.input_shape == [3, 16, 16]
        for key, value in expected.items():
            assert torch.equal(pretrained.state[key], value), (fmt, key)


def test_export_failures_are_one_line_and_leave_no_file(tmp_path):
    directory, _ = _checkpoint(tmp_path, "simclr")
    (tmp_path / "a-file").write_text("")
    blocked = tmp_path / "a-file" / "backbone.pt"  # its folder would be a file
    result = CliRunner().invoke(main, ["export", str(directory), "--out", str(blocked)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"--out '{blocked}' cannot be written" in lines[0]

    state = load_state(directory)
    state["config"]["backbone"]["bogus"] = 1  # a spec the factory does not take
    save_state(state, tmp_path / "odd")
    out = tmp_path / "odd.pt"
    result = CliRunner().invoke(
        main, ["export", str(tmp_path / "odd"), "--out", str(out), "--format", "torchscript"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot be traced to TorchScript" in lines[0], result.output
    assert not out.exists()


def test_init_from_brings_its_normalisation_and_a_resume_needs_no_source(
    write_config, tmp_path, capsys
):
    """A downstream run without data.normalize uses the normalisation its backbone was
    trained with; its --resume takes the weights from its own checkpoint, so it resumes
    after the source run is deleted."""
    import shutil

    from rayssl.cluster import RunFailed
    from rayssl.config import load_train_config

    stats = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    source = fit(
        load_train_config(
            write_config(
                {
                    "name": "source",
                    "num_workers": 0,
                    "epochs": 1,
                    "method": "simclr",
                    **METHODS["simclr"],
                    "data": {**IMAGES, "normalize": stats},
                    "backbone": BACKBONE,
                    "eval": {"every": 0, "linear_probe": False},
                },
                name="source",
                base=None,
            )
        )
    )
    source_dir = Path(source["path"]).parent
    downstream = write_config(
        {
            "name": "downstream",
            "num_workers": 0,
            "epochs": 2,
            "data": IMAGES,
            "backbone": {**BACKBONE, "init_from": str(source_dir)},
            "supervised": {"freeze_backbone": True},
        },
        name="downstream",
        base=None,
    )
    with pytest.raises(RunFailed):
        fit(load_train_config(downstream), crash_after_epoch=1)
    assert "data.normalize from backbone.init_from" in capsys.readouterr().out
    shutil.rmtree(source_dir)
    summary = fit(load_train_config(downstream), resume=True)
    assert summary["epochs_run"] == 2 or summary["history"][-1]["epoch"] == 2
    assert summary["config"]["data"]["normalize"] == stats


def test_per_sample_normalisation_travels_with_the_backbone(write_config, tmp_path, capsys):
    """A backbone pretrained with data.normalize 'sample' records it in its checkpoint and
    its export; a downstream run that sets no normalisation adopts it (said in one line),
    one that sets another is warned and keeps its own."""
    source = fit(
        load_train_config_from(
            write_config(
                {
                    "name": "source",
                    "num_workers": 0,
                    "epochs": 1,
                    "method": "simclr",
                    **METHODS["simclr"],
                    "data": {**IMAGES, "normalize": "sample"},
                    "backbone": BACKBONE,
                    "eval": {"every": 0, "linear_probe": False},
                },
                name="source",
                base=None,
            )
        )
    )
    source_dir = Path(source["path"]).parent
    out = tmp_path / "backbone.pt"
    result = CliRunner().invoke(main, ["export", str(source_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read(str(source_dir)).normalize == read(str(out)).normalize == "sample"

    def downstream(name, data):
        return write_config(
            {
                "name": name,
                "num_workers": 0,
                "epochs": 1,
                "data": data,
                "backbone": {**BACKBONE, "init_from": str(out)},
                "supervised": {"freeze_backbone": True},
            },
            name=name,
            base=None,
        )

    adopted = fit(load_train_config_from(downstream("adopts", IMAGES)))
    assert adopted["config"]["data"]["normalize"] == "sample"
    assert "data.normalize 'sample' from backbone.init_from" in capsys.readouterr().out
    kept = fit(load_train_config_from(downstream("keeps", {**IMAGES, "normalize": "dataset"})))
    assert kept["config"]["data"]["normalize"] == "dataset"
    assert "trained on inputs normalised per sample" in capsys.readouterr().out


def load_train_config_from(path):
    from rayssl.config import load_train_config

    return load_train_config(path)


def _onnx_case(tmp: Path, backbone: dict, normalize) -> tuple[Path, torch.nn.Module]:
    """A supervised checkpoint folder of `backbone` with random weights and `normalize` as
    its input record; returns the folder and the backbone (eval mode)."""
    cfg = validate_train_config({"data": IMAGES, "backbone": backbone})
    torch.manual_seed(2)
    method = build_method(cfg, (3, 16, 16), 10)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for name, buffer in method.backbone.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_()
    state = {
        "config": cfg.model_dump(mode="json"),
        "model": method.state_dict(),
        "loop": {"epoch": 1},
        "method_extra": method.extra_state(),
        "input": {"shape": [3, 16, 16], "normalize": normalize},
    }
    folder = tmp / backbone["name"]
    save_state(state, folder)
    return folder, method.backbone.eval()


ONNX_CASES = {
    "cnn2d": (BACKBONE, {"mean": [0.2, 0.4, 0.6], "std": [0.5, 0.25, 0.125]}),
    "resnet18": ({"name": "resnet18", "width": 8}, "sample"),
    "vit": ({"name": "vit", "size": "tiny", "patch_size": 4, "depth": 2}, None),
}


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_an_onnx_export_runs_in_onnxruntime_with_any_batch_and_the_runs_normalisation(
    tmp_path, case
):
    """`rayssl export --format onnx`: images in [0, 1] in, features out, within 1e-4 of the
    torch backbone fed the same images normalised by hand as the record says; a batch size
    other than the one traced; the export record in the model's metadata."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    backbone, normalize = ONNX_CASES[case]
    if case == "vit":
        timm_or_skip()
    folder, trained = _onnx_case(tmp_path, backbone, normalize)
    out = tmp_path / "backbone.onnx"
    result = CliRunner().invoke(
        main, ["export", str(folder), "--out", str(out), "--format", "onnx"]
    )
    assert result.exit_code == 0, result.output
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if normalize == "sample":
        inputs = (x - x.mean((2, 3), keepdim=True)) / (
            x.var((2, 3), unbiased=False, keepdim=True) + 1e-5
        ).sqrt()
    elif normalize:
        mean, std = (torch.tensor(normalize[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        inputs = (x - mean) / std
    else:
        inputs = x
    with torch.no_grad():
        expected = trained(inputs).flatten(1).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"images": x.numpy()})
    assert features.shape == expected.shape
    assert abs(features - expected).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    record = json.loads(props["rayssl"])
    assert record["input_shape"] == [3, 16, 16] and record["backbone"]["name"] == case
    assert record["normalize"] == normalize


def test_an_onnx_export_of_a_backbone_named_by_import_path_needs_trust(tmp_path):
    pytest.importorskip("onnxscript")
    folder, _ = _onnx_case(tmp_path, {"name": "rayssl.nets:cnn2d", "width": 4, "depth": 2}, None)
    out = tmp_path / "backbone.onnx"
    result = CliRunner().invoke(
        main, ["export", str(folder), "--out", str(out), "--format", "onnx"]
    )
    assert result.exit_code == 2 and "--trust-import-paths" in result.output
    assert not out.exists()
