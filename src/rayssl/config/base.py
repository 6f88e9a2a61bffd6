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

    # NaN or an infinity in any number (data.normalize, augment.jitter, ...) is a mistake
    # the run could only carry into NaN weights: refused where it enters.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# A run folder is `<name>-<YYYYmmdd-HHMMSS>[-N]` under storage_path: the name is one path
# component, short enough that the suffix still fits a file system's 255-byte names.
MAX_RUN_NAME_BYTES = 200


def check_run_name(name: str | None) -> str | None:
    """`name` as one folder name under storage_path: no separator, no '.' or '..' (the run
    folder would land beside storage_path, not in it), no hidden name, at most 200 bytes."""
    if name is None:
        return None
    if not name or name.strip(".") == "" or name.startswith("."):
        raise ValueError("a run name may not be empty or start with '.'; use letters, digits, -_")
    if any(c in name for c in "/\\\0"):
        raise ValueError("a run name is one folder name: no '/', '\\' or NUL; use -_ instead")
    if len(name.encode()) > MAX_RUN_NAME_BYTES:
        raise ValueError(f"a run name may take at most {MAX_RUN_NAME_BYTES} bytes")
    return name
