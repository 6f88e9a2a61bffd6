"""The training engine, one room per job; no Ray in here.

loop.py        the Loop: epochs and steps top to bottom; it composes its parts' states
sinks.py       the Sink it reports to; CheckpointSink, the base of Ray Train's and Tune's
step.py        one optimizer step: autocast (bf16, fp16 with a scaler), backward, clipping
guard.py       the non-finite guard, on the device: every rank skips, the run stops at a read
metrics.py     RunningMean: the loop's losses, summed on the device
inputs.py      views, normalisation and memory layout of what the method sees
evaluation.py  val / test loss, kNN and linear probes, the online probe
probes.py      the probes themselves (kNN, logistic regression) across ranks
features.py    frozen-backbone features, shared by the probes and `rayssl embed`
online_probe.py  the online linear probe
stopping.py    early stopping
checkpoint.py  LoopState, the checkpoint format, restore_and_fit, elastic resizes
build.py       build_loop: the same initial weights on every rank
dummy.py       DummyTrainer: the loop on synthetic data without Ray
"""

from rayssl.engine.build import build_loop
from rayssl.engine.checkpoint import LoopState
from rayssl.engine.guard import NonFiniteLossError
from rayssl.engine.loop import Loop, TrainingIterationStats
from rayssl.engine.sinks import CheckpointSink, NoSink, Sink

__all__ = [
    "CheckpointSink",
    "Loop",
    "LoopState",
    "NoSink",
    "NonFiniteLossError",
    "Sink",
    "TrainingIterationStats",
    "build_loop",
]
