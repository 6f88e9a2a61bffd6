"""The per-worker training loop. No Ray in here: `cluster/worker.py` drives it inside Ray
Train workers (and Ray Train's local mode), `tune/trials.py` in Tune's in-process trials,
and tests drive it directly.

    loop = build_loop(cfg, splits, sink=sink)
    loop.fit(restored)              # restore -> already over? -> train, each epoch to the sink
    for metrics in loop.epochs():   # or drive the epochs yourself
        ...

One epoch, top to bottom, is `run_epoch`; one optimizer step is `iterate`'s body. The rooms
beside this file: `step.py` (the optimizer step), `inputs.py` (views, normalisation),
`evaluation.py` (val/test, probes), `stopping.py` (early stopping), `checkpoint.py` (state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rayssl import distributed
from rayssl.config import TrainConfig
from rayssl.data import Splits
from rayssl.engine.checkpoint import LoopState, header
from rayssl.engine.evaluation import Evaluation
from rayssl.engine.inputs import Inputs, train_batches
from rayssl.engine.metrics import RunningMean, startup_metrics
from rayssl.engine.randomness import TrainingRandomness
from rayssl.engine.sinks import NoSink, Sink
from rayssl.engine.step import Step, autocast
from rayssl.engine.stopping import patience_spent, track_best
from rayssl.methods import Method


@dataclass
class TrainingIterationStats:
    """What one optimizer step produced. The loss stays on the device until `loss` is read
    (reading it waits for the step: the loop itself never does)."""

    iteration: int  # global optimizer step, 1-based, continuing across epochs and resumes
    loss_tensor: torch.Tensor
    time: float  # host seconds the step took to issue (on an accelerator, not to finish)

    @property
    def loss(self) -> float:
        return float(self.loss_tensor)


class Loop:
    """Owns the sharded batches, the step, evaluation, early stopping and the training
    state of one worker; the method owns its math."""

    def __init__(
        self,
        method: Method,
        splits: Splits,
        cfg: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
        train_shard: Any = None,
        sink: Sink | None = None,
    ):
        """`train_shard`: this worker's Ray Data shard of `splits.stream` (streamed data);
        without a stream, batches come from the in-memory `splits.train`."""
        self.cfg, self.splits, self.sink = cfg, splits, sink or NoSink()
        self.device, self.rank, self.world_size = torch.device(device), rank, world_size
        self.method = method.to(self.device)
        if cfg.performance.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.train_batches = train_batches(cfg, splits, self.device, rank, world_size, train_shard)
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.step = Step(
            self.method,
            cfg,
            device=self.device,
            rank=rank,
            world_size=world_size,
            wrap_model=wrap_model,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.inputs = Inputs(self.method, cfg, splits)
        self.evaluation = Evaluation(
            self.method,
            cfg,
            splits,
            self.inputs,
            device=self.device,
            rank=rank,
            world_size=world_size,
        )
        self.randomness = TrainingRandomness(cfg.seed, rank, world_size, self.device)
        self.train_loss = RunningMean(self.device)
        self.state = LoopState()
        self.marks: dict[str, float] = {}  # start-up timeline (metrics.STARTUP_MARKS)
        self.startup_reported = False
        self.saved_on_notice = False

    # ------------------------------------------------------------------ the run

    def fit(
        self, restored: dict[str, Any] | None = None, *, adopt: bool = False, resumed=True
    ) -> None:
        """The one sequence every driver runs: restore `restored` (with `adopt`, under this
        config's hyperparameters: PBT's donor; `resumed`: it is this run's own, recorded
        in `resumed_at`), report the final metrics again if the run had already ended,
        else train the remaining epochs, handing each epoch's metrics to the sink."""
        if restored is not None:
            self.load_state_dict(restored)
            if adopt:
                self.adopt_hyperparameters(restored["config"])
            if resumed:
                self.state.resumed_at.append(self.state.epoch)
        if self.is_over():
            self.sink.report(self, self.state.history[-1], "already_over")
            return
        self.sink.start(self)
        for metrics in self.epochs():
            self.sink.report(self, metrics, "epoch")
        self.sink.finish(self)

    def epochs(self) -> Iterator[dict[str, float]]:
        """Run the remaining epochs, yielding each epoch's metrics. The last one (end of the
        schedule, early stop, or the method's own stop) also carries test metrics. A run
        restored after an early stop or the method's own stop yields nothing: a stopped run
        stays stopped (a run that ended its schedule continues if `epochs` was raised)."""
        if self.is_over():
            return
        if self.state.global_step == 0:  # no step taken yet (a notice may save mid-epoch 0)
            self.method.on_training_start()
        while self.state.epoch < self.cfg.epochs:
            metrics = self.run_epoch()
            # 4. probes every eval.every epochs, then the early-stopping record
            every, ssl = self.cfg.eval.every, self.cfg.method != "supervised"
            probed = ssl and every and self.state.epoch % every == 0
            if probed:
                metrics.update(self.probe())
            track_best(self.cfg, self.state, metrics)
            # 5. the last epoch also tests (and probes, if this epoch did not)
            last = self.state.epoch >= self.cfg.epochs or self.should_stop()
            if last:
                metrics.update(self.evaluate("test"))
                if ssl and not probed:
                    metrics.update(self.probe())
                self.state.finished = True
                self.method.on_training_end()
            self.state.history.append(dict(metrics))
            yield metrics
            if last:
                return

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch and evaluate on the validation split (no probes, no stopping
        decision: `epochs()` adds those)."""
        epoch = self.state.epoch
        # 1. the epoch's data order, views and the method's hook
        self.start_epoch()
        # 2. the optimizer steps
        start = time.perf_counter()
        steps = sum(1 for _ in self.iterate())
        self._sync_buffers()
        self.evaluation.end_of_epoch()
        self.method.on_training_epoch_end(epoch)
        elapsed = time.perf_counter() - start
        samples = steps * self.train_batches.batch_size * self.world_size
        metrics = {
            "epoch": epoch + 1,
            "step": self.state.global_step,
            "train_loss": self.train_loss.compute(),
            **self.method.epoch_metrics("train"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": samples / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "workers": self.world_size,
        }
        if self.step.scaler is not None:  # fp16: steps the scaler skipped on an overflow
            metrics["skipped_steps"] = float(self.step.skipped)
            self.step.skipped.zero_()
        self.train_loss.reset()
        metrics.update(self._startup_metrics())
        # 3. validation, and the online probe's accuracy
        metrics.update(self.evaluate("val"))
        metrics.update(self.evaluation.online_accuracy())
        self.state.epoch += 1
        return metrics

    def start_epoch(self) -> None:
        """Set the sampler's epoch, reseed the view generator, call the method's hook, and
        re-wrap the model for DDP if the hook changed which parameters train."""
        epoch, done = self.state.epoch, self.state.step_in_epoch
        self.train_batches.set_epoch(epoch, start_step=done)
        self.randomness.start_epoch(epoch, done)
        if done:  # resumed mid-epoch: the epoch's training loss so far
            if self.rank == 0 and self.state.partial_loss:
                total, count = self.state.partial_loss
                self.train_loss.update(torch.tensor(total / count), weight=count)
        self.method.on_training_epoch_start(epoch)
        self.step.rewrap_if_trainable_changed()

    def iterate(self) -> Iterator[TrainingIterationStats]:
        """Run the current epoch's optimizer steps, yielding stats after each. Stops before a
        step once the method's own budget is spent (LFR's `max_backbone_training_steps`)."""
        self.model.train()
        first = self.state.step_in_epoch + 1  # after a mid-epoch resume, the next step's
        for step_in_epoch, (x, y) in enumerate(self.train_batches, start=first):
            if self.method.should_stop():
                break
            self.marks.setdefault("first_batch", time.time())
            start = time.perf_counter()
            with autocast(self.cfg, self.device):  # the views too, as the forward
                views = self.inputs.views(x, self.randomness.views)
            loss = self.step(views, y, self.state.global_step + 1)
            self.state.global_step += 1
            self.marks.setdefault("first_step", time.time())
            self.method.on_step_end(self.state.global_step, self.total_steps)
            self.evaluation.online_probe_step(x, y)
            self.train_loss.update(loss)
            self.state.step_in_epoch = step_in_epoch
            if self.state.global_step % self.cfg.performance.log_every == 0:
                self.check_finite()  # the hot path's one read back, every log_every steps
            if self._preemption_noticed():
                self._save_mid_epoch()
            yield TrainingIterationStats(self.state.global_step, loss, time.perf_counter() - start)
        # the epoch's steps are done (or the method's budget is spent)
        self.check_finite()
        self.state.step_in_epoch, self.state.partial_loss = 0, None

    def check_finite(self) -> None:
        """Raise `NonFiniteLossError` if any rank's loss or gradients were non-finite at a
        step so far (every rank skipped it and every later one): a read back to the host,
        at a log interval, the epoch's end and before any checkpoint."""
        self.step.guard.raise_if_failed(self.steps_per_epoch)

    # ------------------------------------------------------------------ preemption

    def _preemption_noticed(self) -> bool:
        """Whether to checkpoint now: the first preemption notice of this attempt, asked
        for on every rank at the same global steps."""
        every = self.cfg.checkpoint.preemption_check_steps
        if self.saved_on_notice or not every or self.state.global_step % every:
            return False
        return self.sink.preempted(self)

    def _save_mid_epoch(self) -> None:
        """Every rank: a node of this run is being preempted; report a checkpoint of the
        state mid-epoch now, so the restart loses at most the steps since. The report
        carries the last epoch's metrics (a keep-best checkpoint policy needs its score)
        and the step it was taken at."""
        self.saved_on_notice = True
        self.check_finite()  # no checkpoint of a state past a skipped step
        state, ck = self.state, self.cfg.checkpoint
        state.partial_loss = self._partial_loss()
        metrics = {**(state.history[-1] if state.history else {}), "step": state.global_step}
        metrics["preemption_checkpoint_step_in_epoch"] = state.step_in_epoch
        if ck.score_attribute and ck.score_attribute not in metrics:
            metrics[ck.score_attribute] = float("-inf" if ck.score_order == "max" else "inf")
        self.sink.report(self, metrics, "preemption")
        if self.rank == 0:
            print(
                f"[rayssl] preemption notice: checkpoint saved at epoch {state.epoch + 1}, "
                f"step {state.step_in_epoch} of {self.steps_per_epoch}",
                flush=True,
            )

    # ------------------------------------------------------------------ evaluation, stopping

    def evaluate(self, stage: str) -> dict[str, float]:
        return self.evaluation.evaluate(stage, cycle=self.state.epoch + 1)

    def probe(self) -> dict[str, float]:
        return self.evaluation.probe()

    def is_over(self) -> bool:
        """A restored run that has already ended: its schedule, an early stop or the
        method's own stop. Restarts and resumes of such a run train nothing."""
        return bool(self.state.history) and (
            self.should_stop() or self.state.epoch >= self.cfg.epochs
        )

    def should_stop(self) -> bool:
        return patience_spent(self.cfg, self.state) or self.method.should_stop()

    # ------------------------------------------------------------------ state

    # A checkpoint is the loop's own counters plus each part's state_dict: the method's, the
    # step's (optimizer, LR scheduler), the batches' position, the randomness (per-rank RNGs
    # and view generators), the evaluation's (online probe) and the inputs' record. Keys:
    # engine/checkpoint.py.

    def rank_state(self) -> dict[str, Any]:
        """This rank's random state (`TrainingRandomness.rank_state`); the caller gathers
        one per rank and hands the list to `state_dict`."""
        return self.randomness.rank_state()

    def state_dict(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Every piece of training state. `rng_states` holds one entry per rank (the caller
        gathers them); without it, this process's RNG state is stored for rank 0."""
        return {
            **header(self.method, self.cfg.record()),
            "model": self.method.state_dict(),
            **self.step.state_dict(),
            "loop": asdict(self.state),
            **self.train_batches.state_dict(),
            "method_extra": self.method.extra_state(),
            **self.randomness.state_dict(rng_states),
            "world_size": self.world_size,
            **self.inputs.state_dict(),
            **self.evaluation.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; call on every rank before training."""
        # Extra state first: it may re-apply LFR's target selection, which shapes the model.
        self.method.load_extra_state(state["method_extra"])
        self.method.load_state_dict(state["model"])
        self.step.load_state_dict(state)
        self.state = LoopState(**state["loop"])
        self.evaluation.load_state_dict(state)
        self.train_batches.load_state_dict(state, self.state.step_in_epoch)
        self.randomness.load_state_dict(state, self.state)
        self.inputs.load_state_dict(state)

    def adopt_hyperparameters(self, saved_config: dict[str, Any]) -> None:
        """After loading a state trained under `saved_config` (PBT's donor): this config's
        learning rate and weight decay. BYOL's momentum needs nothing here: it is recomputed
        from this config every step."""
        self.step.adopt(saved_config["optimizer"])

    def _startup_metrics(self) -> dict[str, float]:
        """The start-up timeline, once per attempt (see `metrics.startup_metrics`)."""
        if self.startup_reported:
            return {}
        out = startup_metrics(self.marks)
        self.startup_reported = bool(out)
        return out

    def _partial_loss(self) -> list[float]:
        """The epoch's training loss so far over all ranks, as [sum, count] (every rank)."""
        return self.train_loss.totals().tolist()

    @property
    def model(self) -> nn.Module:
        return self.step.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def lr_scheduler(self) -> Any:
        return self.step.lr_scheduler

    @property
    def online_probe(self) -> Any:
        return self.evaluation.online_probe

    # ------------------------------------------------------------------ helpers

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers. DDP broadcasts buffers before each forward, but
        the last step's BatchNorm update (and BYOL's EMA of it) is rank-local; after this the
        ranks are identical at every epoch boundary, where checkpoints and evaluation happen."""
        distributed.broadcast_from_rank0(list(self.method.buffers()))
