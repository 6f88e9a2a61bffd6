"""The per-worker training loop. No Ray in here: `train.train_func` drives it inside Ray Train
workers, and tests drive it directly.

    loop = Loop(method, splits, cfg)
    for metrics in loop.epochs():          # one dict per finished epoch
        ...                                # report / checkpoint (Ray) or print (local)

`Loop.iterate()` is the core: it runs the current epoch's optimizer steps and yields a
`TrainingIterationStats` after each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from rayssl.config import TrainConfig
from rayssl.data import (
    Augment,
    Splits,
    StreamedBatches,
    TensorBatches,
    input_normalizer,
    input_statistics,
)
from rayssl.methods import Method
from rayssl.online_probe import OnlineLinearProbe
from rayssl.state import capture_rng, restore_rng


@dataclass
class TrainingIterationStats:
    """What one optimizer step produced (as DaCapo's)."""

    iteration: int  # global optimizer step, 1-based, continuing across epochs and resumes
    loss: float
    time: float  # seconds this step took


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or Inf on some rank; every rank stops before its
    optimizer step instead of corrupting the weights."""


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


PROBE_METRICS = ("knn_acc", "linear_acc")
ONLINE_PROBE_SEED_OFFSET = 104_729  # the online probe's initial weights: seed + this


class _TrainingStep(nn.Module):
    """Routes the method's training step through `forward`, so DDP sees it and syncs grads."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch)


class Loop:
    """Owns devices, DDP wrapping, sharded batches, optimizer, LR schedule, clipping,
    evaluation, early stopping and the training state; the method owns its math."""

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
        broadcast: Callable[[Any], Any] | None = None,
        train_shard: Any = None,
    ):
        """`train_shard`: this worker's Ray Data shard of `splits.stream` (the parquet path);
        without a stream, batches come from the in-memory `splits.train`."""
        self.cfg = cfg
        self.splits = splits
        self.broadcast = broadcast or (lambda obj: obj)
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        perf = cfg.performance
        self.channels_last = perf.channels_last
        self.method = method.to(self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self._step_module = _TrainingStep(self.method)
        self._wrap = wrap_model or (lambda module: module)
        self.model = self._build_model()
        self._trainable = self._trainable_parameters()

        def batches(pair, batch_size: int, train: bool) -> TensorBatches | None:
            if pair is None:
                return None
            x, y = (t.to(self.device) for t in pair)
            return TensorBatches(
                x,
                y,
                batch_size,
                rank=rank,
                world_size=world_size,
                shuffle=train,
                seed=cfg.seed,
                drop_last=train,
            )

        self.amp_dtype = torch.bfloat16 if perf.amp == "bf16" else None
        if splits.stream is not None:
            if train_shard is None:
                raise ValueError("streamed data (parquet, images) needs a Ray Data shard")
            stream, d = splits.stream, cfg.data
            self.train_batches = StreamedBatches(
                train_shard,
                stream.num_rows,
                stream.shape,
                d.batch_size // world_size,
                world_size=world_size,
                x_column=stream.x_column,
                y_column=stream.y_column,
                device=self.device,
                seed=cfg.seed,
                shuffle_buffer=d.shuffle_buffer,
                prefetch_batches=d.prefetch_batches,
                pin_memory=d.pin_memory and self.device.type == "cuda",
                scale=stream.scale,
            )
        else:
            self.train_batches = batches(splits.train, cfg.data.batch_size // world_size, True)
        self.val_batches = batches(splits.val, cfg.data.eval_batch_size, False)
        self.test_batches = batches(splits.test, cfg.data.eval_batch_size, False)
        if len(self.train_batches) == 0:
            raise ValueError(
                "each worker gets fewer samples than its "
                f"batch of {self.train_batches.batch_size}; lower data.batch_size"
            )
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.optimizer, self.lr_scheduler = self.method.configure_optimizers(
            self.total_steps, self.steps_per_epoch
        )
        self.augment = Augment(cfg.data.augment)
        self.normalize = input_normalizer(cfg.data, splits) or (lambda x: x)
        self.online_probe = self._online_probe()
        # what a sample looks like to the backbone, saved with every checkpoint for
        # `rayssl export` and `backbone.init_from`: its shape and normalisation
        stats = input_statistics(cfg.data, splits)
        self.input_record = {
            "shape": list(splits.sample_shape),
            "normalize": {"mean": stats[0].tolist(), "std": stats[1].tolist()} if stats else None,
        }
        self.generator = torch.Generator(device=self.device)
        self.eval_generator = torch.Generator(device=self.device)
        self.train_loss = MeanMetric().to(self.device)
        self.eval_loss = MeanMetric().to(self.device)
        self.state = LoopState()
        self.first_step_at: float | None = None  # time.time() of this process's first step
        self.launched_at: float | None = None  # time.time() when the command started, if known
        # Preemption notices (Ray Train workers only): `preemption_notice()` is asked every
        # `checkpoint.preemption_check_steps` optimizer steps on every rank (the same steps,
        # it is a collective); on the first notice every rank calls `save_now()`, which
        # writes a mid-epoch checkpoint.
        self.preemption_notice: Callable[[], bool] | None = None
        self.save_now: Callable[[], None] | None = None
        self.saved_on_notice = False
        self._resume_views: torch.Tensor | None = None  # view generator state, mid-epoch

    # ------------------------------------------------------------------ training

    def iterate(self) -> Iterator[TrainingIterationStats]:
        """Run the current epoch's optimizer steps, yielding stats after each. Stops before a
        step once the method's own budget is spent (LFR's `max_backbone_training_steps`)."""
        self.model.train()
        epoch = self.state.epoch
        first = self.state.step_in_epoch + 1  # after a mid-epoch resume, the next step's
        for step_in_epoch, batch in enumerate(self.train_batches, start=first):
            if self.method.should_stop():
                break
            start = time.perf_counter()
            x, y = batch
            with self.autocast():
                loss = self.model((self.views(x, self.generator), y))["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value, grads, grad_norm = self._check_finite(loss, epoch, step_in_epoch)
            if self.cfg.grad_clip:  # reuses the norm the check computed
                torch.nn.utils.clip_grads_with_norm_(grads, self.cfg.grad_clip, grad_norm)
            self.optimizer.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
            self.state.global_step += 1
            if self.first_step_at is None:
                self.first_step_at = time.time()
            self.method.on_step_end(self.state.global_step, self.total_steps)
            if self.online_probe is not None:
                self.online_probe.step(self._clean_features(x), y)
            self.train_loss.update(loss.detach())
            self.state.step_in_epoch = step_in_epoch
            if self._preemption_noticed():
                self._save_mid_epoch()
            yield TrainingIterationStats(
                self.state.global_step, loss_value, time.perf_counter() - start
            )
        # the epoch's steps are done (or the method's budget is spent)
        self.state.step_in_epoch, self.state.partial_loss = 0, None

    def _preemption_noticed(self) -> bool:
        """Whether to checkpoint now: the first preemption notice of this attempt, asked
        for on every rank at the same global steps."""
        every = self.cfg.checkpoint.preemption_check_steps
        if (
            self.preemption_notice is None
            or self.saved_on_notice
            or not every
            or self.state.global_step % every
        ):
            return False
        return self.preemption_notice()

    def _save_mid_epoch(self) -> None:
        """Every rank: reduce the epoch's loss so far into the state, then save (`save_now`
        gathers the ranks' RNG and reports the checkpoint)."""
        self.saved_on_notice = True
        totals = torch.stack([self.train_loss.mean_value, self.train_loss.weight]).double()
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        self.state.partial_loss = totals.tolist()
        if self.save_now is not None:
            self.save_now()

    def _check_finite(
        self, loss: torch.Tensor, epoch: int, step_in_epoch: int
    ) -> tuple[float, list[torch.Tensor], torch.Tensor]:
        """Stop every rank before the optimizer step when any rank's loss or gradients are
        NaN/Inf. DDP has already averaged the gradients, but a rank's own non-finite loss
        need not reach them, so the ranks agree through one small all-reduce of flags.
        Returns the loss value, the gradients and their total norm (one device sync)."""
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        grad_norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        )
        loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        bad, bad_grad = not math.isfinite(loss_value), not math.isfinite(norm_value)
        flags = torch.zeros(2 * self.world_size)
        flags[self.rank], flags[self.world_size + self.rank] = float(bad), float(bad_grad)
        if self.world_size > 1 and torch.distributed.is_initialized():
            flags = flags.to(self.device)
            torch.distributed.all_reduce(flags)
            flags = flags.cpu()
        if not flags.any():
            return loss_value, grads, grad_norm
        loss_ranks = [r for r in range(self.world_size) if flags[r]]
        grad_ranks = [r for r in range(self.world_size) if flags[self.world_size + r]]
        what, ranks = ("loss", loss_ranks) if loss_ranks else ("gradient", grad_ranks)
        value = f" {loss_value}" if what == "loss" and bad else " non-finite"
        raise NonFiniteLossError(
            f"{what} became{value} at epoch {epoch + 1}, step {step_in_epoch} "
            f"(global step {self.state.global_step + 1}) on rank "
            f"{', '.join(map(str, ranks))}; no rank stepped, the weights of the last "
            "checkpoint are untouched: lower optimizer.lr or set grad_clip, then resume"
        )

    def autocast(self):
        """bf16 autocast when `performance.amp` asks for it (a no-op context otherwise)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        )

    def _build_model(self) -> nn.Module:
        """The step module wrapped for DDP, then compiled if `performance.compile` is on."""
        model = self._wrap(self._step_module)
        perf = self.cfg.performance
        if perf.compile:
            model = torch.compile(model, mode=perf.compile_mode, backend=perf.compile_backend)
        return model

    def views(self, x: torch.Tensor, generator: torch.Generator):
        """The method's input: one augmented batch, or a tuple of `num_views` views."""
        if self.method.num_views > 1:
            multi_crop = getattr(self.method, "multi_crop", False)
            views = self.augment.views(x, generator, self.method.num_views, multi_crop)
            return tuple(self._layout(view) for view in views)
        return self._layout(self.augment(x, generator) if self.augment.active else x)

    def _online_probe(self) -> OnlineLinearProbe | None:
        """`eval.online_linear` on a self-supervised run with labeled data to score on."""
        scored = self._probe_scored_batches()
        wanted = self.cfg.eval.online_linear and self.cfg.method != "supervised"
        if not (wanted and self.splits.labeled and scored is not None):
            return None
        sample = torch.zeros(2, *self.splits.sample_shape, device=self.device)
        return OnlineLinearProbe(
            self._clean_features(sample).shape[1],
            self.splits.num_classes,
            self.cfg.eval.online_linear_lr,
            device=self.device,
            seed=self.cfg.seed + ONLINE_PROBE_SEED_OFFSET,
            world_size=self.world_size,
        )

    def _probe_scored_batches(self) -> TensorBatches | None:
        """The split the probes score on: test, else val (this rank's shard of it)."""
        return self.test_batches if self.test_batches is not None else self.val_batches

    @torch.no_grad()
    def _clean_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the probes read: the backbone in eval mode on clean inputs (no gradient, no
        BatchNorm update)."""
        self.method.eval()
        features = self.method.embed(self._layout(x))
        self.method.train()
        return features

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (`data.normalize`) and in the configured memory layout: what every
        input of the method, training view or evaluation batch, goes through."""
        x = self.normalize(x)
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers. DDP broadcasts buffers before each forward, but
        the last step's BatchNorm update (and BYOL's EMA of it) is rank-local; after this the
        ranks are identical at every epoch boundary, where checkpoints and evaluation happen."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.method.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def start_epoch(self) -> None:
        """Set the sampler's epoch, reseed the view generator, call the method's hook, and
        re-wrap the model for DDP if the hook changed which parameters train."""
        epoch, done = self.state.epoch, self.state.step_in_epoch
        self.train_batches.set_epoch(epoch, start_step=done)
        # Views depend only on (seed, epoch, rank): a resumed run draws the same ones.
        self.generator.manual_seed(self.cfg.seed * 1_000_003 + epoch * 1_009 + self.rank)
        if done:  # resumed mid-epoch: this rank's generator where it was, if it existed
            if self._resume_views is not None:
                self.generator.set_state(self._resume_views)
            else:  # another world size: a stream of its own for the rest of the epoch
                self.generator.manual_seed(
                    self.cfg.seed * 1_000_003 + epoch * 1_009 + self.rank + 7_919 * done
                )
            self._resume_views = None
            if self.rank == 0 and self.state.partial_loss:
                total, count = self.state.partial_loss
                self.train_loss.update(torch.tensor(total / count), weight=count)
        self.method.on_training_epoch_start(epoch)
        trainable = self._trainable_parameters()
        if trainable != self._trainable:
            # DDP registers the trainable parameters when it wraps; a frozen backbone would
            # otherwise leave its gradient buckets waiting forever (LFR's phases).
            self.model = self._build_model()
            self._trainable = trainable

    def _trainable_parameters(self) -> frozenset[int]:
        return frozenset(id(p) for p in self.method.parameters() if p.requires_grad)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch and evaluate on the validation split (no probes, no stopping
        decision: `epochs()` adds those)."""
        epoch = self.state.epoch
        self.start_epoch()
        start = time.perf_counter()
        steps = sum(1 for _ in self.iterate())
        self._sync_buffers()
        if self.online_probe is not None:
            self.online_probe.sync()
        self.method.on_training_epoch_end(epoch)
        elapsed = time.perf_counter() - start
        samples = steps * self.train_batches.batch_size * self.world_size
        metrics = {
            "epoch": epoch + 1,
            "step": self.state.global_step,
            "train_loss": float(self.train_loss.compute()),
            **self.method.epoch_metrics("train"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": samples / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "workers": self.world_size,
        }
        self.train_loss.reset()
        if self.launched_at is not None and self.first_step_at is not None:
            metrics["start_to_first_step_s"] = self.first_step_at - self.launched_at
            self.launched_at = None  # reported once per attempt
        metrics.update(self.evaluate("val"))
        if self.online_probe is not None:
            metrics["online_linear_acc"] = self.online_probe.accuracy(
                self._probe_scored_batches(), self._clean_features
            )
        self.state.epoch += 1
        return metrics

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
            every = self.cfg.eval.every
            probed = self.cfg.method != "supervised" and every and self.state.epoch % every == 0
            if probed:
                metrics.update(self.probe())
            self._track_best(metrics)
            last = self.state.epoch >= self.cfg.epochs or self.should_stop()
            if last:
                metrics.update(self.evaluate("test"))
                if self.cfg.method != "supervised" and not probed:
                    metrics.update(self.probe())
                self.state.finished = True
                self.method.on_training_end()
            self.state.history.append(dict(metrics))
            yield metrics
            if last:
                return

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, stage: str) -> dict[str, float]:
        """Loss and method metrics over the whole `stage` split, reduced across ranks."""
        batches = {"val": self.val_batches, "test": self.test_batches}[stage]
        if batches is None:
            return {}
        cycle = self.state.epoch + 1  # the epoch being evaluated, 1-based
        if stage == "val":
            self.method.on_validation_start(cycle)
        else:
            self.method.on_testing_start()
        self.method.eval()
        step = self.method.validation_step if stage == "val" else self.method.test_step
        # SSL losses need their views: seeded the same every epoch (per rank, so an SSL
        # val_loss depends on num_workers; documented). Predictions see clean inputs.
        self.eval_generator.manual_seed(self.cfg.seed + self.rank)
        for x, y in batches:
            with self.autocast():
                inputs = (
                    self.views(x, self.eval_generator)
                    if self.method.num_views > 1
                    else self._layout(x)
                )
                loss = step((inputs, y))["loss"]
            self.eval_loss.update(loss, weight=len(x))
        metrics = {f"{stage}_loss": float(self.eval_loss.compute())}
        metrics.update(self.method.epoch_metrics(stage))
        self.eval_loss.reset()
        self.method.train()
        if stage == "val":
            self.method.on_validation_end(cycle)
        else:
            self.method.on_testing_end()
        return metrics

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """kNN and linear-probe accuracy of the frozen backbone's features: fitted on the
        whole train split, scored on test (or val). Computed on rank 0 and broadcast, so
        the result does not depend on the number of workers."""
        from rayssl.evaluate import probe

        sets = self.splits.probe_sets(self.cfg.seed)
        metrics: dict[str, float] = {}
        if sets is not None and self.rank == 0:
            self.method.eval()
            metrics = probe(
                lambda x: self.method.embed(self._layout(x)),
                *(tuple(t.to(self.device) for t in pair) for pair in sets),
                k=self.cfg.eval.knn_k,
                linear=self.cfg.eval.linear_probe,
            )
            self.method.train()
        return self.broadcast(metrics)

    # ------------------------------------------------------------------ early stopping

    def _track_best(self, metrics: dict[str, float]) -> None:
        """Update the early-stopping record. A probe metric exists only on probe epochs
        (every `eval.every`): each report without improvement counts `eval.every` epochs
        towards the patience (the config checks that the patience is a multiple of it)."""
        es = self.cfg.early_stopping
        if es is None:
            return
        if es.monitor in PROBE_METRICS:
            if es.monitor not in metrics:
                return
            epochs_per_report = max(1, self.cfg.eval.every)
        elif es.monitor not in metrics:
            raise ValueError(
                f"early_stopping.monitor '{es.monitor}' is not reported; "
                f"choose one of: {', '.join(sorted(metrics))}"
            )
        else:
            epochs_per_report = 1
        value = metrics[es.monitor]
        best = self.state.best
        improved = best is None or (
            value < best - es.min_delta if es.mode == "min" else value > best + es.min_delta
        )
        if improved:
            self.state.best, self.state.best_epoch, self.state.bad_epochs = (
                value,
                metrics["epoch"],
                0,
            )
        else:
            self.state.bad_epochs += epochs_per_report

    def is_over(self) -> bool:
        """A restored run that has already ended: its schedule, an early stop or the
        method's own stop. Restarts and resumes of such a run train nothing."""
        return bool(self.state.history) and (
            self.should_stop() or self.state.epoch >= self.cfg.epochs
        )

    def should_stop(self) -> bool:
        es = self.cfg.early_stopping
        stop_early = es is not None and self.state.bad_epochs >= es.patience
        return stop_early or self.method.should_stop()

    # ------------------------------------------------------------------ state

    def rank_state(self) -> dict[str, Any]:
        """This rank's random state: its RNGs and the view generator (a mid-epoch
        checkpoint resumes the views where they were). The caller gathers one per rank."""
        return {**capture_rng(), "views": self.generator.get_state()}

    def state_dict(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Every piece of training state. `rng_states` holds one entry per rank (the caller
        gathers them); without it, this process's RNG state is stored for rank 0."""
        return {
            "format": 1,
            "method": type(self.method).__name__,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "loop": asdict(self.state),
            "sampler_epoch": self.train_batches.epoch,
            "method_extra": self.method.extra_state(),
            "rng": rng_states if rng_states is not None else [self.rank_state()],
            "world_size": self.world_size,
            "input": self.input_record,
            **({"online_probe": self.online_probe.state_dict()} if self.online_probe else {}),
        }

    def adopt_hyperparameters(self, saved_config: dict[str, Any]) -> None:
        """After loading a state trained under `saved_config` (PBT copying another trial's
        checkpoint): switch to this config's learning rate and weight decay, keeping the
        schedule's position (every LR the scheduler tracks is rescaled by new / old lr)."""
        old, new = saved_config["optimizer"], self.cfg.optimizer
        ratio = new.lr / old["lr"]
        for group in self.optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= ratio
            if group.get("weight_decay") == old["weight_decay"]:
                group["weight_decay"] = new.weight_decay
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [lr * ratio for lr in self.lr_scheduler.base_lrs]
        # BYOL's momentum needs nothing here: it is recomputed from this config every step.

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; call on every rank before training."""
        # Extra state first: it may re-apply LFR's target selection, which shapes the model.
        self.method.load_extra_state(state["method_extra"])
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.state = LoopState(**state["loop"])
        if self.online_probe is not None and "online_probe" in state:
            self.online_probe.load_state_dict(state["online_probe"])
        self.train_batches.set_epoch(state["sampler_epoch"], self.state.step_in_epoch)
        rng = state["rng"]
        if len(rng) == self.world_size:
            restore_rng(rng[self.rank])
            views = rng[self.rank].get("views")
            self._resume_views = views if self.state.step_in_epoch else None
            return
        from rayssl.state import seed_everything

        # Another number of workers (an elastic resize): per-rank streams derived afresh from
        # (seed, epoch, step, rank, world size), so a resized run is reproducible, though not
        # bitwise equal to one that kept its size.
        old = len(rng)
        seed_everything(
            self.cfg.seed * 1_000_003
            + self.state.global_step * 1_009
            + self.rank * 31
            + self.world_size
        )
        self.state.resizes.append(
            {
                "epoch": self.state.epoch,
                "step": self.state.global_step,
                "from": old,
                "to": self.world_size,
            }
        )
        if self.rank == 0:
            print(
                f"[rayssl] resized from {old} to {self.world_size} workers at epoch "
                f"{self.state.epoch + 1}, step {self.state.global_step}: the global batch, the "
                "schedules and the counters carry on; per-rank random streams are derived "
                "afresh for the new size (reproducible, not bitwise equal to a fixed size)",
                flush=True,
            )


def build_loop(
    cfg: TrainConfig,
    splits: Splits,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    train_shard: Any = None,
) -> Loop:
    """A `Loop` with the same initial weights on every rank (Ray Train workers, local mode,
    and in-process Tune trials all build theirs here)."""
    from rayssl.build import build_method
    from rayssl.state import seed_everything

    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    def broadcast(obj: Any) -> Any:
        """Rank 0's `obj` on every rank (LFR's target choice, probe metrics)."""
        if world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    seed_everything(cfg.seed)  # identical initial weights on every rank
    method = build_method(
        cfg,
        splits.sample_shape,
        splits.num_classes,
        selection_sample=splits.train[0],
        broadcast=broadcast,
        pretrained=splits.pretrained,
    )
    if cfg.model.sync_batchnorm and world_size > 1:
        from rayssl.batchnorm import convert_sync_batchnorm

        method = convert_sync_batchnorm(method, device)  # before DDP wraps it
    seed_everything(cfg.seed + 7919 * (rank + 1))  # then per-rank randomness (e.g. dropout)
    return Loop(
        method,
        splits,
        cfg,
        device=device,
        rank=rank,
        world_size=world_size,
        wrap_model=wrap_model,
        broadcast=broadcast,
        train_shard=train_shard,
    )
