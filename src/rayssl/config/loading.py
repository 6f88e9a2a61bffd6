"""YAML files and `--set key=value` overrides in; a validated `TrainConfig` or one clear
line out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from rayssl.config.base import ConfigError
from rayssl.config.train import TrainConfig

# --------------------------------------------------------------------------- loading


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, joined: 'field.path: message (got value)'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(TrainConfig, err["loc"][:-1])
            accepted = ", ".join(model.model_fields) if model else "see the README"
            msg = f"unknown key; accepted keys here: {accepted}"
        elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
            got = err["input"]
            if not isinstance(got, (dict, list)):
                msg = f"{msg} (got {got!r})"
        if err["type"] == "value_error" and not err["loc"]:
            parts.append(msg)
        else:
            parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn ["optimizer.lr=3e-4", "data.augment.shift=4"] into a nested dict (values are YAML)."""
    dotted: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set optimizer.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        dotted[key.strip()] = value
    try:
        return nested(dotted)
    except ValueError as exc:
        key, part = exc.args
        item = next(i for i in items if i.partition("=")[0].strip() == key)
        raise ConfigError(f"--set '{item}': '{part}' is set twice with different kinds") from None


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}. A key that runs through a value set
    earlier raises ValueError(key, the part that holds a value)."""
    result: dict[str, Any] = {}
    for key, value in dotted.items():
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(key, part)
        node[leaf] = value
    return result


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of keys, got {type(raw).__name__}"
        )
    return raw


def validate_train_config(raw: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_train_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Read, override and validate a training config; the run name defaults to the file stem."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides))
    raw.setdefault("name", Path(path).stem)
    return validate_train_config(raw)
