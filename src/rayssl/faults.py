"""Fault injection for tests, kept out of the training code: the worker loop calls
`after_epoch_hook` once per epoch, and it does nothing unless a test asked for a crash.

A test sets RAYSSL_CRASH_AFTER_EPOCH=k (or `fit(crash_after_epoch=k)`): the workers raise
right after reporting epoch k's checkpoint, once per run. A marker file in the run folder
records the crash, so the restarted attempt runs on even if it resumed from an earlier
checkpoint. Local storage only: fault injection is for tests on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CRASH_ENV = "RAYSSL_CRASH_AFTER_EPOCH"


def after_epoch_hook(args: Any, epoch: int, rank: int) -> None:
    """Raise the injected failure after epoch `args.crash_after_epoch`, the first time only
    (`args`: the worker's `WorkerArgs`)."""
    crash_after = args.crash_after_epoch or 0
    if crash_after != epoch or not _first_time(args.crash_marker, rank):
        return
    raise RuntimeError(f"{CRASH_ENV}: injected failure after epoch {crash_after}")


def _first_time(crash_marker: str, rank: int) -> bool:
    marker = Path(crash_marker)
    if marker.exists():
        return False
    if rank == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return True
