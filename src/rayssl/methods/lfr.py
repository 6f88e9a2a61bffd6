"""Learning From Randomness (Sui et al. 2024): predict K frozen random projections."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.func import functional_call

from rayssl.config.base import MethodConfig
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.methods.heads import MLPHead
from rayssl.methods.losses import BatchWiseBarlowTwinsLoss


class RepeatedModuleList(nn.ModuleList):
    """`size` independently initialised instances of `cls(*args, **kwargs)`."""

    def __init__(self, size: int, cls: type[nn.Module], *args: Any, **kwargs: Any):
        assert isinstance(cls, type) and issubclass(cls, nn.Module), (
            f"{cls!r} is not a subclass of torch.nn.Module"
        )
        super().__init__([cls(*args, **kwargs) for _ in range(size)])


def select_targets_dpp(features: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP of a determinantal point process (Chen et al. 2018, fast greedy).

    features: (K, D), one row per projector (its outputs on the sample batch, flattened and
    L2-normalised); the kernel is their Gram matrix. Returns k indices of a diverse subset,
    in selection order. Pure float64 arithmetic on identical inputs: identical on every rank.
    """
    kernel = features.double() @ features.double().T
    n = kernel.shape[0]
    cis = torch.zeros(k, n, dtype=torch.float64, device=features.device)
    gains = torch.diagonal(kernel).clone()
    selected = [int(torch.argmax(gains))]
    for step in range(1, k):
        j = selected[-1]
        e = (kernel[j] - cis[: step - 1].T @ cis[: step - 1, j]) / gains[j].clamp_min(1e-12).sqrt()
        cis[step - 1] = e
        gains = gains - e.pow(2)
        gains[selected] = -float("inf")
        selected.append(int(torch.argmax(gains)))
    return selected


class RandomProjector(nn.Sequential):
    """A frozen LFR target: `encoder()` (a randomly initialised network; default: flatten)
    followed by a random MLP `in_features -> hidden -> out_features`."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        encoder: Callable[[], nn.Module] | None = None,
    ):
        super().__init__(
            encoder() if encoder is not None else nn.Flatten(),
            MLPHead([in_features, hidden, out_features], batch_norm=False),
        )


class _StackedHeads(nn.Module):
    """Evaluates K modules of one architecture in a single vmapped call (no Python loop).

    Parameters are stacked on every call (torch.stack is differentiable, so each head's own
    parameters get their gradients). Buffers are stacked too, which is exact in eval mode
    (BatchNorm reads its running statistics); a head with buffers in training mode would
    update them in place, which vmap cannot do, so that case runs as a Python loop.

    `loop`: None (default) vmaps on accelerators and loops on CPU, where a single thread is
    compute-bound and vmap's batched kernels (grouped convolution, bmm) measured slower than
    one GEMM per head (benchmarks/throughput.py); True / False force either.
    """

    def __init__(self, modules: nn.ModuleList, loop: bool | None = None):
        super().__init__()
        self.heads = modules
        self.loop = loop
        self._base = copy.deepcopy(modules[0]).to("meta")
        self._has_buffers = any(True for _ in modules[0].buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) shared input -> (K, B, D)."""
        training = self.heads[0].training
        loop = x.device.type == "cpu" if self.loop is None else self.loop
        if loop or (self._has_buffers and training):
            return torch.stack([h(x) for h in self.heads])
        self._base.train(training)
        tensors = self._stacked()

        def one(t: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self._base, t, (x,))

        return torch.vmap(one, randomness="different")(tensors)

    def _stacked(self) -> dict[str, torch.Tensor]:
        first = self.heads[0]
        params = dict(first.named_parameters())
        names = [*params, *(n for n, _ in first.named_buffers())]
        return {
            n: torch.stack(
                [h.get_parameter(n) if n in params else h.get_buffer(n) for h in self.heads]
            )
            for n in names
        }


