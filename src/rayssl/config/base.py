"""What every config section shares: the error type of a user's mistake, and strict models."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
)


class ConfigError(ValueError):
    """A user error in a config, a command-line value or an input file (exit code 2)."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
