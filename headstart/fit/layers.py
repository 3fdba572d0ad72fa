"""Which layers (taps) a linear probe tries: single stages and concatenations of pooled codes."""

from __future__ import annotations

from headstart.errors import UnknownTapError
from headstart.models import POOLED, Backbone

Layer = tuple[str, ...]


def parse_layer(backbone: Backbone, spec: str) -> list[Layer]:
    """``"auto"`` → candidates to compare; ``"a,b"`` → one concatenated layer; ``"a"`` → one layer."""
    if spec.strip() == "auto":
        return auto_candidates(backbone)
    taps = tuple(t.strip() for t in spec.split(",") if t.strip())
    if not taps:
        raise UnknownTapError(f"empty --layer; choose from: {', '.join(backbone.tap_names)} or auto")
    backbone.check_taps(taps)
    return [taps]


def auto_candidates(backbone: Backbone) -> list[Layer]:
    """The pooled output, the four stages before the head (earlier stages transfer better to data unlike
    ImageNet), and two concatenations of mid and top codes."""
    stages = [t for t in backbone.tap_names if t not in (POOLED, "head")]
    deep = stages[-4:]
    singles: list[Layer] = [(t,) for t in deep] + [(POOLED,)]
    concats: list[Layer] = [(deep[-2], POOLED), (deep[-3], deep[-1], POOLED)] if len(deep) >= 3 else []
    return singles + concats


def layer_name(layer: Layer) -> str:
    return "+".join(layer)
