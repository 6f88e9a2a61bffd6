"""One optimizer step: forward under autocast, backward, a cross-rank check that the loss and
gradients are finite, clipping, the weight-decay schedule, the optimizer and the LR
schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rayssl import distributed
from rayssl.config import TrainConfig
from rayssl.methods import Method
from rayssl.optim import groups
from rayssl.optim.groups import hold_unscheduled_lr
from rayssl.optim.schedules import WeightDecaySchedule, schedule_of_this_run


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or Inf on some rank; every rank stops before its
    optimizer step instead of corrupting the weights."""


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast when `performance.amp` asks for it (a no-op context otherwise)."""
    bf16 = cfg.performance.amp == "bf16"
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if bf16 else torch.float32, enabled=bf16
    )


class _TrainingStep(nn.Module):
    """Routes the method's training step through `forward`, so DDP sees it and syncs grads."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch)


class Step:
    """The model as DDP (and `torch.compile`) see it, and what one step does with it."""

    def __init__(
        self,
        method: Method,
        cfg: TrainConfig,
        *,
        device: torch.device,
        rank: int,
        world_size: int,
        wrap_model: Callable[[nn.Module], nn.Module] | None,
        total_steps: int,
        steps_per_epoch: int,
    ):
        self.method, self.cfg, self.device = method, cfg, device
        self.rank, self.world_size = rank, world_size
        self._module = _TrainingStep(method)
        self._wrap = wrap_model or (lambda module: module)
        self.model = self._build_model()
        self._trainable = self._trainable_parameters()
        self.optimizer, self.lr_scheduler = method.configure_optimizers(
            total_steps, steps_per_epoch
        )
        opt = cfg.optimizer
        self.weight_decay = (
            WeightDecaySchedule(self.optimizer, opt.weight_decay, opt.weight_decay_end, total_steps)
            if opt.weight_decay_end is not None
            else None
        )

    def __call__(self, inputs: Any, y: torch.Tensor, where: tuple[int, int, int]) -> tuple:
        """One optimizer step on (inputs, y); `where` = (epoch, step in epoch, global step)
        names the step in an error. Returns the loss tensor (detached) and its value."""
        with autocast(self.cfg, self.device):
            loss = self.model((inputs, y))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.on_after_backward()
        loss_value, grads, grad_norm = self._check_finite(loss, where)
        if self.cfg.grad_clip:  # reuses the norm the check computed
            torch.nn.utils.clip_grads_with_norm_(grads, self.cfg.grad_clip, grad_norm)
        if self.weight_decay is not None:
            self.weight_decay.set(where[2] - 1)
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
            hold_unscheduled_lr(self.optimizer)
        return loss.detach(), loss_value

    def _check_finite(
        self, loss: torch.Tensor, where: tuple[int, int, int]
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
        if distributed.active():
            flags = distributed.all_reduce_sum(flags.to(self.device)).cpu()
        if not flags.any():
            return loss_value, grads, grad_norm
        loss_ranks = [r for r in range(self.world_size) if flags[r]]
        grad_ranks = [r for r in range(self.world_size) if flags[self.world_size + r]]
        what, ranks = ("loss", loss_ranks) if loss_ranks else ("gradient", grad_ranks)
        value = f" {loss_value}" if what == "loss" and bad else " non-finite"
        epoch, step_in_epoch, global_step = where
        raise NonFiniteLossError(
            f"{what} became{value} at epoch {epoch + 1}, step {step_in_epoch} "
            f"(global step {global_step}) on rank {', '.join(map(str, ranks))}; no rank "
            "stepped, the weights of the last checkpoint are untouched: lower optimizer.lr "
            "or set grad_clip, then resume"
        )

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and the LR scheduler's state (checkpoint keys `optimizer`,
        `lr_scheduler`); the weight-decay schedule keeps its base in the optimizer's."""
        scheduler = self.lr_scheduler
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What `state_dict` saved (an older layout upgraded by the method); a schedule keeps
        the length this config gives it (`schedule_of_this_run`)."""
        self.optimizer.load_state_dict(self.method.upgrade_optimizer_state(state["optimizer"]))
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(
                schedule_of_this_run(self.lr_scheduler.state_dict(), state["lr_scheduler"])
            )

    def adopt(self, old: dict[str, Any]) -> None:
        """After loading a state trained under optimizer settings `old` (PBT copying another
        trial's checkpoint): this config's learning rate and weight decay, the schedule's
        position kept (every lr the scheduler tracks is rescaled by new / old lr)."""
        new = self.cfg.optimizer
        ratio = new.lr / old["lr"]
        groups.rescale(self.optimizer, ratio, old["weight_decay"], new.weight_decay)
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [lr * ratio for lr in self.lr_scheduler.base_lrs]

    def rewrap_if_trainable_changed(self) -> None:
        """DDP registers the trainable parameters when it wraps; a method that freezes or
        thaws parameters (LFR's phases) would otherwise leave gradient buckets waiting
        forever."""
        trainable = self._trainable_parameters()
        if trainable != self._trainable:
            self.model = self._build_model()
            self._trainable = trainable

    def _build_model(self) -> nn.Module:
        """The step module wrapped for DDP, then compiled if `performance.compile` is on."""
        model = self._wrap(self._module)
        perf = self.cfg.performance
        if perf.compile:
            model = torch.compile(model, mode=perf.compile_mode, backend=perf.compile_backend)
        return model

    def _trainable_parameters(self) -> frozenset[int]:
        return frozenset(id(p) for p in self.method.parameters() if p.requires_grad)
