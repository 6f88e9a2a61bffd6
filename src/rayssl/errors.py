"""One-line error reports: what the CLI prints for bad input (exit 2) and for a failed run."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error in a config, a command-line value or an input file (exit code 2)."""


def first_line(exc: BaseException, with_type: bool = True) -> str:
    """`Type: first line of the message` (or only the line), never a traceback."""
    text = str(exc).strip().splitlines()
    if not with_type:
        return text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
