"""OpenVINO engine: the exported ONNX graph compiled by OpenVINO's CPU plugin (oneDNN, AMX where present)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from headstart.engine.onnx_export import default_cache_dir, export_onnx
from headstart.engine.ort import check_batch
from headstart.errors import ConfigError
from headstart.io import tmp_path_for

PRECISIONS = ("f32", "bf16")
HINTS = ("latency", "throughput")
ISA_ENV = "ONEDNN_MAX_CPU_ISA"  # read once per process by oneDNN (OpenVINO's and PyTorch's), at first use

# A bf16 1x1 convolution: oneDNN runs it on AMX tiles when the CPU advertises AMX.
_AMX_PROBE = """
import numpy as np
try:
    import openvino as ov
    from openvino import opset13 as ops
except ImportError:
    import torch
    torch.nn.functional.linear(torch.ones(64, 64).bfloat16(), torch.ones(64, 64).bfloat16())
else:
    p = ops.parameter([1, 64, 16, 16], np.float32)
    w = ops.constant(np.ones((64, 64, 1, 1), np.float32))
    conv = ops.convolution(p, w, [1, 1], [0, 0], [0, 0], [1, 1])
    compiled = ov.Core().compile_model(ov.Model([conv], [p]), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    compiled.create_infer_request().infer({0: np.ones((1, 64, 16, 16), np.float32)})
"""


@functools.cache
def guard_amx() -> bool:
    """Keep oneDNN off AMX where AMX faults; True when AMX is usable (or absent).

    Some VMs advertise AMX in CPUID, and the kernel grants the tile permission, yet the first tile
    instruction (``tilezero``) dies with SIGILL — a crash no ``except`` can catch. So where the CPU
    advertises AMX, a throwaway subprocess (~0.4 s) tries a bf16 convolution; if it dies, this process
    caps oneDNN at AVX512-BF16 (``ONEDNN_MAX_CPU_ISA``), which runs bf16 without tiles. It must run
    before this process's first oneDNN call: the cap is read once. An explicit cap is left alone.
    """
    if os.environ.get(ISA_ENV) or not _cpu_flags() & {"amx_tile", "amx_bf16"}:
        return True
    env = {k: v for k, v in os.environ.items() if k != ISA_ENV}
    try:
        ok = subprocess.run([sys.executable, "-c", _AMX_PROBE], env=env, capture_output=True,
                            timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        os.environ[ISA_ENV] = "AVX512_CORE_BF16"
    return ok


CALIBRATION_IMAGES = 300  # NNCF's default subset size: what int8 is calibrated on


def calibration_id(hashes: list[str]) -> str:
    """A short id of a calibration set (its images' content hashes, in any order): part of int8 codes' key."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Calibration:
    """The images int8 is calibrated on: ``key`` names them (``calibration_id``), ``load()`` decodes them
    (float32 NCHW, preprocessed), only when no quantised model for ``key`` is cached yet."""

    key: str
    load: Callable[[], np.ndarray]


def _quantized(core: Any, model: Any, onnx_path: Path, calibration: Calibration, cache: Path) -> Any:
    """``model`` quantised to int8 by NNCF's post-training quantisation on the calibration images, saved as
    OpenVINO IR next to the ONNX file and read back on later calls with the same images."""
    import openvino as ov

    xml = cache / "openvino-int8" / f"{onnx_path.stem}-{calibration.key}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return core.read_model(str(xml))
    try:
        import nncf
    except ImportError:
        raise ConfigError("precision int8 needs NNCF: pip install 'headstart[int8]'") from None
    images = calibration.load()
    q = nncf.quantize(model, nncf.Dataset([images[i:i + 1] for i in range(len(images))]), subset_size=len(images))
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(xml)  # complete files only: a killed quantisation is redone
    ov.save_model(q, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)
    return q


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class OpenVinoEngine:
    """Run a frozen module through OpenVINO on the CPU.

    ``inference_precision="f32"`` (default) matches PyTorch to ~1e-5; ``"bf16"`` runs convolutions in
    bfloat16 on AMX/AVX512-BF16 (~0.25 off on ImageNet logits; only faster where AMX works, see
    ``guard_amx``). ``hint="throughput"`` (default) compiles one single-threaded stream per core and splits
    each batch across them (one infer request per stream); ``"latency"`` runs each call as one stream on
    all ``threads``. Throughput measured equal or up to ~10% faster on 2 cores, more so when other work
    shares the cores: independent streams need no per-layer barrier across threads, so a preempted
    thread stalls only its own half-batch. Not thread-safe: call it from one thread at a time.

    The model is read with ``Core.read_model`` (not ``openvino.convert_model``, which also sends usage
    telemetry), and compiled blobs are cached next to the ONNX file so later runs skip compilation.
    """

    name = "openvino"

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], *, cache_dir: Path | str | None,
                 threads: int | None = None, inference_precision: str = "f32", hint: str = "throughput",
                 streams: int | None = None, exporter: str = "auto", calibration: Calibration | None = None) -> None:
        import openvino as ov

        guard_amx()
        if inference_precision not in PRECISIONS:
            raise ValueError(f"inference_precision must be one of {PRECISIONS}, got {inference_precision!r}")
        if hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
        self.input_shape = tuple(input_shape)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.onnx_path = export_onnx(module, self.input_shape, cache_dir=cache, exporter=exporter)
        core = ov.Core()
        model = core.read_model(str(self.onnx_path))
        # Batch stays dynamic; pinning C, H, W lets OpenVINO fold shape arithmetic and pick static kernels.
        model.reshape({model.inputs[0].any_name: ov.PartialShape([-1, *self.input_shape])})
        if calibration is not None:
            model = _quantized(core, model, self.onnx_path, calibration, cache)
        config: dict[str, str] = {
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_PRECISION_HINT": inference_precision,
            "CACHE_DIR": str(cache / "openvino"),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if streams:
            config["NUM_STREAMS"] = str(streams)
        self.compiled = core.compile_model(model, "CPU", config)
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.inference_precision = "int8" if calibration is not None else inference_precision
        self._outputs = list(self.compiled.outputs)
        # One request per stream: a batch is split across them and they run concurrently.
        self._requests = [self.compiled.create_infer_request() for _ in range(max(1, self.streams))]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = check_batch(batch, self.input_shape)
        chunks = np.array_split(x, min(len(self._requests), len(x))) if len(x) else [x]
        active = self._requests[:len(chunks)]
        # share_inputs: the requests read the caller's (contiguous) memory, no copy; `x` outlives them.
        for request, chunk in zip(active, chunks):
            request.start_async({0: chunk}, share_inputs=True)
        for request in active:
            request.wait()
        # Copy out: a request reuses its output buffers on the next call.
        return tuple(
            np.concatenate([np.array(r.get_tensor(o).data, dtype=np.float32) for r in active])
            for o in self._outputs
        )
