"""Model zoo: backbones with a uniform API, their preprocessing specs and pretrained weights."""

from __future__ import annotations

import importlib
from typing import Any

# Public names → their module, imported on first use: the preprocessing spec (read by the config and the data
# pipeline at start-up) needs no torch, the backbones do.
_EXPORTS = {
    "POOLED": "headstart.models.base", "Backbone": "headstart.models.base",
    "imagenet_labels": "headstart.models.labels",
    **dict.fromkeys(["ZooEntry", "create_model", "list_models", "model_entry", "register_model"],
                    "headstart.models.registry"),
    "PreprocessSpec": "headstart.models.spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'headstart.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
