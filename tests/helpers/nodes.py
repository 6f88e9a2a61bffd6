"""A Ray cluster of several nodes on this machine, for the multi-node helpers."""

import ray
from ray.cluster_utils import Cluster


def start_cluster(nodes: int):
    """A head without CPUs (it holds Ray's own actors) and `nodes` 1-CPU nodes, so each
    training worker lands on a node of its own; this process is connected to it."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    added = [cluster.add_node(num_cpus=1) for _ in range(nodes)]
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == nodes + 1
    return cluster, added


def worker_nodes() -> list[str]:
    """Node ids of the alive Ray Train workers (the GCS actor table; no dashboard needed)."""
    return [
        a["Address"]["NodeID"]
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"
    ]
