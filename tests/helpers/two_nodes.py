"""Run by tests/test_multinode.py in its own process: a Ray cluster of several nodes on this
machine (`ray.cluster_utils.Cluster`): a head without CPUs and three 1-CPU nodes, so the 2
training workers land on two different nodes and one node is spare (what an autoscaler would
add). Once the first checkpoint is registered, a node that hosts a training worker is removed;
FailureConfig restarts the run from its checkpoint on the nodes left. Prints the node that was
removed and the run's summary as JSON on the last line.

    python two_nodes.py CONFIG.yaml
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from nodes import start_cluster, worker_nodes

from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.runs.storage import SNAPSHOT_FILE


def main(config_path: str) -> None:
    cfg = load_train_config(config_path)
    cluster, nodes = start_cluster(3)
    removed = {}

    def remove_after_first_checkpoint() -> None:
        storage = Path(cfg.storage_path)
        deadline = time.time() + 240
        while time.time() < deadline:
            if list(storage.glob(f"*/{SNAPSHOT_FILE}")):
                hosts = worker_nodes()
                removed["workers_on_distinct_nodes"] = len(hosts) == 2 == len(set(hosts))
                victim = next(n for n in nodes if n.node_id in hosts)
                cluster.remove_node(victim)
                removed["node"] = victim.node_id
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        summary = fit(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({**removed, **{k: summary[k] for k in ("epochs_run", "history")}}))


if __name__ == "__main__":
    main(sys.argv[1])
