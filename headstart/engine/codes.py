"""CNN codes: what a tap contributes as a feature vector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from headstart.models.base import POOLED, Backbone


def pool_code(x: torch.Tensor) -> torch.Tensor:
    """ReLU, then global average pooling: (N, C, H, W) → (N, C). Vectors pass through."""
    if x.ndim == 2:
        return x
    # Stage outputs of inverted-residual nets are linear bottlenecks; ReLU keeps the code non-negative
    # and sparse, as AlexNet-era "CNN codes" are.
    return torch.relu(x).mean(dim=(2, 3))


class CodesModule(nn.Module):
    """Backbone → tuple of pooled codes, one per tap, in the order given. What engines export and run."""

    def __init__(self, backbone: Backbone, taps: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.taps = tuple(backbone.check_taps(taps))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.backbone.forward_taps(x, self.taps)
        return tuple(pool_code(outs[t]) if t != POOLED else outs[t] for t in self.taps)
