"""Bad input through the real CLI: one line naming the problem, exit code 2, no traceback,
and no run directory written or changed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from rayssl.cli import main
from rayssl.engine.dummy import DummyTrainer
from rayssl.runs.state import save_state

BAD_VALUES = [
    ({"optimizer": {"lr": -1}}, "optimizer.lr: Input should be greater than 0"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr: Input should be greater than 0"),
    ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({"trainer": 3}, "trainer: unknown key"),
    (
        {"data": {"augment": {"shfit": 2}}},
        "data.augment.shfit: unknown key; accepted keys here: shift",
    ),
    ({"num_workers": "two"}, "num_workers: expected a count (2) or an elastic range [MIN"),
    ({"num_workers": [2, 1]}, "num_workers: [2, 1] must be [MIN, MAX] with 1 <= MIN <= MAX"),
    ({"num_workers": [1, 2, 3]}, "num_workers: expected a count (2) or an elastic range"),
    (
        {"num_workers": [1, 3], "max_failures": 2},
        "data.batch_size (32) must be divisible by every worker count num_workers [1, 3] "
        "allows (3 does not divide it)",
    ),
    ({"num_workers": [1, 2]}, "max_failures 0 forbids: set max_failures to a count or -1"),
    ({"use_gpu": "maybe"}, "use_gpu: Input should be a valid boolean"),
    ({"data": {"batch_size": 4096}}, "larger than the training set"),
    ({"data": {"batch_size": 0}}, "data.batch_size: Input should be greater than or equal to 1"),
    ({"data": {"val_fraction": 1.0}}, "data.val_fraction: Input should be less than 1"),
    (
        {"data": {"labels_per_class": 0}},
        "data.labels_per_class: Input should be greater than or equal to 1",
    ),
    ({"data": {"labels_per_class": 1000}}, "data.labels_per_class (1000): class 0 has"),
    (
        {"data": {"name": "imagenet"}},
        "data.name: Input should be 'mnist1d', 'digits', 'synthetic', 'npz', 'parquet', "
        "'images' or 'webdataset'",
    ),
    ({"data": {"name": "npz", "path": "/nonexistent/x.npz"}}, "does not exist"),
    ({"backbone": {"name": "no_such_pkg.nets:big"}}, "cannot import module 'no_such_pkg.nets'"),
    (
        {"backbone": {"name": "torch.nn:NoSuchNet"}},
        "module 'torch.nn' has no attribute 'NoSuchNet'",
    ),
    ({"backbone": {"name": "cnn2d"}}, "cannot take samples of shape (1, 16)"),
    ({"head": {"name": "mlp", "depth": 3}}, "head.name 'mlp': unknown option 'depth'"),
    ({"max_failures": -2}, "max_failures: Input should be greater than or equal to -1"),
    (
        {"method": "byol", "simclr": {"temperature": 0}},
        "simclr.temperature: Input should be greater than 0",
    ),
    (
        {"method": "simclr", "simclr": {"temperature": -0.5}},
        "simclr.temperature: Input should be greater than 0",
    ),
    (
        {"method": "barlow_twins", "barlow_twins": {"proj_dim": 1}},
        "barlow_twins.proj_dim: Input should be greater than or equal to 2",
    ),
    (
        {"method": "vicreg", "vicreg": {"var_weight": -1}},
        "vicreg.var_weight: Input should be greater than or equal to 0",
    ),
    (
        {"method": "moco", "moco": {"temperature": 0}},
        "moco.temperature: Input should be greater than 0",
    ),
    (
        {"method": "moco", "moco": {"base_momentum": 1.5}},
        "moco.base_momentum: Input should be less than or equal to 1",
    ),
    (
        {"method": "dino", "dino": {"center_momentum": 1.0}},
        "dino.center_momentum: Input should be less than 1",
    ),
    (
        {"method": "dino", "dino": {"freeze_last_layer_epochs": -1}},
        "dino.freeze_last_layer_epochs: Input should be greater than or equal to 0",
    ),
    (
        {"method": "dino", "dino": {"teacher_tmp": 0.07}},
        "dino.teacher_tmp: unknown key; accepted keys here: out_dim",
    ),
    (
        {"method": "nnclr", "nnclr": {"temperature": 0}},
        "nnclr.temperature: Input should be greater than 0",
    ),
    (
        {"method": "nnclr", "nnclr": {"queue_length": -1}},
        "nnclr.queue_length: Input should be greater than or equal to 0",
    ),
    (
        {"method": "simsiam", "simsiam": {"proj_dim": 1}},
        "simsiam.proj_dim: Input should be greater than or equal to 2",
    ),
    (
        {"method": "simsiam", "simsiam": {"fix_pred_lr": True}},
        "simsiam.fix_pred_lr: unknown key; accepted keys here: proj_hidden",
    ),
    ({"method": "swav", "swav": {"epsilon": 0}}, "swav.epsilon: Input should be greater than 0"),
    (
        {"method": "swav", "swav": {"num_prototypes": 1}},
        "swav.num_prototypes: Input should be greater than or equal to 2",
    ),
    (
        {"method": "swav", "swav": {"prototypes": 300}},
        "swav.prototypes: unknown key; accepted keys here: proj_hidden",
    ),
    (
        {"method": "swav", "swav": {"queue_length": 100}, "data": {"batch_size": 32}},
        "swav.queue_length (100) must be a multiple of data.batch_size (32): whole global "
        "batches enter the queue; use e.g. 96",
    ),
    (
        {
            "method": "simclr",
            "data": {"shape": [3, 16, 16], "augment": {"image": {"local_crops": {"number": 2}}}},
        },
        "simclr pairs two views and takes no local crops",
    ),
    (
        {"method": "dino", "data": {"augment": {"image": {"local_crops": {"scale": [0.5, 0.1]}}}}},
        "augment.image.local_crops.scale must be [low, high] in (0, 1]",
    ),
    (
        {"method": "simclr", "data": {"augment": {"image": {"blur_kernel": 4}}}},
        "augment.image.blur_kernel must be odd (got 4); e.g. 5",
    ),
    (
        {"optimizer": {"name": "lars", "trust_coefficient": 0}},
        "optimizer.trust_coefficient: Input should be greater than 0",
    ),
    (
        {"optimizer": {"name": "lamb"}},
        "optimizer.name: Input should be 'adam', 'adamw', 'sgd' or 'lars'",
    ),
    (
        {"optimizer": {"weight_decay_end": 0.4}},
        "optimizer: weight_decay_end needs a weight decay to start from: set "
        "optimizer.weight_decay > 0",
    ),
    (
        {"optimizer": {"weight_decay": 0.04, "weight_decay_end": -0.4}},
        "optimizer.weight_decay_end: Input should be greater than or equal to 0",
    ),
    (
        {"method": "dino", "dino": {"batch_norm": "sometimes"}},
        "dino.batch_norm: Input should be a valid boolean",
    ),
    (
        {"model": {"sync_batchnorm": "maybe"}},
        "model.sync_batchnorm: Input should be a valid boolean",
    ),
    (
        {"model": {"sync_bn": True}},
        "model.sync_bn: unknown key; accepted keys here: sync_batchnorm",
    ),
    (
        {"method": "byol", "byol": {"base_momentum": 1.5}},
        "byol.base_momentum: Input should be less than or equal to 1",
    ),
    (
        {"method": "byol", "byol": {"base_momentum": -0.1}},
        "byol.base_momentum: Input should be greater than or equal to 0",
    ),
    (
        {"method": "lfr", "lfr": {"num_projectors": 4, "num_targets": 8}},
        "lfr.num_targets (8) cannot exceed lfr.num_projectors (4)",
    ),
    (
        {"lr_scheduler": {"name": "exponential"}},
        "lr_scheduler.name: Input should be 'none', 'onecycle', 'warmup_cosine' or 'step'",
    ),
    (
        {"early_stopping": {"patience": 0}},
        "early_stopping.patience: Input should be greater than or equal to 1",
    ),
    (
        {"early_stopping": {"monitor": "linear_acc", "mode": "max"}},
        "early_stopping.monitor 'linear_acc' is not reported by this supervised run; choose "
        "one of: train_loss, val_loss, train_accuracy, val_accuracy",
    ),
    (
        {"method": "simclr", "early_stopping": {"monitor": "knn_acc", "patience": 3}},
        "'knn_acc' is measured every eval.every (0) epochs: set eval.every >= 1 and "
        "early_stopping.patience (3) to a multiple of it",
    ),
    (
        {"data": {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}},
        "data.normalize has 3 channel values, samples have 1 channels (shape [1, 16])",
    ),
    ({"data": {"normalize": {"mean": [0.5], "std": [0.0]}}}, "std > 0"),
    ({"grad_clip": -1.0}, "grad_clip: Input should be greater than 0"),
    ({"cpus_per_worker": 0}, "cpus_per_worker: Input should be greater than 0"),
    (
        {"checkpoint": {"num_to_keep": 0}},
        "checkpoint.num_to_keep: Input should be greater than or equal to 1",
    ),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"performance": {"amp": "fp8"}}, "performance.amp: Input should be 'none', 'bf16' or 'fp16'"),
    ({"performance": {"channels_last": True}}, "performance.channels_last needs image samples"),
    # audit 35.3: a run name is one folder under storage_path
    ({"name": "../escaped"}, "name: a run name may not be empty or start with '.'"),
    ({"name": "a/../../escaped"}, "name: a run name is one folder name: no '/'"),
    ({"name": "x" * 256}, "name: a run name may take at most 200 bytes"),
    # audit 35.17: values the run cannot use
    ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
    ({"seed": 2**64}, "seed: Input should be less than or equal to 4294967295"),
    ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas: each of the two betas"),
    ({"optimizer": {"betas": [-0.1, 0.9]}}, "optimizer.betas: each of the two betas"),
    (
        {"data": {"normalize": {"mean": [float("nan")], "std": [1.0]}}},
        "data.normalize needs finite mean and std",
    ),
    (
        {"data": {"augment": {"jitter": float("inf")}}},
        "data.augment.jitter: Input should be a finite",
    ),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: 'nothing written or changed'."""
    if not root.exists():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _assert_refused(args: list[str], expected: str, storage: Path) -> None:
    before = _tree(storage)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayssl: error:"), result.output
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _tree(storage) == before


