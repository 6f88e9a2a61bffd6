"""rayssl: distributed-first supervised and self-supervised training on Ray."""

__version__ = "0.1.0"
