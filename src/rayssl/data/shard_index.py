"""Each WebDataset shard's index (its samples' keys, byte ranges and labels), kept on this
machine after the first time the shard is indexed, so that a run, a resumed run, a trial,
`rayssl eval` and `rayssl embed` over the same shards read no tar again on the driver
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
import tempfile
from pathlib import Path

FORMAT = 1


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
