"""Any ONNX image classifier as a backbone: ``--model onnx:PATH`` (``onnx:PATH@PRESET`` names a preset).

The converted graph (see ``onnx_import``) is cut into stages the way the zoo's own networks are:

* the **classifier** is the last Gemm / MatMul(+Add) / 1×1 Conv before the output, found by walking back past
  softmax, flattening and pooling; it becomes an ``nn.Linear`` (the ImageNet head the advisor reads);
* what feeds it, back past global pooling and flattening, is the **trunk**; ``pooled`` is the global average
  of the trunk's output (or the trunk's output itself when it is already a vector, as VGG's fc7 is). When
  what lies between is not a global average (a Flatten head, a channels-last mean; checked on a random
  batch), the classifier's input itself is the trunk's end and ``pooled``;
* the trunk is cut where one tensor carries everything onward (between ResNet blocks, Inception modules, VGG
  layers); pieces without weights (pooling, LRN) join the piece after them; consecutive pieces at the same
  spatial size form one **stage**, named after its last node (its tap), and each fully connected piece is a
  stage of its own; a widening 1×1 conv at the end of a stage (an inverted residual block's expansion before
  it downsamples) moves to the next, so MobileNet-style stages end at block outputs. ``--freeze K`` counts
  these stages.

Preprocessing comes from a sidecar TOML beside the model (``model.toml`` or ``model.onnx.toml``) or a preset;
without either, ``imagenet-torch``. Sidecar keys: ``preset``, ``input_size``, ``crop_pct``, ``mean``, ``std``
(0–255 pixels, in the model's channel order), ``channels`` (rgb|bgr), ``interpolation``. The input layout
(NCHW or NHWC) and size are read from the graph's input.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import shutil
import tempfile
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from headstart.errors import OnnxImportError
from headstart.models.base import POOLED, Backbone
from headstart.models.onnx_cut import (cut_stages, find_classifier, node_shape, pooling_is_global_average,
                                      trainable_weights)
from headstart.models.spec import PreprocessSpec

PREFIX = "onnx:"
IMAGENET_MEAN = (123.675, 116.28, 103.53)
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm exports: RGB, ImageNet mean/std
    "imagenet-torch": {"mean": IMAGENET_MEAN, "std": (58.395, 57.12, 57.375), "channels": "rgb"},
    # the Caffe Model Zoo (AlexNet, VGG, GoogLeNet, ResNet): BGR, mean subtracted, no scaling
    "caffe-bgr": {"mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "channels": "bgr"},
    # TensorFlow Inception / MobileNet / EfficientNet ports: pixels to [-1, 1]
    "tf-inception": {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5), "channels": "rgb"},
}
_SIDECAR_KEYS = {"preset", "input_size", "crop_pct", "mean", "std", "channels", "interpolation"}
# onnx2torch's Slice indexes with a list, which torch warns about (harmlessly) at every new call site.
warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing.*")


@dataclass(frozen=True)
class Preprocessing:
    spec: PreprocessSpec
    bgr: bool
    source: str  # "preset caffe-bgr", "sidecar resnet50.toml (preset imagenet-torch)"...


def is_onnx_name(name: str) -> bool:
    return name.startswith(PREFIX)


def canonical_name(name: str) -> str:
    """``onnx:`` + absolute path (+ ``@preset``): the same model from any working directory."""
    return _model_name(*_split(name))


def _model_name(path: Path, preset: str | None) -> str:
    return PREFIX + str(path) + (f"@{preset}" if preset else "")


def build_onnx_backbone(name: str, drop_rate: float = 0.0) -> OnnxBackbone:
    path, preset = _split(name)
    if not path.is_file():
        raise OnnxImportError(f"no ONNX model at {path}")
    stat, side = path.stat(), sidecar_path(path)
    side_key = (str(side), side.stat().st_mtime_ns) if side is not None else None
    model = copy.deepcopy(_converted(str(path), stat.st_mtime_ns, stat.st_size, preset, side_key))
    model.drop_rate = drop_rate
    return model


def save_as_onnx(model: Backbone, path: Path) -> Path:
    """``model`` (its classifier included) as an ONNX file with a sidecar TOML of its preprocessing, so that
    ``onnx:PATH`` reads it back with the same inputs: e.g. to hand a backbone to another tool and back."""
    from headstart.engine.onnx_export import export_onnx

    s = model.spec
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(model, (3, s.input_size, s.input_size), cache_dir=tmp, output_names=["logits"])
        shutil.move(str(exported), path)
    path.with_suffix(".toml").write_text(f"mean = {list(s.mean)}\nstd = {list(s.std)}\ncrop_pct = {s.crop_pct}\n"
                                         f'interpolation = "{s.interpolation}"\n')
    return path


def _split(name: str) -> tuple[Path, str | None]:
    """``onnx:PATH@PRESET`` → (PATH, PRESET); an ``@`` is a preset's only when a known preset follows it, so a
    path may hold ``@`` (``onnx:~/models/m@2.onnx``)."""
    rest = name[len(PREFIX):]
    base, at, tail = rest.rpartition("@")
    if at and tail in PRESETS:
        return Path(base).expanduser().resolve(), tail
    path = Path(rest).expanduser()
    if at and not path.exists() and "/" not in tail and "." not in tail:
        raise OnnxImportError(f"unknown preprocessing preset {tail!r}; choose from {', '.join(PRESETS)}")
    return path.resolve(), None


@functools.lru_cache(maxsize=2)
def _converted(path: str, _mtime_ns: int, _size: int, preset: str | None,
               _sidecar: tuple[str, int] | None) -> OnnxBackbone:
    """Conversion takes seconds: once per (file version, preset, sidecar version) in a process; callers get
    deep copies. Two kept: a VGG holds half a gigabyte."""
    return OnnxBackbone(Path(path), preset)


class OnnxBackbone(Backbone):
    """A converted ONNX classifier with stages, taps and a linear classifier like the zoo's networks."""

    near_copy_cosine = None  # the near-duplicate threshold was calibrated on EfficientNet-Lite0 only

    def __init__(self, path: Path, preset: str | None = None, drop_rate: float = 0.0) -> None:
        super().__init__(drop_rate)
        from headstart.features.cache import hash_file
        from headstart.models.onnx_import import convert, graph_inputs, load_prepared, static_shape  # onnx: 0.5 s

        self.name = _model_name(path, preset)
        self.weights_id = "onnx-" + hash_file(path)[:20]

        prepared = load_prepared(path)
        inputs = graph_inputs(prepared)
        if len(inputs) != 1:
            raise OnnxImportError(f"{path}: the graph takes {len(inputs)} inputs "
                                  f"({', '.join(i.name for i in inputs) or 'none'}); an image classifier takes one")
        (inp,) = inputs
        layout, size = _layout(static_shape(inp), path)
        self.preprocessing = _preprocessing(path, preset, size)
        self.spec = self.preprocessing.spec
        gm = convert(prepared).eval()  # eval: the shape pass below must not move BatchNorm's running stats
        op_types = {n.name: n.op_type for n in prepared.graph.node}
        trainable_weights(gm, op_types)
        adapter = InputAdapter(self.preprocessing.bgr, layout == "nhwc")
        example = adapter(torch.randn(2, 3, self.spec.input_size, self.spec.input_size,
                                      generator=torch.Generator().manual_seed(0)))
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints its traceback
                ShapeProp(gm).propagate(example)
        except Exception as exc:  # noqa: BLE001 - any failure here is the same user problem
            why = (str(exc).strip().splitlines() or [""])[0]
            raise OnnxImportError(f"{path}: the converted graph does not run on a batch of 2 "
                                  f"({type(exc).__name__}: {why}); export the model with a dynamic batch "
                                  "dimension") from exc
        trunk_end, feat, classifier = find_classifier(gm, op_types, path)
        if not pooling_is_global_average(gm, example, trunk_end, feat):
            trunk_end = feat  # e.g. Flatten straight into the classifier: the classifier's input is the code
        if len(node_shape(trunk_end)) not in (2, 4):
            raise OnnxImportError(f"{path}: the classifier reads a {len(node_shape(trunk_end))}-D tensor; headstart "
                                  "taps images (N, C, H, W) and vectors (N, C)")
        self.classifier = classifier
        stages, shapes = cut_stages(gm, trunk_end, op_types)
        first = next(iter(stages))
        stages[first] = nn.Sequential(adapter, stages[first])
        self.stages = nn.ModuleDict(stages)
        self._shapes = shapes
        self.layout = layout

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the ONNX file's name plus the weights, and rebuilt by converting the file again: the
        converted graph's modules import onnx2torch, whose import needs the torchvision stand-in, which a
        fresh process (a Ray worker) unpickling them would not have."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return (_rebuild, (self.name, self.drop_rate, self.num_classes, state, self.weights_id, self.spec,
                           self.training))

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxBackbone:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    @property
    def num_features(self) -> dict[str, int]:
        out = {name: int(shape[1]) for name, shape in self._shapes.items()}
        out[POOLED] = self.classifier.in_features
        return out

    def tap_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tap's output shape for one image (C, H, W) or (C,)."""
        return {name: tuple(int(d) for d in shape[1:]) for name, shape in self._shapes.items()}


