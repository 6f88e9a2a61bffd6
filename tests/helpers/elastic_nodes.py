"""Run by tests/test_multinode.py in its own process: an elastic run (`num_workers: [1, 2]`)
on a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`): a head
without CPUs and two 1-CPU nodes, one training worker on each.

1. After the first registered checkpoint, the node of rank 1 gets a preemption notice: a
   drain with reason PREEMPTION and a deadline, through `ray drain-node`, the call Ray's
   autoscaler makes when a cloud announces a spot reclaim.
2. Once a checkpoint taken mid-epoch on that notice is registered, the node is removed
   (the cloud takes it). The run must continue on 1 worker from that checkpoint.
3. Once an epoch has finished on 1 worker, a node is added back: the run must grow to 2.

The run is a real `rayssl train` process joining the cluster (RAY_ADDRESS), as a job's
driver would; this process only drives the cluster (Cluster.add_node must run in the main
thread). Prints a JSON line with what it saw and the run's summary.

    python elastic_nodes.py CONFIG.yaml
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ray
from nodes import start_cluster, worker_nodes

from rayssl.config import load_train_config
from rayssl.runs.storage import Storage


def main(config_path: str) -> None:
    cfg = load_train_config(config_path)
    cluster, nodes = start_cluster(2)
    seen: dict = {}
    storage = Storage.resolve(cfg.storage_path)
    name = cfg.name or Path(config_path).stem

    def latest_loop_state() -> dict | None:
        try:
            run = storage.newest_run(name)  # the name gets a timestamp suffix
            checkpoint = storage.latest_checkpoint(run) if run else None
            return storage.read_state(run, checkpoint)["loop"] if checkpoint else None
        except Exception:  # the snapshot file is being rewritten; ask again
            return None

    def wait_for(what: str, test, timeout: float = 240) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before {what}: {proc.returncode}")
            state = latest_loop_state()
            if state is not None and test(state):
                return state
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}")

    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        # Ray's defaults are tuned for real clusters: poll drains every 0.5 s (not 5) and
        # give up on placing a worker group after 15 s (not 60), so the run re-decides its
        # size from the nodes that are really there sooner.
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
    }
    log = open(Path(config_path).with_suffix(".log"), "w+")  # a pipe could fill and block
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "train", config_path],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # just after an epoch's checkpoint: the notice lands early in the next epoch
        wait_for("two epochs", lambda s: s["epoch"] >= 2)
        hosts = worker_nodes()
        seen["workers_on_distinct_nodes"] = len(hosts) == 2 == len(set(hosts))
        victim = next(n for n in nodes if n.node_id in hosts)
        seen["drained"] = victim.node_id
        subprocess.run(
            [
                "ray",
                "drain-node",
                "--address",
                cluster.address,
                "--node-id",
                victim.node_id,
                "--reason",
                "DRAIN_NODE_REASON_PREEMPTION",
                "--reason-message",
                "spot instance reclaim (simulated by the test)",
                "--deadline-remaining-seconds",
                "10",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        state = wait_for("a checkpoint on the notice", lambda s: s["step_in_epoch"] > 0)
        seen["notice_checkpoint"] = {"epoch": state["epoch"], "step": state["global_step"]}
        cluster.remove_node(victim)
        wait_for("an epoch on 1 worker", lambda s: s["history"][-1].get("workers") == 1)
        nodes.append(cluster.add_node(num_cpus=1))
        seen["added_at_epoch"] = latest_loop_state()["epoch"]
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        ray.shutdown()
        cluster.shutdown()
    seen["returncode"] = proc.returncode
    log.seek(0)
    output = log.read()
    seen["output_tail"] = output[-4000:]
    seen["notice_lines"] = [line for line in output.splitlines() if "preemption notice" in line]
    summary = json.loads(Path(storage.path(storage.newest_run(name), "summary.json")).read_text())
    keys = ("epochs_run", "history", "resizes", "resumed_at", "global_steps")
    print(json.dumps({**seen, **{k: summary[k] for k in keys}}))


if __name__ == "__main__":
    main(sys.argv[1])
