"""The small contract between a method (its math) and the per-worker loop (everything else)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.optim.groups import hold_unscheduled_lr, note_unscheduled_lr
from rayssl.optim.setup import DEFAULT_LEARNING_RATE, DEFAULT_OPTIMIZER


class Method(nn.Module):
    """A trainable method. The loop calls exactly these; every hook has a harmless default.

    The optimizer set-up is the same five arguments for every method, taken one way: the
    constructor passes them to `take_setup` (`learning_rate`, `optimizer` (a class),
    `optimizer_kwargs`, `lr_scheduler` (a class or factory, stepped after every optimizer
    step), `lr_scheduler_kwargs`; `rayssl.optim.setup` builds them from a config). Methods
    never import Ray.
    """

    learning_rate: float = DEFAULT_LEARNING_RATE
    optimizer: type[torch.optim.Optimizer] = DEFAULT_OPTIMIZER
    optimizer_kwargs: dict[str, Any] = {}
    lr_scheduler: Callable[..., Any] | None = None
    lr_scheduler_kwargs: dict[str, Any] = {}

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss (key "loss", with gradient) for one training batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss (key "loss") for one evaluation batch; updates the stage's metrics."""
        raise NotImplementedError

    def test_step(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.validation_step(batch)

    def param_groups(self) -> list[dict[str, Any]]:
        """What the optimizer steps: every parameter that requires grad, by default. A group
        wrapped in `rayssl.optim.groups.unscheduled` trains at its lr throughout, outside the
        LR schedule."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def upgrade_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimizer state saved by an older rayssl, laid out as `param_groups()` lays
        the parameters out now (a method that split its groups since); unchanged here."""
        return state

    def configure_optimizers(
        self, total_steps: int, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, Any | None]:
        """Build the optimizer over `param_groups()` and the per-step LR scheduler, if any.

        `total_steps` / `steps_per_epoch` are passed to the scheduler when it accepts them,
        so schedules are defined over optimizer steps, not epochs.
        """
        optimizer = self.optimizer(
            self.param_groups(), lr=self.learning_rate, **(self.optimizer_kwargs or {})
        )
        note_unscheduled_lr(optimizer)
        if self.lr_scheduler is None:
            return optimizer, None
        kwargs = dict(self.lr_scheduler_kwargs or {})
        params = inspect.signature(self.lr_scheduler).parameters
        for name, value in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
            if name in params:
                kwargs.setdefault(name, value)
        scheduler = self.lr_scheduler(optimizer, **kwargs)
        hold_unscheduled_lr(optimizer)  # a scheduler sets its first lr on every group
        return optimizer, scheduler

    def take_setup(
        self,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        optimizer: type[torch.optim.Optimizer] | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Take the optimizer set-up (the one convention: every method's constructor calls
        this, with its own arguments or its `**setup`); an unknown keyword is a TypeError."""
        self.learning_rate = learning_rate
        self.optimizer = optimizer or DEFAULT_OPTIMIZER
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_kwargs = dict(lr_scheduler_kwargs or {})

    def prepare(self, sample: torch.Tensor, broadcast: Callable[[Any], Any] | None) -> None:
        """Once, when a new run builds the method: `sample` is a batch of training inputs,
        the same on every rank; `broadcast(obj)` hands rank 0's `obj` to every rank."""

    num_views: int = 1  # >1: the loop passes a tuple of that many augmented views as x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone features (B, F) that kNN and linear-probe evaluation use."""
        return self.backbone(x).flatten(1)

    # Lifecycle hooks. The loop calls each on every rank, in this order:
    #   on_training_start                      once, before the first epoch of a new run
    #   on_training_epoch_start(epoch)         before each epoch (0-based)
    #   on_after_backward()                    after each backward, before the optimizer
    #   on_step_end(step, total_steps)         after each optimizer step (1-based, global)
    #   on_training_epoch_end(epoch)           after the epoch's last step
    #   on_validation_start / _end(cycle)      around validation (cycle: the 1-based epoch)
    #   on_testing_start / on_testing_end      around the test split, after the last epoch
    #   on_training_end                        once, when the run reaches its end
    # A resumed run does not repeat on_training_start. Keep them cheap and rank-symmetric:
    # a hook that talks to other ranks must do so on every rank.

    def on_training_start(self) -> None:
        """Before the first epoch of a new run."""

    def on_training_epoch_start(self, epoch: int) -> None:
        """Before epoch `epoch` (0-based)."""

    def on_after_backward(self) -> None:
        """After the backward pass (gradients already averaged across ranks), before the
        finite check, clipping and the optimizer step: the place to drop or change
        gradients (DINO freezes its last layer this way)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step `step` (1-based, global across epochs and resumes)."""

    def on_training_epoch_end(self, epoch: int) -> None:
        """After the last optimizer step of epoch `epoch` (0-based), before evaluation."""

    def on_validation_start(self, validation_cycle: int) -> None:
        """Before the validation pass that follows epoch `validation_cycle` (1-based)."""

    def on_validation_end(self, validation_cycle: int) -> None:
        """After that validation pass (its metrics are computed)."""

    def on_testing_start(self) -> None:
        """Before the test-split evaluation at the end of the run."""

    def on_testing_end(self) -> None:
        """After the test-split evaluation."""

    def on_training_end(self) -> None:
        """When the run has reached its end (schedule, early stop or `should_stop`)."""

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """Metrics accumulated over the stage ("train", "val", "test"), then reset."""
        return {}

    def should_stop(self) -> bool:
        """True when the method has reached its own end (e.g. a step budget)."""
        return False

    def extra_state(self) -> dict[str, Any]:
        """Counters that are not tensors in the state dict (checkpointed)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""


@dataclass(frozen=True)
class Parts:
    """What a built-in method's builder gets: the run's config (its own section is
    `section`), the backbone already built (and loaded from `backbone.init_from`), its
    output width, the shape of one sample, the number of classes, the optimizer set-up
    (`rayssl.optim.setup.optimizer_setup`) and a factory of fresh backbones (LFR's random
    targets)."""

    cfg: Any  # a validated TrainConfig
    backbone: nn.Module
    features: int
    sample_shape: tuple[int, ...]
    num_classes: int
    setup: dict[str, Any]
    new_backbone: Callable[[], nn.Module]

    @property
    def section(self) -> Any:
        return getattr(self.cfg, self.cfg.method)

    def options_for(self, cls: type) -> dict[str, Any]:
        """The section's values that `cls`'s constructor takes by the same name (a builder
        passes them on unchanged; the section's other keys shape the heads)."""
        params = inspect.signature(cls).parameters
        return {k: v for k, v in self.section.model_dump().items() if k in params}


@dataclass(frozen=True)
class Builtin:
    """A built-in method as its module registers it (`BUILTIN`, listed once in
    `methods/registry.py`): the config's `method:` name (also its section's key), the class,
    the config section, the builder, and one line for the method list."""

    name: str
    cls: type[Method]
    section: type[MethodConfig]
    build: Callable[[Parts], Method]
    summary: str
