"""Fault injection for tests, kept out of the training code: the worker loop calls
`after_epoch_hook` once per epoch, and it does nothing unless a test asked for a crash.

A test sets RAYSSL_CRASH_AFTER_EPOCH=k (or `fit(crash_after_epoch=k)`): the workers raise
right after reporting epoch k's checkpoint, once per run. They wait for each other first:
a rank that raised while rank 0 was still uploading the checkpoint would fail the run
before Ray Train registered it, and the test would resume from epoch k-1 (and find an
unregistered folder on disk) only some of the time. A marker file in the run folder
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
    marker = Path(args.crash_marker)
    if crash_after != epoch or marker.exists():  # every rank reads it before any writes it
        return
    _every_rank_reported()
    if rank == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    raise RuntimeError(f"{CRASH_ENV}: injected failure after epoch {crash_after}")


def _every_rank_reported() -> None:
    """Return once every rank has returned from its report: each report then waits in its
    worker's queue, and the controller's poll that sees a failure also collects them."""
    from rayssl import distributed

    distributed.barrier()
