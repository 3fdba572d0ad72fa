"""headstart: transfer learning for image classifiers.

>>> import headstart
>>> headstart.list_models("efficientnet*")
['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
"""

from __future__ import annotations

from headstart.lazy import lazy_exports

__version__ = "0.1.0"

# Public names → their module. Imported on first use so `import headstart.data` stays light.
_EXPORTS = {
    "FitConfig": "headstart.config",
    "HeadstartError": "headstart.errors",
    "ImageFolder": "headstart.data",
    "LoadedModel": "headstart.bundle",
    "Predictor": "headstart.predict",
    "create_model": "headstart.models",
    "extract_codes": "headstart.features",
    "fit": "headstart.fit",
    "list_models": "headstart.models",
    "load": "headstart.bundle",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
