"""Where `rayssl embed` writes: `--out` filled part by part, so that a restart resumes
after the last whole part and no row is ever written twice.

The input's items (files, shard samples, Parquet row groups) are listed in a fixed order
and cut into parts of about `--part-rows` rows. One Ray Data pipeline embeds every part not
yet whole, in order (`preserve_order`), and this process writes each part's rows to one
Parquet file as they come, a batch at a time. Layout of `--out`:

    _rayssl-embed-job.json     what is embedded (source, data, item and part counts): first
    part-00000.parquet         part 0's rows, moved into place once every one is written
    _rayssl-part-00000.json    part 0 is whole (its rows): after its file
    .rayssl-embed-partial/     the part being written now
    _rayssl-embeddings.json    every part is whole (the manifest): last

Parquet readers pass over names starting with "_" or ".", so `--out` reads as one table of
the parts done. A restart keeps every part with its marker, discards the rest (a part's
file moved without its marker is written again), and embeds only what is left.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rayssl.config import ConfigError

JOB = "_rayssl-embed-job.json"
MANIFEST = "_rayssl-embeddings.json"  # "_": Parquet readers pass over it
PARTIAL = ".rayssl-embed-partial"


def part_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def part_marker(index: int) -> str:
    return f"_rayssl-part-{index:05d}.json"


def plan_parts(item_rows: list[int], part_rows: int) -> list[range]:
    """Consecutive item ranges of at least `part_rows` rows each (the last may hold fewer);
    an item (a Parquet row group) is never split."""
    parts, start, rows = [], 0, 0
    for i, n in enumerate(item_rows):
        rows += n
        if rows >= part_rows:
            parts.append(range(start, i + 1))
            start, rows = i + 1, 0
    if start < len(item_rows):
        parts.append(range(start, len(item_rows)))
    return parts


@dataclass
class Output:
    """`--out` on its filesystem (pyarrow), for one job (`identity`: source, data, items,
    part_rows)."""

    out: str
    fs: Any
    root: str
    identity: dict

    @classmethod
    def open(cls, out: str, fs, root: str, identity: dict) -> Output | None:
        """The output folder, checked: new or empty (the job recorded), this job's own
        (resumed), or these very embeddings done (None). Another job's files, or files of
        anything else, are refused in one line."""
        import pyarrow.fs as pafs

        try:
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                fs.create_dir(root)
                names: set[str] = set()
            elif info.type != pafs.FileType.Directory:
                raise ConfigError(f"--out '{out}' is a file; give a folder")
            else:
                entries = fs.get_file_info(pafs.FileSelector(root))
                names = {e.path.rsplit("/", 1)[-1] for e in entries}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--out '{out}' cannot be used ({exc})") from None
        output = cls(out, fs, root, identity)
        key = {k: identity[k] for k in ("source", "data")}
        for held_in in (MANIFEST, JOB):
            if held_in in names:
                held = json.loads(output.read(held_in))
                output.check_same(held, key, done=held_in == MANIFEST)
                return None if held_in == MANIFEST else output
        if names - {PARTIAL}:
            raise ConfigError(
                f"--out '{out}' holds other files ({', '.join(sorted(names)[:3])}); give a new "
                "or empty folder"
            )
        output.write(JOB, identity)
        return output

    def check_same(self, held: dict, key: dict, done: bool) -> None:
        """Refuse `--out` holding another backbone's or input's embeddings, or this input's
        cut into other parts or changed since (its item count)."""
        if {k: held.get(k) for k in key} != key:
            what = "embeddings" if done else "partial embeddings"
            raise ConfigError(
                f"--out '{self.out}' holds the {what} of another backbone or input (of "
                f"'{held.get('data')}' by {describe(held.get('source') or {})}); give "
                "another --out"
            )
        if done:
            return
        if held.get("items") != self.identity["items"]:
            raise ConfigError(
                f"--out '{self.out}' holds part of an embedding of '{key['data']}' when it "
                f"had {held.get('items')} items; it has {self.identity['items']} now: give "
                "another --out"
            )
        if held.get("part_rows") != self.identity["part_rows"]:
            raise ConfigError(
                f"--out '{self.out}' holds part of this embedding cut into parts of "
                f"{held.get('part_rows')} rows; rerun with --part-rows {held.get('part_rows')}"
            )

    def parts_done(self) -> dict[int, int]:
        """{part: rows} of every whole part; a part file without its marker (a crash after
        the move), and the partial folder, are removed."""
        import pyarrow.fs as pafs

        entries = self.fs.get_file_info(pafs.FileSelector(self.root))
        names = {e.path.rsplit("/", 1)[-1] for e in entries}
        done = {}
        for name in sorted(names):
            if name.startswith("part-") and name.endswith(".parquet"):
                index = int(name[len("part-") : -len(".parquet")])
                if part_marker(index) in names:
                    done[index] = json.loads(self.read(part_marker(index)))["rows"]
                else:
                    self.fs.delete_file(f"{self.root}/{name}")
        if PARTIAL in names:
            self.fs.delete_dir(f"{self.root}/{PARTIAL}")
        return done

    def write_parts(
        self, parts: list[tuple[int, int]], tables: Iterable, after_part: Callable[[int], None]
    ) -> dict[int, int]:
        """Write `tables` (pyarrow, rows in item order) as the `parts` ((index, rows) in
        order): each part's file is whole before it moves into place, then its marker, then
        `after_part(parts written so far)`. Returns {part: rows} written."""
        import pyarrow.parquet as pq

        partial = f"{self.root}/{PARTIAL}"
        self.fs.create_dir(partial)
        written: dict[int, int] = {}
        queue, writer, left, stream = list(parts), None, 0, None
        for table in tables:
            while table.num_rows:
                if writer is None:
                    index, left = queue[0]
                    stream = self.fs.open_output_stream(f"{partial}/{part_file(index)}")
                    writer = pq.ParquetWriter(stream, table.schema)
                take = min(left, table.num_rows)
                writer.write_table(table.slice(0, take))
                table, left = table.slice(take), left - take
                if left == 0:
                    writer.close()
                    stream.close()
                    index, rows = queue.pop(0)
                    self.fs.move(f"{partial}/{part_file(index)}", f"{self.root}/{part_file(index)}")
                    self.write(part_marker(index), {"rows": rows})
                    written[index], writer = rows, None
                    after_part(len(written))
        if writer is not None or queue:
            raise RuntimeError(f"the embedding pipeline ended before part {queue[0][0]} was whole")
        self.fs.delete_dir(partial)
        return written

    def finish(self, manifest: dict) -> None:
        """The manifest, last: its presence says the set is whole."""
        self.write(MANIFEST, manifest)

    def dim(self) -> int:
        import pyarrow as pa
        import pyarrow.dataset as ds

        schema = ds.dataset(self.root, format="parquet", filesystem=self.fs).schema
        kind = schema.field("embedding").type
        return kind.list_size if isinstance(kind, pa.FixedSizeListType) else -1

    def read(self, name: str) -> str:
        with self.fs.open_input_stream(f"{self.root}/{name}") as handle:
            return handle.read().decode()

    def write(self, name: str, record: dict) -> None:
        with self.fs.open_output_stream(f"{self.root}/{name}") as handle:
            handle.write(json.dumps(record, indent=2).encode())


def describe(source: dict) -> str:
    where = source.get("run") or source.get("path") or "?"
    return f"'{where}'" + (f" epoch {source['epoch']}" if "epoch" in source else "")
