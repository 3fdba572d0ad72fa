"""Inference engines for frozen networks: ``make_engine`` picks the fastest one installed.

    engine = make_engine(CodesModule(backbone, ["pooled"]), (3, 224, 224))
    (codes,) = engine(batch)  # float32 (N, 1280)
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from headstart.config import BACKENDS
from headstart.engine.base import PRECISIONS, Engine, TorchEngine, precision_for
from headstart.engine.openvino import Calibration
from headstart.errors import ConfigError

# Fastest first, as measured on CPU (benchmarks/bench_engine.py): what "auto" tries, in order.
CPU_PREFERENCE = ("openvino", "onnxruntime", "torch")

__all__ = ["BACKENDS", "PRECISIONS", "Engine", "TorchEngine", "available_backends", "make_engine", "precision_for"]


def available_backends() -> list[str]:
    """Backends whose package is installed, fastest first (``torch`` is always there)."""
    return [b for b in CPU_PREFERENCE if importlib.util.find_spec(b) is not None]


def make_engine(module: nn.Module, input_shape: tuple[int, int, int], *, backend: str = "auto",
                device: str | torch.device = "cpu", cache_dir: Path | None = None, precision: str = "fp32",
                calibration: Calibration | None = None) -> Engine:
    """An engine running frozen ``module`` on float32 (N, *input_shape) batches.

    ``backend="auto"``: on CPU the fastest installed of OpenVINO > ONNX Runtime > PyTorch; if exporting or
    compiling fails it warns and falls back to the next one, so it never fails where PyTorch works.
    On CUDA/MPS, PyTorch. A named backend is used as asked, and its errors propagate.
    ``cache_dir`` holds exported ONNX files and compiled blobs (default ``~/.cache/headstart/engines``).
    ``precision="bf16"`` (PyTorch under bf16 autocast) is what ``precision_for`` picks on CUDA.
    ``precision="int8"``: OpenVINO on the CPU, the network quantised by NNCF's post-training quantisation,
    calibrated on ``calibration`` (a few hundred of the user's own images, decoded only when no quantised model
    for them is cached).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown engine backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    dev = torch.device(device)
    input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (C, H, W), got {input_shape}")
    if precision == "int8":
        if backend not in ("auto", "openvino") or dev.type != "cpu" or calibration is None:
            raise ConfigError("precision int8 runs on OpenVINO on the CPU, calibrated on your images: use backend "
                              "auto or openvino, device cpu, and give calibration images")
        from headstart.engine.openvino import OpenVinoEngine

        return OpenVinoEngine(module, input_shape, cache_dir=cache_dir, calibration=calibration)
    if precision != "fp32" or backend == "torch" or (backend == "auto" and dev.type != "cpu"):
        if backend not in ("auto", "torch"):
            raise ConfigError(f"engine backend {backend!r} runs in fp32 only; use backend='torch' for {precision}")
        return TorchEngine(module, device=dev, precision=precision)
    if backend == "auto":
        return _auto(module, input_shape, cache_dir)
    if dev.type != "cpu":
        raise ConfigError(f"engine backend {backend!r} runs on CPU only; use backend='torch' for device {dev}")
    if importlib.util.find_spec(backend) is None:
        raise ConfigError(f"engine backend {backend!r} needs the {backend!r} package: pip install {backend}")
    return _builders()[backend](module, input_shape, cache_dir)


def _auto(module: nn.Module, input_shape: tuple[int, int, int], cache_dir: Path | None) -> Engine:
    builders = _builders()
    for name in available_backends():
        if name == "torch":
            break
        try:
            return builders[name](module, input_shape, cache_dir)
        except Exception as exc:  # noqa: BLE001 - any export/compile failure: the next backend still works
            warnings.warn(f"engine backend {name!r} failed ({type(exc).__name__}: {exc}); falling back",
                          RuntimeWarning, stacklevel=3)
    return TorchEngine(module, device="cpu")


def _builders() -> dict[str, Callable[[nn.Module, tuple[int, int, int], Path | None], Engine]]:
    # Imported lazily: importing openvino costs ~0.3 s and must not be paid by `import headstart`.
    def openvino(module: nn.Module, shape: tuple[int, int, int], cache: Path | None) -> Engine:
        from headstart.engine.openvino import OpenVinoEngine

        return OpenVinoEngine(module, shape, cache_dir=cache)

    def onnxruntime(module: nn.Module, shape: tuple[int, int, int], cache: Path | None) -> Engine:
        from headstart.engine.ort import OnnxRuntimeEngine

        return OnnxRuntimeEngine(module, shape, cache_dir=cache)

    return {"openvino": openvino, "onnxruntime": onnxruntime}