def _rebuild(name: str, drop_rate: float, num_classes: int, state: dict[str, torch.Tensor], weights_id: str,
             spec: PreprocessSpec, training: bool) -> OnnxBackbone:
    model = build_onnx_backbone(name, drop_rate)
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    model.load_state_dict(state)
    model.weights_id, model.spec = weights_id, spec
    return model.train(training)


class InputAdapter(nn.Module):
    """From the pipeline's NCHW RGB tensor to what the graph expects: BGR order, NHWC layout."""

    def __init__(self, bgr: bool, nhwc: bool) -> None:
        super().__init__()
        self.bgr, self.nhwc = bgr, nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return x


# -- preprocessing ---------------------------------------------------------------------------------------
def _layout(shape: list[int | None], path: Path) -> tuple[str, int | None]:
    if len(shape) != 4:
        raise OnnxImportError(f"{path}: the input has shape {shape}; an image classifier takes (N, 3, H, W) "
                              "or (N, H, W, 3)")
    layout, (h, w) = ("nchw", shape[2:]) if shape[1] == 3 else ("nhwc", shape[1:3]) if shape[3] == 3 else ("", (0, 0))
    if layout and h != w and h is not None and w is not None:
        raise OnnxImportError(f"{path}: the graph takes {h}×{w} images; headstart feeds square centre crops, so "
                              "export it for a square size (or with dynamic height and width)")
    if layout:
        return layout, h
    raise OnnxImportError(f"{path}: the input {shape} has no 3-channel axis (second or last)")


