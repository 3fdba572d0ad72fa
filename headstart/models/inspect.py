"""What ``headstart models --inspect MODEL`` shows: taps with their shapes, stages, preprocessing, classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headstart.models.base import Backbone
from headstart.models.registry import create_model


@dataclass(frozen=True)
class TapInfo:
    name: str
    shape: tuple[int, ...]  # one image's output: (C, H, W) or (C,)
    code: int  # length of its CNN code (global average of a 4-D output)
    params: int  # parameters of the stage that ends at this tap


@dataclass(frozen=True)
class ModelInfo:
    name: str
    weights_id: str
    params: int
    taps: list[TapInfo]
    preprocess: str
    classifier: tuple[int, int]


def inspect_model(name: str) -> ModelInfo:
    """Build ``name`` (a zoo name or ``onnx:PATH``) and run one blank image through it."""
    model = create_model(name)
    size = model.spec.input_size
    with torch.no_grad():
        outs = model.forward_taps(torch.zeros(1, 3, size, size), model.tap_names)
    taps = [TapInfo(tap, tuple(int(d) for d in out.shape[1:]), int(out.shape[1]),
                    sum(p.numel() for p in model.stages[tap].parameters()) if tap in model.stages else 0)
            for tap, out in outs.items()]
    return ModelInfo(model.name, model.weights_id, sum(p.numel() for p in model.parameters()), taps,
                     _describe_preprocess(model), (model.classifier.in_features, model.classifier.out_features))


def _describe_preprocess(model: Backbone) -> str:
    s = model.spec
    where = getattr(getattr(model, "preprocessing", None), "source", "built in")
    bgr = getattr(getattr(model, "preprocessing", None), "bgr", False)
    layout = getattr(model, "layout", "nchw")
    mean = ", ".join(f"{v:g}" for v in s.mean)
    std = ", ".join(f"{v:g}" for v in s.std)
    return (f"{where}: resize {s.resize_size} ({s.interpolation}), centre crop {s.input_size}, "
            f"(pixel - [{mean}]) / [{std}] on 0-255 RGB, fed as {'BGR' if bgr else 'RGB'} {layout.upper()}")
