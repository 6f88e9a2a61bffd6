"""Run by tests/test_webdataset.py in its own process, with RAY_ADDRESS naming a running Ray:
lists the shards at ARGV[1] with the driver's own indexing made to fail, so the index can only
have been built in Ray tasks of the cluster RAY_ADDRESS names, which the listing joined
itself. Prints the samples found, whether this process is connected to Ray and the address
it joined, as JSON on the last line.

    RAY_ADDRESS=host:port python index_probe.py SHARDS
"""

import json
import sys

import rayssl.data.shards as shards


def indexed_on_the_driver(*args):
    raise AssertionError("indexed on the driver, not in a Ray task")


def main(uri: str) -> None:
    shards._index = indexed_on_the_driver
    listed = shards.list_shards(uri, "path")
    import ray

    joined = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    print(json.dumps({"samples": len(listed.refs), "labels": listed.labels, "joined": joined}))


if __name__ == "__main__":
    main(sys.argv[1])
