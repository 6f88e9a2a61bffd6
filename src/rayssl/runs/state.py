"""Checkpoint files: every piece of training state in one `state.pt`, written atomically."""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from rayssl.config import ConfigError
from rayssl.errors import first_line

STATE_FILE = "state.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU and, where present, CUDA) in this process,
    as tensors and plain types only: a checkpoint loads with `weights_only=True`."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    if isinstance(keys, torch.Tensor):  # older checkpoints hold the numpy array itself
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state: dict[str, Any], directory: str | Path) -> Path:
    """Write `state` to `directory/state.pt` via a temporary file and an atomic rename,
    so a crash mid-write never leaves a truncated state.pt behind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / STATE_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


class UnsafeState(ValueError):
    """A state file that needs more than tensors and plain types to load."""


class DamagedState(UnsafeState):
    """A state file that cannot be read at all: truncated, empty, overwritten."""


class DamagedCheckpoint(ConfigError):
    """A checkpoint whose state.pt is damaged (a resume can fall back to an older one)."""


def load_state(directory: str | Path, shown_as: str | None = None) -> dict[str, Any]:
    """`directory/state.pt`, loaded as data only (see `load_state_file`); a file that is
    not a rayssl state is one ConfigError line naming it (`shown_as`, e.g. its URI)."""
    path = Path(directory) / STATE_FILE
    try:
        return load_state_file(path)
    except DamagedState as exc:
        raise DamagedCheckpoint(f"'{shown_as or path}': {exc}") from None
    except UnsafeState as exc:
        raise ConfigError(f"'{shown_as or path}': {exc}") from None


def load_state_file(source: str | Path | BinaryIO) -> dict[str, Any]:
    """A state written by rayssl, unpickled with `weights_only=True`: tensors and plain
    types, nothing a file can name gets imported or called. States written before RNG
    states were stored as tensors hold numpy's MT19937 key array; the three numpy names
    that rebuild an array are allowed for those, and nothing else.
    Raises `UnsafeState` (one line) for a file that asks for more."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if named is None:  # not a refused name: the pickle itself is broken
            raise DamagedState(_damaged(exc)) from None
        raise UnsafeState(
            f"it names '{named.group(1)}', which a rayssl state never holds; refused "
            "without loading it"
        ) from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch: RuntimeError, EOFError (an empty file), UnicodeError..
        raise DamagedState(_damaged(exc)) from None
    if not isinstance(state, dict):
        raise DamagedState("not a rayssl state (it holds no mapping)")
    return state


def _damaged(exc: BaseException) -> str:
    reason = first_line(exc, with_type=False)[:80].rstrip(". ")
    return f"not a readable rayssl state: truncated or damaged ({reason})"


def _numpy_array_globals() -> list[Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_NUMPY_ARRAY_GLOBALS = _numpy_array_globals()
