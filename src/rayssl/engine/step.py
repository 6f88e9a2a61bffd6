"""One optimizer step: forward under autocast, backward (scaled, with fp16), the cross-rank
non-finite guard (`guard.py`, on the device), clipping, the weight-decay schedule, the
optimizer (which skips on the device when the guard or the scaler says so) and the LR
schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import get_total_norm

from rayssl.config import TrainConfig
from rayssl.engine.guard import FiniteGuard
from rayssl.methods import Method
from rayssl.optim import groups
from rayssl.optim.groups import hold_unscheduled_lr
from rayssl.optim.schedules import WeightDecaySchedule, schedule_of_this_run
from rayssl.optim.setup import load_optimizer_state


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 or fp16 autocast when `performance.amp` asks for it (else a no-op context)."""
    amp = cfg.performance.amp
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


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
        self.steps_per_epoch = steps_per_epoch
        self.guard = FiniteGuard(device, rank, world_size)
        self.skips_on_device = getattr(self.optimizer, "_step_supports_amp_scaling", False)
        # fp16 autocast needs a gradient scaler (bf16 does not: its range is float32's)
        fp16 = cfg.performance.amp == "fp16"
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None
        self.skipped = torch.zeros((), device=device)  # fp16 steps skipped on overflow
        opt = cfg.optimizer
        self.weight_decay = (
            WeightDecaySchedule(self.optimizer, opt.weight_decay, opt.weight_decay_end, total_steps)
            if opt.weight_decay_end is not None
            else None
        )

    def __call__(self, inputs: Any, y: torch.Tensor, step: int) -> torch.Tensor:
        """One optimizer step on (inputs, y) at global step `step` (1-based); returns the
        loss, detached, on the device. Nothing is read back to the host unless the optimizer
        cannot skip a step on the device (then the guard reads its flag every step)."""
        with autocast(self.cfg, self.device):
            loss = self.model((inputs, y))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        self.method.on_after_backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the norm, clipping and the guard see true grads
        params = [p for p in self.method.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        norm = get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        # fp16: a non-finite gradient is the scaler's overflow, a skipped step, not an error
        self.guard.observe(loss, norm if self.scaler is None else None, step)
        if self.cfg.grad_clip and self.cfg.grad_clip_mode == "per_parameter":
            clip_each(grads, self.cfg.grad_clip)
        elif self.cfg.grad_clip:  # reuses the norm the guard saw; takes the parameters
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, norm)
        if self.weight_decay is not None:
            self.weight_decay.set(step - 1)
        self._optimizer_step(norm)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
            hold_unscheduled_lr(self.optimizer)
        return loss.detach()

    def _optimizer_step(self, norm: torch.Tensor) -> None:
        """Step, or skip on every rank once the guard has flagged a step (and, with fp16, on
        an overflow, which the scaler then answers by lowering its scale). The optimizers
        rayssl builds (fused Adam / AdamW / SGD, and LARS) skip on the device: they take the
        skip as a tensor, `found_inf`, the protocol torch's GradScaler uses with its fused
        optimizers (`_step_supports_amp_scaling`); another optimizer makes the guard read its
        flag back every step instead."""
        skip = self.guard.failed
        if self.scaler is not None:
            overflow = (~torch.isfinite(norm)).float()  # DDP's grads: equal on every rank
            self.skipped += overflow
            skip = torch.clamp(skip + overflow, max=1.0)
        if self.skips_on_device:
            self.optimizer.grad_scale, self.optimizer.found_inf = None, skip
            self.optimizer.step()
        else:
            self.guard.raise_if_failed(self.steps_per_epoch)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)  # reads the overflow back itself
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and the LR scheduler's state (checkpoint keys `optimizer`,
        `lr_scheduler`); the weight-decay schedule keeps its base in the optimizer's."""
        scheduler = self.lr_scheduler
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler else None,
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What `state_dict` saved (an older layout upgraded by the method); a schedule keeps
        the length this config gives it (`schedule_of_this_run`)."""
        load_optimizer_state(
            self.optimizer, self.method.upgrade_optimizer_state(state["optimizer"])
        )
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
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


def clip_each(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient whose own norm exceeds `max_norm` down to it (DINO's and iBOT's
    `clip_gradients`: coefficient max_norm / (norm + 1e-6), applied where below 1). torch's
    clipping takes one norm over all the tensors; this is one per tensor, in two foreach
    kernels (torch's own clipping uses the same `_foreach_norm`), with no read back."""
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
