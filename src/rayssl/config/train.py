"""One training run: the top-level config and the checks that span its sections."""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

from pydantic import (
    Field,
    create_model,
    field_validator,
    model_validator,
)

from rayssl.config.base import Strict, check_run_name
from rayssl.config.data import DataConfig
from rayssl.config.model import ModelConfig, NetConfig, check_kwargs, import_factory
from rayssl.config.run import (
    PROBE_METRICS,
    CheckpointConfig,
    EarlyStoppingConfig,
    EvalConfig,
    LRSchedulerConfig,
    OptimizerConfig,
    PerformanceConfig,
    TrackingConfig,
    redact_uri,
)
from rayssl.methods.registry import BUILTINS

# the built-in methods, from their one registry (rayssl/methods/registry.py)
BUILTIN_METHODS = tuple(BUILTINS)
# what rayssl passes to an import-path method's constructor when it names them
METHOD_INFERRED = (
    "features",
    "num_classes",
    "input_shape",
    "learning_rate",
    "optimizer",
    "optimizer_kwargs",
    "lr_scheduler",
    "lr_scheduler_kwargs",
)


class RunConfig(Strict):
    """Every section of a run but the methods' own (`TrainConfig` adds those)."""

    method: str = Field(
        "supervised",
        description=f"{' | '.join(BUILTIN_METHODS)}, or a Method subclass 'package.module:Class'",
    )
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of an import-path method's class"
    )
    name: str | None = Field(None, description="run name; default: the config file's stem")
    # numpy's global generator takes seeds below 2**32; a larger one would silently
    # repeat seed mod 2**32, and the derived streams (rayssl.seeds) must stay in int64
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seeds weights, data order, views and probes"
    )
    epochs: int = Field(10, ge=1, description="passes over the training split")
    num_workers: int | tuple[int, int] = Field(
        2,
        description="Ray Train workers; 0: local mode, the loop runs in this process; "
        "[MIN, MAX]: elastic, runs on as many as fit and resizes when nodes come and go",
    )
    elastic_check_s: float = Field(
        60.0, gt=0, description="elastic runs: how often Ray Train looks for room to grow"
    )
    cpus_per_worker: float = Field(
        1.0, gt=0.0, description="CPUs Ray reserves per worker; also its torch thread count"
    )
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); false: CPU on gloo")
    storage_path: str = Field(
        "./runs",
        description="run folders: a local path, a shared filesystem or an s3:// / gs:// URI",
    )
    max_failures: int = Field(0, ge=-1, description="-1: retry forever")
    grad_clip: float | None = Field(
        None, gt=0.0, description="clip the global gradient norm to this; null: no clipping"
    )
    grad_clip_mode: Literal["global", "per_parameter"] = Field(
        "global",
        description="global: the norm of all gradients together (torch's clip_grad_norm_); "
        "per_parameter: each parameter's gradient by its own norm (DINO's and iBOT's code, "
        "clip 3.0)",
    )
    data: DataConfig = DataConfig()
    backbone: NetConfig = NetConfig(name="cnn1d")
    head: NetConfig = NetConfig(name="linear")
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_scheduler: LRSchedulerConfig = LRSchedulerConfig()
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = CheckpointConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()
    performance: PerformanceConfig = PerformanceConfig()
    tracking: TrackingConfig | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_run_name(v)))

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers_shape(cls, value: Any) -> Any:
        """A count or a [MIN, MAX] pair, said in one message (not one per union member)."""
        given = value
        if isinstance(value, bool):
            value = None  # refused below: True is not a count
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # --set num_workers=4
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
        raise ValueError(f"expected a count (2) or an elastic range [MIN, MAX], got {given!r}")

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        self._check_workers()
        if self.num_workers == 0 and (
            self.data.name == "parquet"
            or (self.data.name in ("images", "webdataset") and not self.data.in_memory)
        ):
            raise ValueError(
                "num_workers 0 (local mode) holds data in memory; streamed data (parquet, "
                "images or webdataset with in_memory false) goes through Ray Data to Ray "
                "Train workers: set num_workers >= 1"
            )
        if not self.elastic and self.data.batch_size % max(1, self.num_workers):
            raise ValueError(
                f"data.batch_size ({self.data.batch_size}) must be divisible by num_workers "
                f"({self.num_workers}): it is the global batch, split evenly across workers"
            )
        self._check_method()
        self._check_local_crops()
        self._check_patches()
        self._check_monitor()
        if self.builtin_method:
            getattr(self, self.method).check_run(self)
        if self.head.init_from is not None:
            raise ValueError("head.init_from: only the backbone starts from another run")
        if self.optimizer.backbone_lr_scale != 1.0 and self.method != "supervised":
            raise ValueError(
                f"optimizer.backbone_lr_scale scales a supervised run's backbone lr; a "
                f"{self.method} run trains its backbone at optimizer.lr: remove it"
            )
        if self.optimizer.layer_decay is not None and self.method != "supervised":
            raise ValueError(
                f"optimizer.layer_decay decays a supervised fine-tune's lr block by block; a "
                f"{self.method} run trains its backbone at optimizer.lr: remove it"
            )
        from rayssl import nets

        for section, registry in (("backbone", nets.BACKBONES), ("head", nets.HEADS)):
            spec: NetConfig = getattr(self, section)
            try:
                check_kwargs(spec.factory(registry), spec.kwargs, inferred=nets.INFERRED_ARGS)
            except ValueError as exc:
                raise ValueError(f"{section}.name '{spec.name}': {exc}") from None
        return self

    def _check_workers(self) -> None:
        """`num_workers`: a count >= 0, or an elastic [MIN, MAX] range with 1 <= MIN <= MAX
        whose every worker count divides the global batch (a resize keeps the global batch
        and splits it evenly: no gradient accumulation, which would split SimCLR's negatives
        and BatchNorm's statistics into micro-batches and so change the training)."""
        if not self.elastic:
            if self.num_workers < 0:
                raise ValueError(f"num_workers: {self.num_workers} must be >= 0")
            return
        low, high = self.num_workers
        if not 1 <= low <= high:
            raise ValueError(
                f"num_workers: [{low}, {high}] must be [MIN, MAX] with 1 <= MIN <= MAX "
                "(local mode, 0, cannot resize)"
            )
        batch = self.data.batch_size
        odd = [n for n in range(low, high + 1) if batch % n]
        if odd:
            need = math.lcm(*range(low, high + 1))
            raise ValueError(
                f"data.batch_size ({batch}) must be divisible by every worker count "
                f"num_workers [{low}, {high}] allows ({', '.join(map(str, odd))} "
                f"{'does' if len(odd) == 1 else 'do'} not divide it): a resize keeps the "
                f"global batch and splits it evenly; use a multiple of {need} (e.g. "
                f"{need * max(1, round(batch / need))}) or a narrower range"
            )
        if self.max_failures == 0:
            raise ValueError(
                f"num_workers [{low}, {high}] (elastic) continues on fewer workers through a "
                "restart after a node is lost, which max_failures 0 forbids: set max_failures "
                "to a count or -1 (preemption notices do not count against it)"
            )

    @property
    def builtin_method(self) -> bool:
        return self.method in BUILTIN_METHODS

    def _check_method(self) -> None:
        """A built-in name, or an importable Method subclass whose constructor takes every
        `method_options` key (checked here, before Ray starts)."""
        if self.builtin_method:
            if self.method_options:
                raise ValueError(
                    f"method_options: only for a method given by import path; '{self.method}' "
                    f"takes its options from its own section ({self.method}: ...)"
                )
            return
        if ":" not in self.method:
            raise ValueError(
                f"method: '{self.method}' is neither one of {', '.join(BUILTIN_METHODS)} nor of "
                "the form 'package.module:ClassName'"
            )
        from rayssl.methods import Method

        try:
            cls = import_factory(self.method)
        except ValueError as exc:
            raise ValueError(f"method: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"method: '{self.method}' is not a subclass of rayssl's Method")
        params = inspect.signature(cls).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(self.method_options) - set(params) - set(METHOD_INFERRED))
            if unknown:
                takes = [n for n in params if n not in ("backbone", *METHOD_INFERRED)]
                raise ValueError(
                    f"method_options: {', '.join(unknown)} not taken by {self.method} "
                    f"(it takes: {', '.join(takes) or 'nothing'})"
                )

    def _check_local_crops(self) -> None:
        """Multi-crop views only for a method that takes them (DINO, SwAV, or an import-path
        method whose class sets `multi_crop = True`): the others' losses pair two views."""
        image = self.data.augment.image
        if image is None or image.local_crops is None or not image.local_crops.number:
            return
        cls = BUILTINS[self.method].cls if self.builtin_method else import_factory(self.method)
        if getattr(cls, "multi_crop", False):
            return
        raise ValueError(
            f"data.augment.image.local_crops: {self.method} pairs two views and takes no "
            "local crops (dino and swav do, and an import-path Method with multi_crop = True): "
            "remove local_crops or set its number to 0"
        )

    def _check_patches(self) -> None:
        """A ViT cuts every view into whole patches: the views' and local crops' sides must
        be multiples of backbone.patch_size (the data's own side is checked when built)."""
        image = self.data.augment.image
        if self.backbone.name != "vit" or image is None:
            return
        patch = self.backbone.kwargs.get("patch_size", 16)
        local = image.local_crops if image.local_crops and image.local_crops.number else None
        if local is not None and local.size is None:
            raise ValueError(
                "data.augment.image.local_crops.size: set it to a multiple of "
                f"backbone.patch_size ({patch}); its default, 3/7 of the views' side, need not be"
            )
        sides = {"data.augment.image.size": image.size}
        if local is not None:
            sides["data.augment.image.local_crops.size"] = local.size
        for field, side in sides.items():
            if side is not None and side % patch:
                near = max(patch, side // patch * patch)
                raise ValueError(
                    f"{field} ({side}) is not a multiple of backbone.patch_size ({patch}): a "
                    f"ViT cuts views into whole patches; use e.g. {near}"
                )

    def updated(self, changes: dict[str, Any]) -> RunConfig:
        """A new config: this one with `changes` (nested, as in YAML) merged in, validated
        again. A config, once validated, is never changed in place."""
        from rayssl.config.loading import deep_merge

        return type(self).model_validate(deep_merge(self.model_dump(), changes))

    def with_older_options(self, saved: dict[str, Any]) -> RunConfig:
        """This config with the options added since `saved` (a checkpoint's config) was
        written at the value that run trained with, so it resumes and evaluates as it was
        (each method's section lists them: `MethodConfig.older_runs_lack`)."""
        changes = {
            name: {
                k: v for k, v in b.section.older_runs_lack.items() if k not in saved.get(name, {})
            }
            for name, b in BUILTINS.items()
        }
        changes = {name: keys for name, keys in changes.items() if keys}
        return self.updated(changes) if changes else self

    def record(self) -> dict[str, Any]:
        """This config as JSON-able data to store or show (run.json, summary.json, state.pt,
        MLflow params, the workers' copy): credentials in the tracking URI redacted. The
        driver keeps the real URI and hands it to rank 0 on its own (WorkerArgs.mlflow)."""
        data = self.model_dump(mode="json")
        if data.get("tracking") and data["tracking"].get("mlflow_uri"):
            data["tracking"]["mlflow_uri"] = redact_uri(data["tracking"]["mlflow_uri"])
        return data

    def reported_metrics(self) -> list[str]:
        """The per-epoch metrics this config's run reports, that early stopping can watch."""
        names = ["train_loss"]
        d = self.data
        has_val = d.val_path if d.name == "parquet" else d.val_path or d.val_fraction > 0
        if has_val:
            names.append("val_loss")
        if self.method == "supervised":
            names += [f"train_{m}" for m in self.supervised.metrics]
            if has_val:
                names += [f"val_{m}" for m in self.supervised.metrics]
        else:
            names += ["knn_acc", *(["linear_acc"] if self.eval.linear_probe else [])]
            names += ["online_linear_acc"] if self.eval.online_linear else []
        return names

    def _check_monitor(self) -> None:
        es = self.early_stopping
        if es is None:
            return
        reported = self.reported_metrics()
        if es.monitor not in reported:
            raise ValueError(
                f"early_stopping.monitor '{es.monitor}' is not reported by this "
                f"{self.method} run; choose one of: {', '.join(reported)}"
            )
        if es.monitor in PROBE_METRICS:
            every = self.eval.every
            if not every or es.patience % every:
                raise ValueError(
                    f"early_stopping.monitor '{es.monitor}' is measured every eval.every "
                    f"({every}) epochs: set eval.every >= 1 and early_stopping.patience "
                    f"({es.patience}) to a multiple of it"
                )


# The run with every built-in method's section (`method_name: {...}`), each from its module.
TrainConfig = create_model(
    "TrainConfig",
    __base__=RunConfig,
    __module__=__name__,
    __doc__="One training run. Every field has a default, so `{}` is a valid (supervised "
    "MNIST-1D) run.",
    **{name: (b.section, Field(default_factory=b.section)) for name, b in BUILTINS.items()},
)
