"""A tiny, deterministic, randomly initialised backbone with the full Backbone API, for fast tests."""

from __future__ import annotations

import torch
from torch import nn

from headstart.models.base import Backbone
from headstart.models.spec import PreprocessSpec


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(Backbone):
    """Four stages (``stem``, ``stage1``, ``stage2``, ``head``) on 32×32 inputs; ~25k parameters."""

    def __init__(self, *, num_classes: int = 10, drop_rate: float = 0.0, seed: int = 0) -> None:
        super().__init__(drop_rate)
        self.name = "tiny_test"
        self.near_copy_cosine = None  # random weights: every small picture's codes are alike
        self.spec = PreprocessSpec(input_size=32, crop_pct=0.875)
        self.weights_id = f"tiny-seed{seed}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same weights every time: tests and caches rely on it
            self.stages = nn.ModuleDict({
                "stem": _block(3, 8, 2),
                "stage1": _block(8, 16, 2),
                "stage2": _block(16, 32, 2),
                "head": nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)),
            })
            self.classifier = nn.Linear(64, num_classes)