class LearnFromRandomnessModel(Method):
    """Backbone + K trainable predictors regress K frozen random projectors of the input.

    Phases: in epoch e the backbone trains iff `e % (predictor_training_epochs + 1) == 0`;
    otherwise only predictors train and the backbone runs frozen (requires_grad off; the
    loop re-wraps DDP when the trainable set changes, so no unused-parameter errors).
    `max_backbone_training_steps` ends training after that many backbone-training steps.
    Batches are `((x, x_target), y)`: the backbone sees one view, the projectors another
    (the same tensor when no augmentation is configured, as in the paper); y is ignored.
    """

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        projectors: nn.ModuleList,
        predictors: nn.ModuleList,
        loss_fn: nn.Module | None = None,
        num_targets: int | None = None,
        adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        flatten: bool = False,
        predictor_training_epochs: int | None = None,
        max_backbone_training_steps: int | None = None,
        selection_batch_size: int = 128,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_scheduler: Any = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if len(projectors) != len(predictors):
            raise ValueError(f"{len(projectors)} projectors but {len(predictors)} predictors")
        if num_targets is not None and num_targets > len(projectors):
            raise ValueError(
                f"num_targets ({num_targets}) > number of projectors ({len(projectors)})"
            )
        self.backbone = backbone
        self.projectors = projectors
        self.predictors = predictors
        for p in self.projectors.parameters():
            p.requires_grad_(False)  # random and frozen: never in the optimizer, never changed
        self.loss_fn = loss_fn or BatchWiseBarlowTwinsLoss()
        self.num_targets = num_targets if num_targets and num_targets > 0 else None
        self.adapter = adapter
        self.weight_decay = weight_decay
        self.flatten = flatten
        # None, 0 or negative: the backbone trains every epoch.
        self.predictor_training_epochs = max(0, predictor_training_epochs or 0)
        self.max_backbone_training_steps = (
            max_backbone_training_steps
            if max_backbone_training_steps and max_backbone_training_steps > 0
            else None
        )
        self.selection_batch_size = selection_batch_size
        self.take_setup(
            learning_rate,
            optimizer,
            {"weight_decay": weight_decay, **(optimizer_kwargs or {})},
            lr_scheduler,
            lr_scheduler_kwargs,
        )
        self.backbone_training_steps = 0
        self.backbone_trains = True
        self.selected: list[int] | None = None
        self._build_stacks()

    def _build_stacks(self) -> None:
        # The stacks only view the ModuleLists: kept out of _modules, so out of state_dict.
        object.__setattr__(self, "_projector_stack", _StackedHeads(self.projectors))
        object.__setattr__(self, "_predictor_stack", _StackedHeads(self.predictors))

    @torch.no_grad()
    def select_targets(self, sample: torch.Tensor, broadcast: Callable[[Any], Any] | None = None):
        """Keep the `num_targets` most diverse projectors (fast greedy DPP on `sample`) and
        their predictors. `broadcast` makes rank 0's choice everyone's choice."""
        if self.num_targets is None or self.num_targets >= len(self.projectors):
            return
        self.projectors.eval()
        sample = sample[: self.selection_batch_size].to(next(self.parameters()).device)
        outputs = torch.stack([p(sample).flatten() for p in self.projectors])
        outputs = nn.functional.normalize(outputs - outputs.mean(1, keepdim=True), dim=1)
        chosen = select_targets_dpp(outputs, self.num_targets)
        if broadcast is not None:
            chosen = broadcast(chosen)
        self.apply_selection(chosen)

    def prepare(self, sample: torch.Tensor, broadcast: Callable[[Any], Any] | None) -> None:
        self.select_targets(sample, broadcast)

    def apply_selection(self, chosen: list[int]) -> None:
        self.selected = list(chosen)
        self.projectors = nn.ModuleList([self.projectors[i] for i in chosen])
        self.predictors = nn.ModuleList([self.predictors[i] for i in chosen])
        self._build_stacks()

    def train(self, mode: bool = True) -> LearnFromRandomnessModel:
        super().train(mode)
        self.projectors.eval()  # frozen targets: BatchNorm (if any) never updates
        if not self.backbone_trains:
            self.backbone.eval()  # frozen phase: BatchNorm statistics stay as they are
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (after adapter / flatten): what evaluation probes."""
        features = self.backbone(x)
        if self.adapter is not None:
            features = self.adapter(features)
        return features.flatten(1) if self.flatten or features.dim() > 2 else features

    def _loss(self, views: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, x_target = views
        if self.backbone_trains:
            features = self(x)
        else:
            with torch.no_grad():
                features = self(x)
        with torch.no_grad():
            targets = self._projector_stack(x_target)  # (K, B, D)
        predictions = self._predictor_stack(features)  # (K, B, D)
        return self.loss_fn(predictions, targets)

    def training_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def param_groups(self):
        # The backbone stays in the optimizer in predictor-only phases: its grads are then
        # None and the optimizer skips it, but its optimizer state survives for the next phase.
        return [{"params": [*self.backbone.parameters(), *self.predictors.parameters()]}]

    def on_training_epoch_start(self, epoch: int) -> None:
        self.backbone_trains = epoch % (self.predictor_training_epochs + 1) == 0
        self.backbone.requires_grad_(self.backbone_trains)
        self.train(self.training)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.backbone_trains:
            self.backbone_training_steps += 1

    def should_stop(self) -> bool:
        limit = self.max_backbone_training_steps
        return limit is not None and self.backbone_training_steps >= limit

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """The epoch's phase: 1.0 when the backbone trained, 0.0 when only predictors did."""
        return {"backbone_trains": float(self.backbone_trains)} if stage == "train" else {}

    def extra_state(self):
        return {
            "backbone_training_steps": self.backbone_training_steps,
            "backbone_trains": self.backbone_trains,
            "selected": self.selected,
        }

    def load_extra_state(self, state):
        """Restore the counters and the saved target selection (applied if this model still
        holds all its projectors, e.g. one rebuilt from a config to load a checkpoint)."""
        self.backbone_training_steps = state["backbone_training_steps"]
        self.backbone_trains = state["backbone_trains"]
        selected = state.get("selected")
        if selected is not None and self.selected is None and len(self.projectors) > len(selected):
            self.apply_selection(selected)
        self.selected = None if selected is None else list(selected)


