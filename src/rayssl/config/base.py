"""What every config section shares: the error type of a user's mistake (`ConfigError`, from
`rayssl.errors`), strict models, and the base of a method's own section."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
)

from rayssl.errors import ConfigError

__all__ = ["ConfigError", "Strict", "MethodConfig", "check_run_name"]


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated on set."""

    # NaN or an infinity in any number (data.normalize, augment.jitter, ...) is a mistake
    # the run could only carry into NaN weights: refused where it enters.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class MethodConfig(Strict):
    """Base of a built-in method's own config section (it lives in the method's module).

    `older_runs_lack`: options added since some runs were written, with the value those runs
    trained with (a checkpoint's config without the key resumes and evaluates as it was);
    `check_run`: checks that need the rest of the run's config (the global batch, ...)."""

    older_runs_lack: ClassVar[dict[str, Any]] = {}

    def check_run(self, cfg: Any) -> None:
        """Raise ValueError if this section does not fit the run `cfg` (a TrainConfig)."""


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