@pytest.mark.parametrize("overrides, expected", BAD_VALUES)
def test_bad_config_values(write_config, tmp_path, overrides, expected):
    _assert_refused(["train", str(write_config(overrides))], expected, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.glob("escaped*"))  # nor beside storage_path


def test_bad_files(write_config, tmp_path):
    storage = tmp_path / "runs"
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("epochs: [1,\n")
    _assert_refused(["train", str(malformed)], "is not valid YAML at line 2", storage)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    _assert_refused(["train", str(listing)], "must hold a mapping of keys, got list", storage)
    _assert_refused(["train", str(tmp_path / "nope.yaml")], "does not exist", storage)

    nan = tmp_path / "nan.npz"
    x = np.random.rand(64, 1, 16)
    x[3, 0, 2] = np.nan
    np.savez(nan, x=x, y=np.zeros(64, dtype=int))
    _assert_refused(
        ["train", str(write_config({"data": {"name": "npz", "path": str(nan)}}))],
        "holds 1 NaN/Inf values",
        storage,
    )
    no_labels = tmp_path / "nolabels.npz"
    np.savez(no_labels, x=np.random.rand(64, 1, 16))
    _assert_refused(
        ["train", str(write_config({"data": {"name": "npz", "path": str(no_labels)}}))],
        "lacks array(s) y",
        storage,
    )
    images = tmp_path / "images.npz"
    np.savez(images, x=np.random.rand(64, 3, 8, 8), y=np.arange(64) % 2)  # two classes
    _assert_refused(
        ["train", str(write_config({"data": {"name": "npz", "path": str(images)}}))],
        "cannot take samples of shape (3, 8, 8)",
        storage,
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _assert_refused(
        ["train", str(write_config({"storage_path": str(blocker / "runs")}))],
        "storage_path",
        storage,
    )


def _fake_run(storage: Path, name: str, overrides: dict) -> Path:
    """A run folder as Ray Train leaves it: a registered checkpoint holding rayssl's state."""
    trainer = DummyTrainer(overrides)
    run = storage / f"{name}-20260101-000000"
    save_state(trainer.loop.state_dict(), run / "checkpoint_2026-01-01_00-00-00.000000")
    (run / "checkpoint_manager_snapshot.json").write_text(
        json.dumps(
            {
                "latest_checkpoint_result": {
                    "checkpoint_dir_name": "checkpoint_2026-01-01_00-00-00.000000"
                }
            }
        )
    )
    return run


def test_set_and_resume_errors(write_config, tmp_path):
    storage = tmp_path / "runs"
    path = write_config()
    _assert_refused(["train", str(path), "--set", "optimizer.lr"], "expected KEY=VALUE", storage)
    _assert_refused(
        ["train", str(path), "--set", "optimizer.lr=-3"],
        "optimizer.lr: Input should be greater than 0",
        storage,
    )
    _assert_refused(
        ["train", str(path), "--resume"], "--resume: no run named 'tiny' with a checkpoint", storage
    )

    data = {"name": "synthetic", "shape": [1, 16], "num_samples": 256, "batch_size": 32}
    _fake_run(storage, "tiny", {"method": "byol", "data": data})
    _assert_refused(["train", str(path), "--resume"], "was trained with method 'byol'", storage)

    _fake_run(storage, "narrow", {"data": data, "backbone": {"name": "cnn1d", "width": 4}})
    narrow = write_config({"name": "narrow"}, name="narrow")
    _assert_refused(
        ["train", str(narrow), "--resume"], "does not fit this config's network", storage
    )

    # A checkpoint folder Ray never registered (an upload cut short) is not resumed from.
    half = storage / "half-20260101-000000" / "checkpoint_2026-01-01_00-00-00.000000"
    half.mkdir(parents=True)
    (half / "state.pt").write_bytes(b"\x80\x02truncated")
    half_cfg = write_config({"name": "half"}, name="half")
    _assert_refused(
        ["train", str(half_cfg), "--resume"], "no run named 'half' with a checkpoint", storage
    )


def test_real_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not valid YAML at line" in proc.stderr


def test_more_workers_than_cpus(tmp_path):
    """Refused before a local Ray starts: 64 workers cannot fit this machine."""
    cfg = tmp_path / "wide.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "num_workers": 64,
                "storage_path": str(tmp_path / "runs"),
                "data": {
                    "name": "synthetic",
                    "shape": [1, 16],
                    "num_samples": 256,
                    "batch_size": 64,
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rayssl: error: num_workers x cpus_per_worker = 64 CPUs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").glob("*-*"))


def test_a_finished_run_shows_its_probe_accuracies(write_config, tmp_path):
    """A self-supervised run is judged by its probes: each epoch's line shows the online
    probe's accuracy, and the last line every probe's, beside the val/test metrics (before,
    the last line held only val_loss: the numbers the run is for were in summary.json)."""
    config = write_config(
        {
            "method": "simclr",
            "num_workers": 0,
            "epochs": 2,
            "eval": {"every": 1, "online_linear": True},
        }
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    epoch_lines = [line for line in lines if line.startswith("[rayssl] epoch")]
    assert len(epoch_lines) == 2 and all("online_linear_acc 0." in e for e in epoch_lines)
    final = next(line for line in lines if "finished after 2 epochs" in line)
    summary = json.loads(Path(lines[-1].split("summary: ")[1]).read_text())["final_metrics"]
    for key in ("val_loss", "knn_acc", "linear_acc", "online_linear_acc"):
        assert f"{key} {summary[key]:.4f}" in final, (key, final)


def test_methods_lists_every_builtin_with_its_class():
    """`rayssl methods` prints each built-in method (the config's `method:` values) once,
    with the class a config of that name builds."""
    from rayssl.config import validate_train_config
    from rayssl.methods.registry import BUILTINS, build_method

    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines() if "[rayssl." in line]
    names = [line[0] for line in lines]
    assert sorted(names) == sorted(
        [
            "supervised",
            "byol",
            "simclr",
            "lfr",
            "barlow_twins",
            "vicreg",
            "moco",
            "dino",
            "swav",
            "simsiam",
            "nnclr",
            "mae",
            "ibot",
        ]
    )
    for name, line in zip(names, lines, strict=True):
        if name in ("mae", "ibot"):  # they need a ViT (timm): tests/test_vit.py builds them
            cls = BUILTINS[name].cls
        else:
            cfg = validate_train_config({"method": name, "backbone": {"name": "cnn1d", "width": 4}})
            cls = type(build_method(cfg, (1, 16), 3))
        assert line[-1] == f"[{cls.__module__}.{cls.__name__}]"


def _on_a_terminal(command: list[str]) -> tuple[int, bytes]:
    """Run `command` with stdout and stderr on a pseudo-terminal; its exit code and all it
    wrote there."""
    import os
    import subprocess
    import threading

    main_fd, terminal = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read while it runs: a full terminal buffer would block it
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the other end closed: all was read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    done = subprocess.run(command, stderr=terminal, stdout=terminal)
    os.close(terminal)
    reader.join(timeout=30)
    os.close(main_fd)
    return done.returncode, b"".join(chunks)


def test_demo_images_shows_a_progress_bar_on_a_terminal_and_none_in_a_log(tmp_path):
    """Rendering the demo set shows a bar when stderr is a terminal (a pseudo-terminal
    here) and writes only its final line when the output goes to a log (CI, a job)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "rayssl.cli", "demo-images"]
    args = ["--train", "40", "--test", "10"]
    logged = subprocess.run(
        [*command, str(tmp_path / "log"), *args], capture_output=True, text=True
    )
    assert logged.returncode == 0, logged.stderr
    assert "rendering" not in logged.stdout + logged.stderr
    assert logged.stdout.startswith("rayssl: wrote 40 training images")
    code, seen = _on_a_terminal([*command, str(tmp_path / "tty"), *args])
    assert code == 0
    assert b"rendering" in seen and b"100%" in seen, seen[-300:]


def test_eval_shows_its_embedding_progress_on_a_terminal_and_none_in_a_log(write_config):
    """`rayssl eval` embeds the fit and scored splits with a bar each on a terminal, and
    prints only its result line into a log."""
    import subprocess
    import sys

    config = write_config({"num_workers": 0, "epochs": 1, "method": "simclr"})
    assert CliRunner().invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (config.parent / "runs").iterdir()
    command = [sys.executable, "-m", "rayssl.cli", "eval", str(run)]
    logged = subprocess.run(command, capture_output=True, text=True)
    assert logged.returncode == 0, logged.stderr
    assert "embedding" not in logged.stdout + logged.stderr
    code, seen = _on_a_terminal(command)
    assert code == 0
    assert b"embedding the fit split" in seen and b"embedding the scored split" in seen
    assert b"knn_acc" in seen


@pytest.mark.slow  # the bar itself: test_eval_shows_its_embedding_progress_... (default)
def test_eval_on_workers_draws_rank_0s_embedding_progress_on_the_drivers_terminal(
    write_config,
):
    """`rayssl eval --workers 2`: the embedding happens in Ray Train workers; rank 0's share
    comes back through a Ray queue and the driver draws it as its bar, to 100 %."""
    import sys

    config = write_config({"num_workers": 0, "epochs": 1, "method": "simclr"})
    assert CliRunner().invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (config.parent / "runs").iterdir()
    code, seen = _on_a_terminal(
        [sys.executable, "-m", "rayssl.cli", "eval", str(run), "--workers", "2"]
    )
    assert code == 0, seen[-500:]
    for split in (b"embedding the fit split", b"embedding the scored split"):
        assert split in seen, seen[-500:]
    assert b"100%" in seen and b"knn_acc" in seen


def test_export_shows_its_stages_on_a_terminal_and_none_in_a_log(write_config, tmp_path):
    """`rayssl export` is three long calls (read, convert, write): a bar of them on a
    terminal, only the result line in a log."""
    import subprocess
    import sys

    config = write_config({"num_workers": 0, "epochs": 1, "method": "simclr"})
    assert CliRunner().invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (config.parent / "runs").iterdir()
    command = [sys.executable, "-m", "rayssl.cli", "export", str(run), "--format", "torchscript"]
    logged = subprocess.run([*command, "--out", str(tmp_path / "a.ts")], capture_output=True)
    assert logged.returncode == 0, logged.stderr
    assert logged.stdout.decode().startswith("rayssl: wrote")
    assert b"exporting" not in logged.stdout + logged.stderr  # (torch's own warnings may be)
    code, seen = _on_a_terminal([*command, "--out", str(tmp_path / "b.ts")])
    assert code == 0 and (tmp_path / "b.ts").is_file()
    assert b"exporting" in seen and b"100%" in seen and b"writing" in seen, seen[-300:]
