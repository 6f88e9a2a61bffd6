"""Multi-node simulation: two Ray nodes on this machine, one training worker on each; a node
is removed mid-run and the run finishes from its last checkpoint (FailureConfig)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).parent / "helpers" / "two_nodes.py"


@pytest.mark.slow
def test_run_survives_losing_a_node(write_config, tmp_path):
    config = write_config(
        {
            "epochs": 12,
            "num_workers": 2,
            "max_failures": 2,
            "data": {"num_samples": 512},
            "checkpoint": {"num_to_keep": 2},
        }
    )
    # Its own process: the cluster must not meet the Ray this test session already runs.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(HELPER), str(config)],
        capture_output=True,
        text=True,
        timeout=420,
        env={**env, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["node"] and result["workers_on_distinct_nodes"], result
    assert result["epochs_run"] == 12
    epochs = [int(h["epoch"]) for h in result["history"]]
    assert epochs == list(range(1, 13))  # every epoch once: nothing lost, nothing repeated
    # Each attempt reports its start-up once, on its first epoch: the second attempt began
    # after a checkpointed epoch, not from scratch.
    starts = [int(h["epoch"]) for h in result["history"] if "start_to_first_step_s" in h]
    assert len(starts) == 2 and starts[0] == 1 and starts[1] > 1, starts


ELASTIC_HELPER = Path(__file__).parent / "helpers" / "elastic_nodes.py"


@pytest.mark.slow
def test_elastic_run_shrinks_on_a_preempted_node_and_grows_back(write_config):
    """num_workers [1, 2] on two 1-CPU nodes. A preemption notice on one node → a checkpoint
    mid-epoch; the node goes → the run continues on 1 worker from that checkpoint; a node
    comes back → it grows to 2. Every epoch once, the global step count unchanged."""
    epochs = 30
    config = write_config(
        {
            "epochs": epochs,
            "num_workers": [1, 2],
            "max_failures": 8,
            "elastic_check_s": 2,
            "data": {"num_samples": 512},
            # 0.2 s a step (14 a epoch): the test acts between steps, not between epochs
            "backbone": {"name": "recording:slow_cnn", "delay_s": 0.2},
            "checkpoint": {"num_to_keep": 2, "preemption_check_steps": 1},
        }
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(ELASTIC_HELPER), str(config)],
        capture_output=True,
        text=True,
        timeout=540,
        env={**env, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["returncode"] == 0, result["output_tail"]
    assert result["workers_on_distinct_nodes"], result
    assert len(result["notice_lines"]) == 1, result["output_tail"]
    assert result["epochs_run"] == epochs
    history = result["history"]
    assert [int(h["epoch"]) for h in history] == list(range(1, epochs + 1))  # each once
    # the global step advances by the same count every epoch, whatever the worker count
    steps = [int(h["step"]) for h in history]
    per_epoch = steps[0]
    assert steps == [per_epoch * e for e in range(1, epochs + 1)]
    assert result["global_steps"] == per_epoch * epochs
    # shrank from the checkpoint taken on the notice (mid-epoch), then grew back
    shrink, grow = result["resizes"]
    notice = result["notice_checkpoint"]
    assert (shrink["from"], shrink["to"]) == (2, 1) and (grow["from"], grow["to"]) == (1, 2)
    assert shrink["step"] == notice["step"] and shrink["step"] % per_epoch != 0
    assert shrink["epoch"] == notice["epoch"] < grow["epoch"] <= epochs
    workers = [int(h["workers"]) for h in history]
    assert workers[0] == 2 and 1 in workers and workers[-1] == 2
