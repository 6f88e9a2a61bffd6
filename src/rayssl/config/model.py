"""What is trained: backbone and head options (built-in or by import path) and whole-model
options. Each built-in method's own section lives in its module (`rayssl/methods/`)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
)

from rayssl.config.base import Strict


class NetConfig(Strict):
    """A network: a built-in name or an importable factory "package.module:function".

    Every other key is passed to the factory as a keyword argument and is checked against
    its signature, so a misspelt width fails here rather than inside a Ray worker.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field(
        description="built-in (backbone: mlp | cnn1d | cnn2d | resnet18 | resnet50 | vit; head: "
        "linear | mlp) or an importable factory 'package.module:function'"
    )
    init_from: str | None = Field(
        None,
        description="backbone only: start from the backbone of a run folder, a checkpoint "
        "folder or a `rayssl export` file (local or a URI)",
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def factory(self, builtins: dict[str, Any]) -> Any:
        if self.name in builtins:
            return builtins[self.name]
        return import_factory(self.name)


def import_factory(path: str) -> Any:
    """Resolve "package.module:function" to the callable, with a one-line error if it fails."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"'{path}' is neither a built-in nor of the form 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}' ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module '{module_name}' has no attribute '{attr}'") from None


def check_kwargs(factory: Any, kwargs: dict[str, Any], inferred: tuple[str, ...]) -> None:
    """Fail on keyword arguments the factory does not accept (unless it takes **kwargs)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n not in inferred]
    for key in kwargs:
        if key not in params or key in inferred:
            raise ValueError(f"unknown option '{key}'; accepted: {', '.join(accepted) or 'none'}")


class ModelConfig(Strict):
    """Whole-model options, whatever the method."""

    sync_batchnorm: bool = Field(
        False,
        description="BatchNorm statistics over the global batch under DDP (torch's "
        "SyncBatchNorm on GPUs, rayssl's equivalent on CPU workers)",
    )
