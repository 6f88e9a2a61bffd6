"""What a checkpoint holds besides tensors (`LoopState`), which part owns each of its keys,
the one restore-and-fit every driver runs, and what changes when a restore crosses a
change of the number of workers (an elastic resize). Each part saves and loads its own
state; `Loop.state_dict` / `load_state_dict` compose them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayssl.runs.state import load_state

if TYPE_CHECKING:
    from rayssl.engine.loop import Loop

FORMAT = 1  # the checkpoint format; a run folder of any rayssl since format 1 resumes


@dataclass
class LoopState:
    """Counters a checkpoint carries besides tensors."""

    epoch: int = 0  # epochs finished = the 0-based index of the next epoch to run
    global_step: int = 0
    best: float | None = None  # best value of the early-stopping metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False  # the run reached its end (schedule, early stop, method's stop)
    resumed_at: list[int] = field(default_factory=list)  # epochs at which an attempt resumed
    # A checkpoint saved mid-epoch (a preemption notice): the steps of epoch `epoch` already
    # done, and the epoch's training loss so far over all ranks as [sum, count].
    step_in_epoch: int = 0
    partial_loss: list[float] | None = None
    # Each change of the number of workers between attempts (an elastic resize, or a
    # --resume with another num_workers): {"epoch", "step", "from", "to"}.
    resizes: list[dict[str, int]] = field(default_factory=list)


def header(method: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's first keys: its format, the method's class name, the run's config."""
    return {"format": FORMAT, "method": type(method).__name__, "config": config}


# A checkpoint, key by key, and the part that owns each (`Loop.state_dict` composes them):
#   format, method, config   header()                model        the method
#   optimizer, lr_scheduler  Step                    loop         LoopState (the loop)
#   sampler_epoch            the training batches    method_extra the method's counters
#   rng                      TrainingRandomness      world_size   the loop
#   input                    Inputs                  online_probe Evaluation (if any)


def restore_and_fit(
    loop: Loop, directory: str | None, *, adopt: bool = False, resumed: bool = True
) -> None:
    """The one restore-and-fit every driver runs (the Ray Train worker, Tune's in-process
    trial): read the checkpoint in `directory` (none: a new run), then `Loop.fit` it
    (`adopt`: under this config's hyperparameters, PBT's donor; `resumed`: the state is this
    run's own, recorded in `resumed_at`)."""
    restored = load_state(directory) if directory is not None else None
    loop.fit(restored, adopt=adopt, resumed=resumed)
