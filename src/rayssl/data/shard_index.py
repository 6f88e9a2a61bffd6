"""Each WebDataset shard's index (its samples' keys, byte ranges and labels): built in Ray
tasks where a cluster is there to use (`index_in_ray_tasks`), else in the driver's threads,
and kept on this machine after the first time the shard is indexed, so that a run, a resumed
run, a trial, `rayssl eval` and `rayssl embed` over the same shards read no tar again
(indexing costs about 250 us a sample here, a remote shard a whole sequential read: a
1.28-million-sample set takes minutes on every command without it).

An entry is named by the shard's path, its filesystem's kind and what storage says of the
shard (size, modification time): a shard rewritten in place is indexed afresh, and a shard
whose storage reports no modification time is never cached. Entries are JSON (nothing in one
runs), written whole through a rename, under `<RAYSSL_CACHE or ~/.cache/rayssl>/shard-index/`;
an entry that cannot be read is indexed again, and a cache folder that cannot be written
leaves indexing as it was. Hand-written: webdataset's own index (wids' JSON) records sample
counts, not the byte ranges rayssl reads evaluation samples by.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from rayssl.config import ConfigError

FORMAT = 1
# a first listing of this many shards or more says so: it may take minutes
NOTE_FROM = 8


def cache_root() -> Path:
    """rayssl's cache folder: `RAYSSL_CACHE`, else `~/.cache/rayssl` (MNIST-1D's too)."""
    return Path(os.environ.get("RAYSSL_CACHE") or Path.home() / ".cache" / "rayssl").expanduser()


class ShardIndexCache:
    """The cached indexes of the shards `infos` describe (pyarrow `FileInfo`s on
    `filesystem`, as the listing found them: no request of its own), as `shards._index`
    returns them: `[((shard, offset, size), name, key, label), ...]`."""

    def __init__(self, filesystem, infos: list):
        self.folder = cache_root() / "shard-index"
        kind = type(filesystem).__name__
        self.names: dict[str, str] = {}
        for info in infos:
            if info.mtime_ns is not None and info.size is not None:
                identity = f"{FORMAT}|{kind}|{info.path}|{info.size}|{info.mtime_ns}"
                self.names[info.path] = hashlib.sha256(identity.encode()).hexdigest()

    def load(self, shard: str) -> list | None:
        """The shard's index if an entry of this very shard is here, else None."""
        name = self.names.get(shard)
        if name is None:
            return None
        try:
            entry = json.loads((self.folder / f"{name}.json").read_text())
            if entry["format"] != FORMAT or entry["shard"] != shard:
                return None
            return [
                ((shard, offset, size), f"{shard}:{key}.{suffix}", key, label)
                for key, suffix, offset, size, label in entry["samples"]
            ]
        except (OSError, ValueError, KeyError, TypeError):  # absent, or not an entry
            return None

    def store(self, shard: str, samples: list) -> None:
        """Keep `samples` (the shard's index) for the next command; quietly not where the
        cache folder cannot be written."""
        name = self.names.get(shard)
        if name is None:
            return
        rows = [
            [key, full[len(shard) + len(key) + 2 :], offset, size, label]
            for (_, offset, size), full, key, label in samples
        ]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.folder, suffix=".tmp", delete=False
            ) as handle:
                json.dump({"format": FORMAT, "shard": shard, "samples": rows}, handle)
            os.replace(handle.name, self.folder / f"{name}.json")
        except OSError:
            return


# ============================================================================ where to index


def ray_tasks_can_index(local: bool) -> bool:
    """Whether Ray tasks can index the shards: a Ray cluster is there to use (this process is
    connected to one, or RAY_ADDRESS names one, as for `ray job submit`'s drivers: joined
    now, as the command would join it next; `init_ray` then finds it joined), and for local
    paths this node has a CPU for them (a cluster's head often has none: tasks pinned there
    would wait forever)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return False
        from rayssl.cluster.start import init_ray

        init_ray(None)
        import ray
    if not local:
        return True
    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == here), {})
    return node.get("Resources", {}).get("CPU", 0) >= 1


def index_in_ray_tasks(index_task, filesystem, shards: list[str], local: bool, field: str):
    """(shard, its index) for each of `shards`, as each task ends: one Ray task a shard,
    spread over the cluster's nodes for shards in storage (each node reads its own, so a
    first command over many remote shards is not bound by one machine's network), on this
    node's cores for local paths (another node may not have them). Parsing tar headers is
    Python bytecode under the GIL: the driver's threads use one core, tasks every core.
    `index_task` returns (index, None) or (None, a bad shard's one line)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if local:
        node = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    else:
        strategy = "SPREAD"
    task = ray.remote(index_task).options(num_cpus=1, scheduling_strategy=strategy)
    pending = {task.remote(filesystem, shard, local, field): shard for shard in shards}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in done:
                samples, error = ray.get(ref)
                if error is not None:
                    raise ConfigError(error)
                yield pending.pop(ref), samples
    finally:
        for ref in pending:  # a bad shard, or the command stopped: the rest is not needed
            ray.cancel(ref)
