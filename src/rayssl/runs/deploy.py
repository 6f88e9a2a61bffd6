"""A trained backbone as an ONNX model (`rayssl export RUN --format onnx`), for serving
outside Python: images in [0, 1] in, features out, the run's normalisation inside the
graph, any batch size. The features are the ones the probes scored and `rayssl embed`
writes (`engine/features.py: FrozenFeatures`): normalised as in training, through the
backbone, flattened, float32.

torch's exporter (`torch.onnx.export(..., dynamo=True)`, which needs onnxscript) writes the
graph; onnx adds the export record (backbone, input shape, normalisation, source) to the
model's metadata under the key "rayssl"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayssl.engine.features import FrozenFeatures
from rayssl.errors import ConfigError, first_line

METADATA_KEY = "rayssl"


class Features(nn.Module):
    """The backbone's features of raw images, normalisation included: what the ONNX graph
    computes."""

    def __init__(self, backbone: nn.Module, normalize: Any, input_shape: list[int]):
        super().__init__()
        self.backbone = backbone
        self.features = FrozenFeatures.of_record(backbone, normalize, len(input_shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def write_onnx(module: nn.Module, record: dict[str, Any], local: Path, path: str) -> None:
    """Export `module` (the backbone, loaded, eval mode) with `record`'s normalisation and
    input shape to `local`, its batch dimension dynamic, the record in its metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; fail here in one line)
    except ImportError as exc:
        raise ConfigError(
            f"--format onnx needs onnx and onnxscript ({exc}): pip install 'rayssl[onnx]'"
        ) from None
    shape = list(record["input_shape"])
    model = Features(module, record["normalize"], shape).eval()
    example = torch.rand(2, *shape)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
        program.save(str(local))
    except Exception as exc:  # the exporter raises many types; one line, no file left
        raise ConfigError(
            f"path '{path}': its backbone cannot be exported to ONNX ({first_line(exc)}); "
            "use --format state_dict"
        ) from None
    graph = onnx.load(str(local))
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(record)})
    onnx.save(graph, str(local))
