"""The 1000 ImageNet-1k class names, in the order of the pretrained classifiers' outputs."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    text = resources.files("headstart.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(labels) == 1000, f"imagenet_classes.txt has {len(labels)} lines, expected 1000"
    return labels
