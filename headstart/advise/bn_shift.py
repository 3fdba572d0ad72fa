"""Where the data departs from ImageNet in depth: each BatchNorm layer's input statistics on the user's images
against the running statistics it stored from ImageNet.

For every BatchNorm channel the inputs are summarised by their mean and variance over a sample of images and
positions, and compared with the stored ``running_mean``/``running_var`` by the Kullback-Leibler divergence of
the two Gaussians, ``KL(data || ImageNet) = (v/r + (m - rm)^2/r - 1 - ln(v/r)) / 2``. A stage's figure is
the mean over its BatchNorm layers' channels. Images like ImageNet's give small values at every depth; where
the values jump is where the data stops looking like what the network was trained on (early for a change of
colour or texture statistics, late for new objects) -- the stages fine-tuning, and BatchNorm statistics left
free to adapt (``--no-freeze-bn``), would have to change most.

Needs the network in PyTorch (OpenVINO folds BatchNorm into the convolutions), one eval-mode pass over at most
``max_images`` images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.data.loader import BatchLoader
from headstart.data.transforms import EvalTransform
from headstart.models import Backbone

__all__ = ["bn_shift"]


class _Moments:
    """Per-channel sum, sum of squares and count of a BatchNorm layer's inputs (float64)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        self.bn, self.n = bn, 0
        self.s = torch.zeros(bn.num_features, dtype=torch.float64)
        self.ss = torch.zeros(bn.num_features, dtype=torch.float64)

    def __call__(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().to(torch.float64)
        self.s += x.sum(dim=(0, 2, 3))
        self.ss += (x * x).sum(dim=(0, 2, 3))
        self.n += x.shape[0] * x.shape[2] * x.shape[3]

    def kl(self) -> float:
        """Mean over channels of KL(N(data) || N(running)) (see the module)."""
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0.0) + self.bn.eps
        rm = self.bn.running_mean.to(torch.float64)
        rv = self.bn.running_var.to(torch.float64) + self.bn.eps
        return float((0.5 * (var / rv + (mean - rm) ** 2 / rv - 1.0 - torch.log(var / rv))).mean())


def bn_shift(backbone: Backbone, paths: Sequence[str | Path], *, max_images: int = 64, batch_size: int = 32,
             seed: int = 0) -> list[dict[str, Any]]:
    """``[{"stage", "kl", "layers"}]`` in input-to-output order for the stages that have BatchNorm layers,
    measured on a seeded sample of at most ``max_images`` of ``paths`` (images that do not decode are passed
    over)."""
    paths = list(paths)
    if len(paths) > max_images:
        paths = random.Random(seed).sample(paths, max_images)
    moments: dict[str, list[_Moments]] = {}
    hooks = []
    for name, stage in backbone.stages.items():
        for m in stage.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_var is not None:
                acc = _Moments(m)
                moments.setdefault(name, []).append(acc)
                hooks.append(m.register_forward_pre_hook(acc))
    transform, was_training = EvalTransform(backbone.spec), backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for batch in BatchLoader(paths, transform, batch_size=batch_size, draft_size=transform.draft_size,
                                     warn=False):
                backbone.forward_features(torch.from_numpy(batch.images))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    return [{"stage": name, "kl": round(float(np.mean([m.kl() for m in ms])), 4), "layers": len(ms)}
            for name, ms in moments.items() if ms and ms[0].n > 0]
