"""A factory that leaves a mark when called: tests check that a crafted file naming it by
import path is refused before anything imports or calls it."""

from pathlib import Path

from torch import nn


def touch(path: str, **_: object) -> nn.Module:
    Path(path).write_text("called")
    return nn.Flatten()
