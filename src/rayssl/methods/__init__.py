"""Methods: plain nn.Modules that implement the loop's small contract (see base.Method)."""

from rayssl.methods.base import Method
from rayssl.methods.supervised import SimpleSupervisedModel

__all__ = ["Method", "SimpleSupervisedModel"]
