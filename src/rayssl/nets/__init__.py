"""Networks: the built-in backbones and heads (`builtin.py`, reached by name from a config's
`backbone:` / `head:` and importable as `rayssl.nets.<name>`), global-batch BatchNorm
(`batchnorm.py`) and the Vision Transformers' token passes (`vision_transformer.py`)."""

from rayssl.nets.builtin import (
    BACKBONES,
    HEADS,
    INFERRED_ARGS,
    call_factory,
    cnn1d,
    cnn2d,
    linear,
    mlp,
    mlp_classifier,
    output_features,
    resnet18,
    resnet50,
    vit,
)

__all__ = [
    "BACKBONES",
    "HEADS",
    "INFERRED_ARGS",
    "call_factory",
    "cnn1d",
    "cnn2d",
    "linear",
    "mlp",
    "mlp_classifier",
    "output_features",
    "resnet18",
    "resnet50",
    "vit",
]
