"""Run by tests/test_multinode.py in its own process: a 2-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`, 1 CPU per node, so the 2 training workers land one per node);
once the first checkpoint is registered the worker node is removed, a replacement node joins
(what the autoscaler does on a real cluster), and FailureConfig restarts the run from its
checkpoint. Prints the run's summary as JSON on the last line.

    python two_nodes.py CONFIG.yaml
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rayssl.config import load_train_config
from rayssl.train import SNAPSHOT_FILE, fit


def main(config_path: str) -> None:
    cfg = load_train_config(config_path)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    worker_node = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    removed = {}

    def remove_after_first_checkpoint() -> None:
        storage = Path(cfg.storage_path)
        deadline = time.time() + 240
        while time.time() < deadline:
            if list(storage.glob(f"*/{SNAPSHOT_FILE}")):
                cluster.remove_node(worker_node)
                removed["at"] = time.time()
                cluster.add_node(num_cpus=1)  # the replacement node
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        summary = fit(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary["node_removed"] = "at" in removed
    print(json.dumps({k: summary[k] for k in ("node_removed", "epochs_run", "history")}))


if __name__ == "__main__":
    main(sys.argv[1])
