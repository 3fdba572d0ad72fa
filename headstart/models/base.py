"""The uniform backbone API every zoo entry implements: stages, taps, preprocessing spec, parameter groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from headstart.errors import UnknownTapError
from headstart.models.spec import PreprocessSpec

POOLED = "pooled"


class Backbone(nn.Module):
    """A ConvNet as an ordered list of named stages, then global pooling, dropout and a linear classifier.

    Subclasses fill ``self.stages`` (an ``nn.ModuleDict`` in input→output order), ``self.classifier``,
    ``self.spec`` and ``self.weights_id``. Everything else — taps, parameter groups, features — is shared here.

    Taps are the names of the stages plus ``"pooled"`` (global average of the last stage).
    ``forward_taps`` returns each requested stage's spatial output (N, C, H, W), and ``(N, C)`` for ``pooled``.
    """

    name: str = "backbone"
    spec: PreprocessSpec
    weights_id: str = "random"
    # Cosine of pooled codes from which two images are the same picture re-encoded or resized; measured on
    # EfficientNet-Lite0 (fit.checks.NEAR_DUPLICATE_COSINE). None: not calibrated, so not checked.
    near_copy_cosine: float | None = 0.99
    stages: nn.ModuleDict
    classifier: nn.Linear

    def __init__(self, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_rate = drop_rate

    # -- taps ---------------------------------------------------------------------------------------------
    @property
    def tap_names(self) -> tuple[str, ...]:
        return (*self.stages.keys(), POOLED)

    @property
    def num_features(self) -> dict[str, int]:
        """Channels of each tap (the length of its pooled CNN code)."""
        out = {name: _out_channels(stage) for name, stage in self.stages.items()}
        out[POOLED] = self.classifier.in_features
        return out

    def check_taps(self, names: Sequence[str]) -> list[str]:
        """Validate tap names; the error lists the valid ones."""
        names = list(names)
        unknown = [n for n in names if n not in self.tap_names]
        if unknown:
            raise UnknownTapError(
                f"unknown layer {', '.join(map(repr, unknown))} for {self.name}; "
                f"choose from: {', '.join(self.tap_names)}"
            )
        return names

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run only as far as the deepest requested tap and return those outputs."""
        wanted = set(self.check_taps(names))
        order = list(self.stages.keys())
        last = max((order.index(n) for n in wanted if n != POOLED), default=-1)
        if POOLED in wanted:
            last = len(order) - 1
        out: dict[str, torch.Tensor] = {}
        for i, (name, stage) in enumerate(self.stages.items()):
            if i > last:
                break
            x = stage(x)
            if name in wanted:
                out[name] = x
        if POOLED in wanted:
            out[POOLED] = x.mean(dim=(2, 3)) if x.ndim == 4 else x  # a vector already (an ONNX net's fc7)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's spatial output (N, C, H, W)."""
        for stage in self.stages.values():
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool (if spatial), dropout, classify."""
        if features.ndim == 4:
            features = features.mean(dim=(2, 3))
        return self.classifier(F.dropout(features, self.drop_rate, self.training))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- transfer learning hooks --------------------------------------------------------------------------
    def param_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Parameters grouped by stage, ordered from input to output, the classifier last."""
        groups = [(name, list(stage.parameters())) for name, stage in self.stages.items()]
        groups.append(("classifier", list(self.classifier.parameters())))
        return groups

    def reset_classifier(self, num_classes: int, *, seed: int = 0) -> None:
        """Replace the classifier by a new one with ``num_classes`` outputs, initialised from ``seed``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.classifier
        self.classifier = nn.Linear(old.in_features, num_classes, device=old.weight.device)
        # Small init keeps the first steps from wrecking pretrained features with large gradients; a
        # private generator makes it independent of whatever else consumed the global RNG.
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(self.classifier.weight.shape, generator=gen) * 0.01
            self.classifier.weight.copy_(w.to(old.weight.device))
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features


def _out_channels(module: nn.Module) -> int:
    """Output channels of a stage: those of its last conv or BN layer."""
    last = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            last = m.out_channels
        elif isinstance(m, nn.BatchNorm2d):
            last = m.num_features
    if last is None:
        raise TypeError(f"cannot infer output channels of {type(module).__name__}")
    return last
