"""Run by tests/test_webdataset.py in its own process: a Ray cluster of several nodes on this
machine whose head (where this driver runs, as `ray job submit`'s drivers do) has no CPUs.
Lists local shards at ARGV[1] with Ray tasks made to fail: tasks pinned to a head without
CPUs would never start, so the index must be built in the driver's threads. Prints the
samples found as JSON on the last line.

    python index_on_cpuless_head.py SHARDS
"""

import json
import sys

from nodes import start_cluster

import rayssl.data.shard_index as shard_index
from rayssl.data.shards import list_shards


def never(*args, **kwargs):
    raise AssertionError("Ray tasks pinned to a head without CPUs")


def main(uri: str) -> None:
    cluster, _ = start_cluster(1)
    try:
        shard_index.index_in_ray_tasks = never
        listed = list_shards(uri, "path")
        print(json.dumps({"samples": len(listed.refs)}))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
