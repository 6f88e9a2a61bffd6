"""The small contract between a method (its math) and the per-worker loop (everything else)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Method(nn.Module):
    """A trainable method. The loop calls exactly these; every hook has a harmless default.

    Subclasses set `learning_rate`, `optimizer` (a class), `optimizer_kwargs`, and optionally
    `lr_scheduler` (a class or factory, stepped after every optimizer step) and
    `lr_scheduler_kwargs`. Methods never import Ray.
    """

    learning_rate: float = 1e-3
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam
    optimizer_kwargs: dict[str, Any]
    lr_scheduler: Callable[..., Any] | None = None
    lr_scheduler_kwargs: dict[str, Any]

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss (key "loss", with gradient) for one training batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss (key "loss") for one evaluation batch; updates the stage's metrics."""
        raise NotImplementedError

    def test_step(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.validation_step(batch)

    def param_groups(self) -> list[dict[str, Any]]:
        """What the optimizer steps: every parameter that requires grad, by default."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

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
        if self.lr_scheduler is None:
            return optimizer, None
        kwargs = dict(self.lr_scheduler_kwargs or {})
        params = inspect.signature(self.lr_scheduler).parameters
        for name, value in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
            if name in params:
                kwargs.setdefault(name, value)
        return optimizer, self.lr_scheduler(optimizer, **kwargs)

    num_views: int = 1  # >1: the loop passes a tuple of that many augmented views as x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone features (B, F) that kNN and linear-probe evaluation use."""
        return self.backbone(x).flatten(1)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch `epoch` (0-based) on every rank."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (1-based, global across epochs and resumes)."""

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
