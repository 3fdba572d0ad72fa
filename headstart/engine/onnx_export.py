"""Export a frozen ``nn.Module`` to ONNX once, and cache the file by content.

The graph has a dynamic batch dimension and a fixed (C, H, W): engines compile for one image size, and a
fixed spatial size lets shape arithmetic (TF "SAME" padding in ``Conv2dSame``) fold into constants.

Two exporters:

* ``"dynamo"`` (``torch.export`` + onnxscript, torch's default since 2.9) specialises the static spatial
  sizes, so SAME padding becomes plain ``Conv`` pads: a clean Conv/Clip/Add graph that ONNX Runtime runs
  faster. Needs the ``onnxscript`` package.
* ``"torchscript"`` (the legacy tracer, ``dynamo=False``), always present in torch 2.13 but deprecated.
  It keeps the padding arithmetic as Shape/Gather/Pad nodes at runtime: correct, slower in ONNX Runtime.

``exporter="auto"`` takes dynamo when onnxscript imports, else torchscript.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "input"
OPSET = 18  # ONNX Runtime >= 1.16 and OpenVINO >= 2023.1 read it; dynamo emits >= 18 anyway
EXPORTERS = ("auto", "dynamo", "torchscript")


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE/engines``, else ``$XDG_CACHE_HOME/headstart/engines``, else ``~/.cache/...``."""
    root = os.environ.get("HEADSTART_CACHE")
    if root:
        return Path(root) / "engines"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "headstart" / "engines"


def resolve_exporter(exporter: str = "auto") -> str:
    """``"dynamo"`` or ``"torchscript"``; ``"auto"`` prefers dynamo when onnxscript is installed."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    if exporter == "auto":
        return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"
    return exporter


def default_output_names(module: nn.Module, n_outputs: int) -> list[str]:
    """Tap names for a ``CodesModule`` (so ONNX outputs are self-describing), else ``output0``, ``output1``..."""
    taps = getattr(module, "taps", None)
    if isinstance(taps, tuple) and len(taps) == n_outputs and all(isinstance(t, str) for t in taps):
        return list(taps)
    return [f"output{i}" for i in range(n_outputs)]


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of the module's structure and weights.

    Structure = each submodule's class and its plain attributes (so two ``CodesModule``s over the same
    backbone with different taps differ, as do strides, eps...), weights = every state-dict tensor's bytes.
    """
    h = hashlib.sha256()
    for name, sub in module.named_modules():
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}".encode())
        for key in sorted(vars(sub)):
            value = vars(sub)[key]
            if not key.startswith("_") and _is_plain(value):
                h.update(f"{key}={value!r};".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_plain(value: object) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, (tuple, list)) and all(_is_plain(v) for v in value)


def _exporter_version(exporter: str) -> str:
    version = f"{exporter}-torch{torch.__version__}-opset{OPSET}"
    if exporter == "dynamo":
        import onnxscript

        version += f"-onnxscript{onnxscript.__version__}"
    return version


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    cache_dir: Path | str | None = None,
    output_names: Sequence[str] | None = None,
    exporter: str = "auto",
) -> Path:
    """Export ``module`` for inputs ``(N, *input_shape)`` to ONNX, or return the cached file.

    The file name is a hash of (module fingerprint, input shape, output names, exporter + versions), so a
    changed weight, tap or library version exports anew and an unchanged one never does. Written to a
    temporary file then ``os.replace``d: concurrent processes never see a half-written model.
    With ``exporter="auto"``, a dynamo failure (torch.export is stricter than tracing) warns and traces.
    """
    resolved = resolve_exporter(exporter)
    if exporter != "auto" or resolved == "torchscript":
        return _export_cached(module, tuple(input_shape), cache_dir, output_names, resolved)
    try:
        return _export_cached(module, tuple(input_shape), cache_dir, output_names, "dynamo")
    except Exception as exc:  # noqa: BLE001 - the legacy tracer handles what torch.export cannot
        warnings.warn(f"dynamo ONNX export failed ({type(exc).__name__}: {exc}); using the TorchScript exporter",
                      RuntimeWarning, stacklevel=2)
        return _export_cached(module, tuple(input_shape), cache_dir, output_names, "torchscript")


def _export_cached(module: nn.Module, input_shape: tuple[int, ...], cache_dir: Path | str | None,
                   output_names: Sequence[str] | None, exporter: str) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # The key needs no forward pass (a cache hit costs only the ~40 ms weight hash): default output
    # names are a function of the module, so "default" stands for them.
    names_key = ",".join(output_names) if output_names is not None else "<default>"
    key = hashlib.sha256(
        "|".join([module_fingerprint(module), repr(tuple(input_shape)), names_key,
                  _exporter_version(exporter)]).encode()
    ).hexdigest()[:24]
    path = cache / f"{type(module).__name__}-{key}.onnx"
    if path.exists():
        return path
    example = torch.zeros((2, *input_shape))  # batch 2: torch.export specialises sizes 0 and 1
    n_outputs = _count_outputs(module, example)
    names = list(output_names) if output_names is not None else default_output_names(module, n_outputs)
    if len(names) != n_outputs:
        raise ValueError(f"{len(names)} output names for {n_outputs} outputs")
    fd, tmp_name = tempfile.mkstemp(prefix=path.stem, suffix=".onnx.tmp", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _eval_mode(module), torch.no_grad(), quiet_export():
            if exporter == "dynamo":
                _export_dynamo(module, example, tmp, names)
            else:
                _export_torchscript(module, example, tmp, names)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _count_outputs(module: nn.Module, example: torch.Tensor) -> int:
    with _eval_mode(module), torch.no_grad():
        out = module(example)
    return len(out) if isinstance(out, (tuple, list)) else 1


def _export_dynamo(module: nn.Module, example: torch.Tensor, path: Path, names: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        module, (example,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=names,
        dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False,
        external_data=False,  # one self-contained file, so the atomic rename moves everything
    )


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, names: list[str]) -> None:
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
    torch.onnx.export(
        module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=names,
        dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True,
    )


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Export in eval mode (BN running stats, no dropout), restoring the caller's train/eval flags after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence exporter chatter that is expected here: TracerWarnings about ``x.shape`` in SAME padding
    (right: the spatial size is fixed), the legacy-exporter deprecation notice, and dynamo's
    "torchvision is not installed" log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1.*")  # onnx2torch Slice
            yield
    finally:
        logger.setLevel(level)