class LFRConfig(MethodConfig):
    num_projectors: int = Field(16, ge=1, description="random target networks drawn")
    num_targets: int | None = Field(None, ge=1, description="DPP-selected subset; null: all")
    proj_dim: int = Field(64, ge=1, description="output width of each random projector")
    projector: Literal["backbone", "mlp"] = Field(
        "backbone", description="random target nets: a fresh copy of the backbone, or an MLP"
    )
    proj_hidden: int = Field(256, ge=1, description="hidden width of the projectors' MLP")
    pred_hidden: int = Field(256, ge=1, description="predictors' hidden width")
    predictor_training_epochs: int = Field(
        0, description="frozen-backbone epochs after each backbone epoch; 0 or less: none"
    )
    max_backbone_training_steps: int | None = Field(
        None, ge=1, description="end the run after this many backbone steps; null: no limit"
    )
    selection_batch_size: int = Field(
        128, ge=2, description="samples the DPP target selection looks at"
    )

    @model_validator(mode="after")
    def _targets_fit(self) -> LFRConfig:
        if self.num_targets is not None and self.num_targets > self.num_projectors:
            raise ValueError(
                f"lfr.num_targets ({self.num_targets}) cannot exceed lfr.num_projectors "
                f"({self.num_projectors})"
            )
        return self


def build(parts: Parts) -> LearnFromRandomnessModel:
    """Random targets (fresh backbones, or MLPs on the flattened input) and predictors."""
    c, features = parts.section, parts.features
    if c.projector == "backbone":
        encoder, in_dim = parts.new_backbone, features
    else:
        encoder, in_dim = None, math.prod(parts.sample_shape)
    return LearnFromRandomnessModel(
        parts.backbone,
        projectors=RepeatedModuleList(
            c.num_projectors, RandomProjector, in_dim, c.proj_hidden, c.proj_dim, encoder
        ),
        predictors=RepeatedModuleList(
            c.num_projectors, MLPHead, [features, c.pred_hidden, c.proj_dim], batch_norm=False
        ),
        num_targets=c.num_targets,
        predictor_training_epochs=c.predictor_training_epochs,
        max_backbone_training_steps=c.max_backbone_training_steps,
        selection_batch_size=c.selection_batch_size,
        **parts.setup,
    )


BUILTIN = Builtin(
    "lfr", LearnFromRandomnessModel, LFRConfig, build, "Learning From Randomness (Sui et al. 2024)"
)
