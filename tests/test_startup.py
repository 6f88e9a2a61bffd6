"""Start-up: what each kind of process imports, and the timeline a run reports.

Speed itself is measured by benchmarks/startup.py; these tests hold the cuts in place: a
process that does not need torch, the methods or torchmetrics does not import them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.engine.metrics import STARTUP_MARKS


def _imports_in_a_fresh_process(code: str, names: list[str]) -> dict[str, bool]:
    probe = f"{code}; import sys; print([n in sys.modules for n in {names!r}])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return dict(zip(names, eval(out.stdout.strip().splitlines()[-1]), strict=True))


@pytest.mark.parametrize(
    "code, absent",
    [
        # the CLI's help and its light commands
        ("import rayssl.cli", ["torch", "ray", "rayssl.config.train"]),
        # every Ray worker process runs the setup hook; Train's controller unpickles entry.py
        (
            "import rayssl.cluster.quiet, rayssl.cluster.entry",
            ["torch", "rayssl.cluster.driver", "rayssl.methods"],
        ),
        # a self-supervised run's schema, checks and loop: no torchmetrics
        (
            "from rayssl.config import load_train_config; "
            "from rayssl.cluster.checks import preflight; "
            "from rayssl.engine import build_loop; "
            "cfg, splits, _ = preflight(load_train_config('configs/simclr_mnist1d.yaml', "
            "['num_workers=1'])); build_loop(cfg, splits)",
            ["torchmetrics"],
        ),
        # a supervised run's checks and loop, its class scores counted (torchmetrics' import,
        # about 1.7 s, was most of what its workers spent above a self-supervised run's)
        (
            "from rayssl.config import load_train_config; "
            "from rayssl.cluster.checks import preflight; "
            "from rayssl.engine import build_loop; "
            "cfg, splits, _ = preflight(load_train_config('configs/supervised_mnist1d.yaml', "
            "['num_workers=1', 'supervised.metrics=[accuracy,f1]'])); "
            "loop = build_loop(cfg, splits); x, y = splits.train; "
            "loop.method.validation_step((x[:8], y[:8])); loop.method.epoch_metrics('val')",
            ["torchmetrics"],
        ),
    ],
)
def test_a_process_imports_only_what_it_needs(code, absent):
    imported = _imports_in_a_fresh_process(code, absent)
    assert not any(imported.values()), imported


def test_a_run_reports_its_start_up_timeline(write_config):
    """The first epoch carries start_to_first_step_s and one startup_<mark>_s per phase
    recorded, in order; together they are the time from the command to the first step."""
    import time

    launched = time.time()
    summary = fit(
        load_train_config(write_config({"num_workers": 0, "epochs": 2})), launched_at=launched
    )
    first, second = summary["history"]
    phases = [k for k in first if k.startswith("startup_")]
    expected = [f"startup_{m}_s" for m in STARTUP_MARKS[1:]]
    assert phases == [p for p in expected if p in phases]  # in order
    for needed in ("imported", "checked", "ray_started", "fit_called", "built", "first_step"):
        assert f"startup_{needed}_s" in phases, phases
    assert all(first[p] >= 0 for p in phases)
    assert sum(first[p] for p in phases) == pytest.approx(first["start_to_first_step_s"])
    assert not any(k.startswith("startup_") for k in second)  # once per attempt
