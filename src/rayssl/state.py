"""Checkpoint files: every piece of training state in one `state.pt`, written atomically."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU and, where present, CUDA) in this process."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    # weights_only=False: the state holds RNG tuples and numpy arrays, and we wrote it ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)
