"""Where runs live: the storage folder or URI, run names, registered checkpoints, resume
checks. Used by the driver (`train`, `tune`) and by `rayssl eval`; no Ray in here."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs

from rayssl.errors import ConfigError

if TYPE_CHECKING:
    from rayssl.config import TrainConfig
from rayssl.runs.state import STATE_FILE, load_state

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints
# rayssl's own record, for checkpoints Ray Train does not persist (local mode, num_workers 0)
LOCAL_INDEX_FILE = "rayssl_checkpoints.json"
# rayssl's record of a run's driver: status (running / finished / failed), host, pid, config
RUN_RECORD = "run.json"
WRITE_PROBE_BYTES = 1 << 20  # storage_path's check at start writes this much
RUN_SUFFIX = r"-\d{8}-\d{6}(?:-\d+)?"  # what pick_run_name appends: -<date>-<time>[-N]


def checkpoint_dir_name() -> str:
    """A new checkpoint folder name in Ray Train's pattern, so names sort by time."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
    return f"checkpoint_{stamp}.{int(now % 1 * 1e6):06d}"


@dataclass
class Storage:
    """Where runs live: a local folder or a cloud URI, reached through pyarrow's filesystems."""

    uri: str  # absolute local path or URI, as given to RunConfig.storage_path

    @classmethod
    def resolve(cls, storage_path: str) -> Storage:
        if "://" in storage_path:
            return cls(storage_path)
        path = Path(storage_path).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
            # real bytes, flushed to the disk: an empty file passes on a full disk
            with tempfile.NamedTemporaryFile(dir=path, prefix=".rayssl-write-test") as probe:
                probe.write(b"\0" * WRITE_PROBE_BYTES)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            fix = (
                "free some space or choose another folder"
                if full
                else "choose a folder you can write to"
            )
            raise ConfigError(
                f"storage_path '{storage_path}' is not writable ({exc.strerror}); {fix}"
            ) from None
        return cls(str(path))

    def _fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        return pyarrow.fs.FileSystem.from_uri(self.uri)

    def reserve(self, run: str) -> bool:
        """Create `run`'s folder; False if it exists already. Atomic on a local or mounted
        file system (mkdir either creates or fails); object stores have no atomic create
        that pyarrow exposes, so there it is a check then a create (launches in the same
        second on one bucket are the rare case left)."""
        if "://" not in self.uri or self.uri.startswith("file://"):
            root = Path(self.uri.removeprefix("file://"))
            root.mkdir(parents=True, exist_ok=True)
            try:
                (root / run).mkdir()
            except FileExistsError:
                return False
            return True
        if run in self.runs():
            return False
        fs, base = self._fs()
        fs.create_dir(f"{base}/{run}", recursive=True)
        return True

    def claim(self, run: str) -> int | None:
        """Hold `run` for this driver until the returned descriptor is closed or the process
        ends: an exclusive `flock` on the run's folder itself (no file is written for it),
        taken before anything reads or writes the run. The kernel drops it when the process
        dies, so a killed driver leaves no stale claim. Another driver holding it: one
        ConfigError line. Object stores have no lock: None there (the run record's
        "running" check remains)."""
        import fcntl

        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        folder = Path(self.uri.removeprefix("file://")) / run
        if not folder.is_dir():
            return None
        handle = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            record = self.read_json(run, RUN_RECORD)
            holder = (
                f"process {record['pid']} on {record.get('host', '?')}"
                if record.get("status") == "running" and "pid" in record
                else "another process"
            )
            raise ConfigError(
                f"run '{run}' is being trained by another driver ({holder}); wait for it "
                "to end or stop it, then resume"
            ) from None
        return handle

    def runs(self) -> list[str]:
        fs, base = self._fs()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)

    def read_json(self, run: str, name: str) -> dict[str, Any]:
        """A JSON record of `run` ({} when missing or unreadable)."""
        fs, base = self._fs()
        try:
            with fs.open_input_stream(f"{base}/{run}/{name}") as f:
                record = json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}  # valid JSON, but not a record

    def _ray_latest(self, run: str) -> str | None:
        latest = self.read_json(run, SNAPSHOT_FILE).get("latest_checkpoint_result") or {}
        return latest.get("checkpoint_dir_name")

    def latest_checkpoint(self, run: str) -> str | None:
        """The newest checkpoint of `run` that was registered, or None: by Ray Train (its
        manager snapshot) or by rayssl's local mode (its index, written after the state).
        A checkpoint folder never registered (an upload cut short) is never returned."""
        names = [
            n
            for n in (
                self._ray_latest(run),
                self.read_json(run, LOCAL_INDEX_FILE).get("checkpoint_dir_name"),
            )
            if n
        ]
        return max(names) if names else None

    def registered_checkpoints(self, run: str) -> list[str]:
        """Every registered checkpoint of `run` still on disk, newest first: those Ray
        Train's snapshot keeps and those rayssl's local index keeps (`num_to_keep`)."""
        snapshot = self.read_json(run, SNAPSHOT_FILE)
        results = [
            *snapshot.get("checkpoint_results", []),
            snapshot.get("latest_checkpoint_result"),
        ]
        names = {r.get("checkpoint_dir_name") for r in results if isinstance(r, dict)}
        names.update(self.read_json(run, LOCAL_INDEX_FILE).get("checkpoints", []))
        fs, base = self._fs()
        infos = fs.get_file_info([f"{base}/{run}/{n}/{STATE_FILE}" for n in sorted(names) if n])
        present = [i.path.rsplit("/", 2)[-2] for i in infos if i.type == pyarrow.fs.FileType.File]
        return sorted(present, reverse=True)  # checkpoint_<timestamp>: greatest is newest

    def newest_run(self, name: str) -> str | None:
        """The run named `name` (or `name-<timestamp>[-N]`, as `pick_run_name` names them)
        with the newest checkpoint, or None. `name-best-…` or `name-v2-…` are other runs."""
        own = re.compile(rf"{re.escape(name)}(?:{RUN_SUFFIX})?")
        latest = {r: self.latest_checkpoint(r) for r in self.runs() if own.fullmatch(r)}
        candidates = [r for r, checkpoint in latest.items() if checkpoint]
        # checkpoints are named checkpoint_<timestamp>: the greatest name is the newest
        return max(candidates, key=lambda r: latest[r]) if candidates else None

    def registered_by_ray(self, run: str, checkpoint: str) -> bool:
        """Whether Ray Train knows `checkpoint` (else a Train run must be handed it)."""
        return self._ray_latest(run) == checkpoint

    def unregistered_checkpoints(self, run: str) -> list[str]:
        """`run`'s checkpoint folders that neither Ray Train's snapshot nor rayssl's local
        index lists: a failure on one rank while rank 0 uploaded leaves one (Ray Train
        registers a checkpoint only once every rank's report has reached it). Nothing reads
        them and nothing would ever delete them."""
        snapshot = self.read_json(run, SNAPSHOT_FILE)
        results = [
            *snapshot.get("checkpoint_results", []),
            snapshot.get("latest_checkpoint_result"),
        ]
        known = {r.get("checkpoint_dir_name") for r in results if r}
        known.update(self.read_json(run, LOCAL_INDEX_FILE).get("checkpoints", []))
        fs, base = self._fs()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(f"{base}/{run}", allow_not_found=True))
        return sorted(
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory
            and i.base_name.startswith("checkpoint_")
            and i.base_name not in known
        )

    def remove_run(self, run: str) -> None:
        """Delete `run`'s folder, as far as it goes (a run refused before it trained)."""
        fs, base = self._fs()
        with contextlib.suppress(OSError):
            fs.delete_dir(f"{base}/{run}")

    def delete_checkpoint(self, run: str, checkpoint: str) -> None:
        fs, base = self._fs()
        fs.delete_dir(f"{base}/{run}/{checkpoint}")

    def path(self, run: str, name: str = "") -> str:
        return f"{self.uri}/{run}/{name}" if name else f"{self.uri}/{run}"

    def read_state(self, run: str, checkpoint: str) -> dict[str, Any]:
        fs, base = self._fs()
        with tempfile.TemporaryDirectory() as tmp:
            pyarrow.fs.copy_files(
                f"{base}/{run}/{checkpoint}/{STATE_FILE}",
                f"{tmp}/{STATE_FILE}",
                source_filesystem=fs,
                destination_filesystem=pyarrow.fs.LocalFileSystem(),
            )
            return load_state(tmp, shown_as=self.path(run, f"{checkpoint}/{STATE_FILE}"))

    def save_local_checkpoint(self, run: str, state: dict[str, Any], keep: int | None) -> str:
        """Local mode: write `state` as a new checkpoint folder of `run`, register it in the
        index (after the state is complete), then delete the oldest beyond `keep`."""
        from rayssl.runs.state import save_state

        fs, base = self._fs()
        name = checkpoint_dir_name()
        with tempfile.TemporaryDirectory() as tmp:
            save_state(state, tmp)
            fs.create_dir(f"{base}/{run}/{name}")
            pyarrow.fs.copy_files(
                f"{tmp}/{STATE_FILE}",
                f"{base}/{run}/{name}/{STATE_FILE}",
                source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=fs,
            )
        kept = [*self.read_json(run, LOCAL_INDEX_FILE).get("checkpoints", []), name]
        dropped, kept = (kept[:-keep], kept[-keep:]) if keep else ([], kept)
        record = {"checkpoint_dir_name": name, "checkpoints": kept}
        self.write_text(run, LOCAL_INDEX_FILE, json.dumps(record, indent=2))
        for old in dropped:
            try:
                fs.delete_dir(f"{base}/{run}/{old}")
            except FileNotFoundError:
                pass
        return name

    def make_dir(self, run: str, name: str = "") -> str:
        """Create `run/name` (and its parents); return its path or URI."""
        fs, base = self._fs()
        fs.create_dir(f"{base}/{run}/{name}" if name else f"{base}/{run}", recursive=True)
        return self.path(run, name)

    def write_text(self, run: str, name: str, text: str) -> str:
        return self.write_bytes(run, name, text.encode())

    def write_bytes(self, run: str, name: str, data: bytes) -> str:
        """Write `run/name` whole (a temporary name, then a move)."""
        fs, base = self._fs()
        fs.create_dir(f"{base}/{run}", recursive=True)
        path = f"{base}/{run}/{name}"
        tmp = f"{base}/{run}/.{name}.tmp"
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except BaseException:  # a full disk, a lost connection: no stray temporary file
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)
            raise
        return path


