"""headstart: transfer learning for image classifiers.

>>> import headstart
>>> headstart.list_models("efficientnet*")
['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
