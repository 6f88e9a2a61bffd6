"""What a path a user gives names: the one resolver behind `backbone.init_from`, `rayssl
eval`, `rayssl export` and `rayssl plot`, so each takes the same paths.

A path (local, `file://`, `s3://`, `gs://`) is one of: a checkpoint folder (it holds
`state.pt`); a run folder (its newest registered checkpoint); or a run's name without its
timestamp under its storage_path (`runs/simclr` for `runs/simclr-20261206-071500`: the
newest run of that name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayssl.errors import ConfigError
from rayssl.runs.storage import Storage, split_run_path


@dataclass(frozen=True)
class Found:
    """Where a path led: the folder (a URI or an absolute local path), and for a run its
    storage and name, and the checkpoint chosen in it."""

    where: str
    storage: Storage | None = None
    run: str | None = None
    checkpoint: str | None = None

    @property
    def shown(self) -> str:
        """How to name what was found in a message or a record."""
        return f"{self.where}/{self.checkpoint}" if self.checkpoint else self.where


def absolute(path: str) -> str:
    """`path` as a URI or an absolute local path."""
    return path.rstrip("/") if "://" in path else str(Path(path).expanduser().resolve())


def run_folder(path: str, field_name: str, export_too: bool = False) -> Found:
    """The run folder `path` names: the folder itself, or the newest run of that name
    (`export_too`: the field also takes an export file, said in the error)."""
    import pyarrow.fs as pafs

    where = absolute(path)
    try:
        fs, base = pafs.FileSystem.from_uri(where)
        is_dir = fs.get_file_info(base).type == pafs.FileType.Directory
    except OSError as exc:
        raise ConfigError(f"{field_name} '{path}' cannot be read ({exc})") from None
    parent, name = split_run_path(where)
    storage = Storage(parent)
    if not is_dir:  # a run's name without its timestamp: the newest run of that name
        newest = storage.newest_run(name) if name else None
        if newest is None:
            export = ", nor a .pt file written by rayssl export" if export_too else ""
            raise ConfigError(
                f"{field_name} '{path}' is not a run or checkpoint folder, nor a run name "
                f"under its storage_path{export}"
            )
        name = newest
        where = parent + newest if parent.endswith("/") else f"{parent}/{newest}"
    return Found(where, storage, name)


def checkpoint(path: str, field_name: str, state_file: str, export_too: bool = False) -> Found:
    """The checkpoint folder behind `path` (holding `state_file`): `path` itself, or the
    newest registered checkpoint of the run it names."""
    import pyarrow.fs as pafs

    found = run_folder(path, field_name, export_too)
    try:
        fs, base = pafs.FileSystem.from_uri(found.where)
        if fs.get_file_info(f"{base}/{state_file}").type == pafs.FileType.File:
            return Found(found.where)
    except OSError as exc:
        raise ConfigError(f"{field_name} '{path}' cannot be read ({exc})") from None
    latest = found.storage.latest_checkpoint(found.run) if found.run else None
    if latest is None:
        raise ConfigError(
            f"{field_name} '{path}' holds neither {state_file} nor a checkpoint "
            "registered by Ray or rayssl; give a run folder with at least one "
            "finished epoch, or a checkpoint folder"
        )
    return Found(found.where, found.storage, found.run, latest)