def sidecar_path(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".toml"), path.with_name(path.name + ".toml")):
        if candidate.is_file():
            return candidate
    return None


def _preprocessing(path: Path, preset: str | None, graph_size: int | None) -> Preprocessing:
    values: dict[str, Any] = {}
    side = sidecar_path(path)
    if side is not None:
        try:
            with side.open("rb") as f:
                values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise OnnxImportError(f"{side}: not a readable TOML file ({exc})") from exc
        unknown = sorted(set(values) - _SIDECAR_KEYS)
        if unknown:
            raise OnnxImportError(f"{side}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_SIDECAR_KEYS))}")
    name = preset or values.get("preset", "imagenet-torch")
    if name not in PRESETS:
        raise OnnxImportError(f"unknown preprocessing preset {name!r}; choose from {', '.join(PRESETS)}")
    merged = {**PRESETS[name], **{k: v for k, v in values.items() if k != "preset"}}
    channels = str(merged["channels"]).lower()
    if channels not in ("rgb", "bgr"):
        raise OnnxImportError(f"channels must be rgb or bgr, got {channels!r}")
    try:
        mean, std = tuple(float(v) for v in merged["mean"]), tuple(float(v) for v in merged["std"])
        size, crop_pct = int(merged.get("input_size") or graph_size or 224), float(merged.get("crop_pct", 0.875))
    except (TypeError, ValueError) as exc:
        raise OnnxImportError(f"{side or path}: mean and std take three numbers, input_size an integer, crop_pct a "
                              f"number ({exc})") from exc
    if graph_size is not None and size != graph_size:
        raise OnnxImportError(f"input_size {size} but the graph takes {graph_size}×{graph_size} images")
    if len(mean) != 3 or len(std) != 3:
        raise OnnxImportError("mean and std take three numbers, one per channel")
    if channels == "bgr":  # the spec is in RGB order: the adapter flips after normalising
        mean, std = mean[::-1], std[::-1]
    spec = PreprocessSpec(input_size=size, crop_pct=crop_pct, mean=mean,  # type: ignore[arg-type]
                          std=std, interpolation=str(merged.get("interpolation", "bilinear")))  # type: ignore[arg-type]
    source = f"preset {name}" if side is None else f"{side.name} (preset {name})"
    return Preprocessing(spec, channels == "bgr", source)