def split_run_path(where: str) -> tuple[str, str]:
    """A run folder's storage and name: '/data/runs/r-1' -> ('/data/runs', 'r-1'); a folder
    directly under the root, '/r-1' -> ('/', 'r-1'), and '/' itself -> ('/', '') (no run:
    the callers' own 'not a run' lines)."""
    where = where.rstrip("/") or "/"
    parent, _, name = where.rpartition("/")
    if parent == "file://":  # 'file:///r-1': the root of the local file system
        parent += "/"
    return parent or "/", name


def driver_alive(record: dict[str, Any]) -> bool | None:
    """Whether the driver that wrote `record` still runs (None: another host, unknown). A
    live process under its pid that started after the run did is another process that
    reuses the pid, not the driver."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (OSError, KeyError, ValueError, TypeError):
        return False
    started = _process_started(pid)
    return started is None or started <= float(record.get("started", started)) + 2.0


def _process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from Linux's /proc; None where
    that cannot be read. Hand-written: psutil would do it but is not among the installed
    packages, and this is two files."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start, in ticks since boot
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def pick_run_name(cfg: TrainConfig, storage: Storage, resume: bool) -> str:
    """A new run gets `<name>-<timestamp>`; `resume` picks the newest run of that name
    that has a checkpoint."""
    base = cfg.name or "run"
    if resume:
        newest = storage.newest_run(base)
        if newest is None:
            raise ConfigError(
                f"--resume: no run named '{base}' with a checkpoint under '{storage.uri}'; "
                "start it without --resume first"
            )
        return newest
    name = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while not storage.reserve(candidate := name if suffix == 1 else f"{name}-{suffix}"):
        suffix += 1
    return candidate


def check_resumable(cfg: TrainConfig, state: dict, run: str, method_state: dict) -> None:
    """Refuse to resume `run`'s newest `state` with another method or other weight shapes."""
    if state["method"] != cfg.method and state["config"]["method"] != cfg.method:
        raise ConfigError(
            f"--resume: run '{run}' was trained with method '{state['config']['method']}', "
            f"this config says '{cfg.method}'"
        )
    saved = {k: tuple(v.shape) for k, v in state["model"].items()}
    wanted = {k: tuple(v.shape) for k, v in method_state.items()}
    if saved != wanted:
        diff = sorted(set(saved.items()) ^ set(wanted.items()))
        raise ConfigError(
            f"--resume: the checkpoint of run '{run}' does not fit this config's network "
            f"(first difference: {diff[0][0]}); use the config the run was started with"
        )
