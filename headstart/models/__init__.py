"""Model zoo: backbones with a uniform API, their preprocessing specs and pretrained weights."""

from __future__ import annotations

from headstart.lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
