"""The training engine, one room per job; no Ray in here.

loop.py        the Loop: epochs and steps top to bottom, and the Sink it reports to
step.py        one optimizer step: autocast, backward, finite check, clipping
inputs.py      views, normalisation and memory layout of what the method sees
evaluation.py  val / test loss, kNN and linear probes, the online probe
probes.py      the probes themselves (kNN, logistic regression), `rayssl eval`
online_probe.py  the online linear probe
stopping.py    early stopping
checkpoint.py  LoopState; saving, restoring, PBT's adoption, elastic resizes
build.py       build_loop: the same initial weights on every rank
"""

from rayssl.engine.build import build_loop
from rayssl.engine.checkpoint import LoopState
from rayssl.engine.loop import Loop, NoSink, Sink, TrainingIterationStats
from rayssl.engine.step import NonFiniteLossError

__all__ = [
    "Loop",
    "LoopState",
    "NoSink",
    "NonFiniteLossError",
    "Sink",
    "TrainingIterationStats",
    "build_loop",
]
