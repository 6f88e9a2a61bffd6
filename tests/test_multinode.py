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
