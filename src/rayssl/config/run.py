"""How a run trains and is watched: optimizer, LR schedule, early stopping, checkpoints,
evaluation, tracking, speed switches."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from rayssl.config.base import Strict


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd", "lars"] = Field(
        "adamw",
        description="lars: SGD with layer-wise trust ratios for large batches; biases and "
        "normalisation parameters get neither adaptation nor weight decay",
    )
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled for adamw, L2 otherwise")
    weight_decay_end: float | None = Field(
        None,
        ge=0.0,
        description="weight decay at the last step, reached on a cosine from weight_decay "
        "over the run's optimizer steps (DINO: 0.04 -> 0.4); null: constant",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and lars")
    trust_coefficient: float = Field(
        0.001, gt=0.0, le=1.0, description="lars: eta in lr_layer = eta * |w| / |update|"
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw, each in [0, 1)")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each of the two betas must be in [0, 1), got {list(betas)}")
        return betas

    backbone_lr_scale: float = Field(
        1.0, gt=0.0, le=10.0, description="supervised: backbone lr = lr x this (fine-tuning)"
    )
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="supervised fine-tuning of a ViT: block i of depth trains at lr x "
        "layer_decay^(depth - i), the embeddings at layer_decay^(depth + 1), the head at lr "
        "(MAE: 0.65 to 0.75); no weight decay on biases, norms, position embedding, CLS token",
    )

    @model_validator(mode="after")
    def _schedule_has_a_start(self) -> OptimizerConfig:
        if self.weight_decay_end is not None and self.weight_decay == 0:
            raise ValueError(
                "weight_decay_end needs a weight decay to start from: set "
                "optimizer.weight_decay > 0 (DINO: 0.04) or remove weight_decay_end"
            )
        return self


class LRSchedulerConfig(Strict):
    name: Literal["none", "onecycle", "warmup_cosine", "step"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0, description="warmup_cosine")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: share of steps rising")
    step_epochs: int = Field(30, ge=1, description="step: decay every this many epochs")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="warmup_cosine: floor of lr/lr0")


class EarlyStoppingConfig(Strict):
    monitor: str = Field("val_loss", description="any metric the run reports")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest change that counts")


class CheckpointConfig(Strict):
    num_to_keep: int | None = Field(2, ge=1, description="null keeps every checkpoint")
    score_attribute: str | None = Field(None, description="keep the best by this metric")
    score_order: Literal["min", "max"] = "max"
    preemption_check_steps: int = Field(
        10,
        ge=0,
        description="every this many optimizer steps the workers ask Ray Train whether a "
        "node of theirs is being preempted, and save a checkpoint mid-epoch if so; 0: never",
    )


# what the kNN / linear probes report: only every `eval.every` epochs (and at the end)
PROBE_METRICS = ("knn_acc", "linear_acc")


class EvalConfig(Strict):
    """kNN / linear-probe evaluation of the frozen backbone (self-supervised methods)."""

    every: int = Field(0, ge=0, description="also every N epochs; 0: only at the end")
    knn_k: int = Field(20, ge=1, description="neighbours of the cosine kNN probe")
    linear_probe: bool = Field(
        True, description="also fit a logistic regression on standardised frozen features"
    )
    probe_train_limit: int | None = Field(
        100_000,
        ge=2,
        description="rows of the probes' fit set at most (a seeded choice; a Parquet "
        "split's first rows); null: all. Each worker holds the features of its share",
    )
    online_linear: bool = Field(
        False,
        description="train a linear classifier on detached backbone features alongside the "
        "method (labeled data); online_linear_acc every epoch, scored where the probes score",
    )
    online_linear_lr: float = Field(1e-3, gt=0.0, description="its AdamW learning rate")


class WandbConfig(Strict):
    """Weights & Biases, through Ray's own integration (`pip install 'rayssl[wandb]'`): one
    W&B run per rayssl run, logged by rank 0, and one per Tune trial."""

    project: str = Field(min_length=1, description="the W&B project")
    group: str | None = Field(None, description="the W&B group; null: none (a search: its name)")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline: files only, for `wandb sync` later (no account needed)"
    )
    dir: str | None = Field(
        None,
        description="where W&B writes its files; null: the run folder (a local "
        "storage_path), else W&B's default; a relative path is relative to the directory "
        "the command runs in",
    )

    @field_validator("dir")
    @classmethod
    def _absolute_dir(cls, path: str | None) -> str | None:
        # Ray Train workers run in a working directory of their own
        return None if path is None else str(Path(path).expanduser().resolve())


class TrackingConfig(Strict):
    """Experiment trackers, each optional: MLflow (`pip install 'rayssl[mlflow]'`: one MLflow
    run per rayssl run) and Weights & Biases (`wandb:`)."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI: sqlite:///mlflow.db, http://host:5000; a relative "
        "file or sqlite path is relative to the directory the command runs in",
    )
    experiment: str = Field("rayssl", min_length=1, description="the MLflow experiment")
    wandb: WandbConfig | None = None

    @field_validator("mlflow_uri")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        # Ray Train workers run in a working directory of their own: a relative store
        # would open a fresh, empty one there. Resolved where the config is read.
        return None if uri is None else absolute_tracking_uri(uri)

    @model_validator(mode="after")
    def _some_tracker(self) -> TrackingConfig:
        if self.mlflow_uri is None and self.wandb is None:
            raise ValueError("tracking names no tracker: set mlflow_uri or wandb (or remove it)")
        return self


SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "sig", "signature")


def uri_secrets(uri: str) -> list[str]:
    """The secrets a URI carries: the password of its user part (`https://me:pw@host`, or
    the whole user part, a token, without a colon) and the values of query parameters that
    carry secrets (`?token=...`)."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return []
    found = []
    if "@" in parts.netloc:
        user = parts.netloc.rsplit("@", 1)[0]
        found.append(user.split(":", 1)[1] if ":" in user else user)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and any(word in key.lower() for word in SECRET_QUERY_KEYS):
            found.append(value)
    return [secret for secret in found if secret]


def redact_uri(uri: str, text: str | None = None) -> str:
    """`text` (default: `uri` itself) with every secret of `uri` replaced by `***`: fit to
    show or store. Text that quotes the URI in pieces (an HTTP library's error) too."""
    text = uri if text is None else text
    for secret in sorted(uri_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///mlflow.db`, `file:mlruns` or `mlruns` made absolute against the current
    directory; server URIs (http://, databricks, ...) and absolute paths unchanged."""
    for scheme in ("sqlite:///", "file://", "file:"):
        if uri.startswith(scheme):
            path = uri[len(scheme) :]
            if scheme == "file://" and not path.startswith("/"):
                return uri  # file://host/...: not ours to change
            if path and not path.startswith("/") and path != ":memory:":
                return (
                    f"{'sqlite:///' if scheme == 'sqlite:///' else 'file://'}{Path(path).resolve()}"
                )
            return uri
    if uri in ("databricks", "databricks-uc", "uc"):
        return uri  # MLflow's names for hosted stores
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return str(Path(uri).resolve())  # a plain folder: MLflow's file store
    return uri


class PerformanceConfig(Strict):
    """Speed switches, all off by default (on CPU they rarely help; see BENCHMARKS.md)."""

    amp: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="bf16: autocast forward passes to bfloat16 (weights stay float32); fp16: "
        "to float16 with a gradient scaler (GPUs without bf16, e.g. V100, T4): a step whose "
        "gradients overflow is skipped on every rank and the scale lowered",
    )
    log_every: int = Field(
        50,
        ge=1,
        description="optimizer steps between the training step's reads back to the host: a "
        "non-finite loss or gradient on any rank makes every rank skip that step and each "
        "later one, and the run stops at the next read (or the epoch's end)",
    )
    channels_last: bool = Field(
        False, description="image (C, H, W) data: model and batches in channels_last layout"
    )
    compile: bool = Field(False, description="torch.compile the training step")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    compile_backend: str = Field("inductor", description="torch.compile backend")
