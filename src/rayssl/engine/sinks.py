"""Where a loop hands its reports. `Sink` is the protocol, `NoSink` reports nowhere, and
`CheckpointSink` is the base of every sink that reports each epoch with a checkpoint of the
loop's state: Ray Train's (`cluster/worker.py: RayTrainSink`) and Tune's in-process trial's
(`tune/trials.py: TuneSink`) differ only in where the report goes (`send`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rayssl.runs.state import save_state

if TYPE_CHECKING:
    from rayssl.engine.loop import Loop

ReportKind = Literal["epoch", "preemption", "already_over"]


class Sink(Protocol):
    """Where a loop hands its reports: Ray Train (`cluster/worker.py`), a Tune trial
    (`tune/trials.py`), or a test. Every method is called on every rank."""

    def start(self, loop: Loop) -> None:
        """Training begins: the state is restored (if any), no epoch has run yet."""

    def report(self, loop: Loop, metrics: dict[str, float], kind: ReportKind) -> None:
        """Hand `metrics` on; with a checkpoint of the loop's state unless `already_over`
        (a restored run that had ended reports its final metrics once more)."""

    def preempted(self, loop: Loop) -> bool:
        """Whether a preemption notice arrived; asked on every rank at the same steps."""

    def finish(self, loop: Loop) -> None:
        """The last epoch has been reported."""


class NoSink:
    """Reports go nowhere and no notice ever comes (benchmarks, tests of the epochs)."""

    def start(self, loop: Loop) -> None:
        pass

    def report(self, loop: Loop, metrics: dict[str, float], kind: ReportKind) -> None:
        pass

    def preempted(self, loop: Loop) -> bool:
        return False

    def finish(self, loop: Loop) -> None:
        pass


class CheckpointSink(NoSink):
    """Reports every epoch (and preemption notice) with the loop's state; a run restored
    after its end reports its final metrics again, without a state. Subclasses say where a
    report goes (`send`), and may gather the state differently (`checkpoint_state`: every
    rank calls it; a rank that attaches nothing returns None) or act after each epoch."""

    def report(self, loop: Loop, metrics: dict[str, float], kind: ReportKind) -> None:
        if kind == "already_over":
            self.send(loop, metrics, None)
            return
        self.send(loop, metrics, self.checkpoint_state(loop))
        if kind == "epoch":
            self.after_epoch(loop, metrics)

    def checkpoint_state(self, loop: Loop) -> dict[str, Any] | None:
        return loop.state_dict()

    def send(self, loop: Loop, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def after_epoch(self, loop: Loop, metrics: dict[str, float]) -> None:
        """After an epoch's report (its checkpoint is saved)."""


@contextmanager
def state_directory(state: dict[str, Any]) -> Iterator[str]:
    """A temporary checkpoint folder holding `state` (for a reporter that copies it)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_state(state, tmp)
        yield tmp
