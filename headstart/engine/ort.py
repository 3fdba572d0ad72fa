"""ONNX Runtime engine: the exported graph on the CPU execution provider."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import nn

from headstart.engine.onnx_export import INPUT_NAME, export_onnx


def physical_cores() -> int:
    """CPUs this process may run on, halved when SMT siblings are visible (one busy thread per core is
    fastest for conv nets: two hyperthreads share one core's vector units)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text()
        per_core = len(_parse_cpu_list(siblings))
    except (OSError, ValueError):
        per_core = 1
    return max(1, cpus // max(1, per_core))


def _parse_cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def check_batch(batch: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A C-contiguous float32 (N, *input_shape) array, or a ValueError saying what was expected."""
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_shape):
        raise ValueError(f"engine compiled for (N, {', '.join(map(str, input_shape))}) inputs, "
                         f"got shape {tuple(batch.shape)}")
    return np.ascontiguousarray(batch, dtype=np.float32)


class OnnxRuntimeEngine:
    """Run a frozen module through ONNX Runtime.

    Session settings, measured for throughput on a 2-core machine (see benchmarks/bench_engine.py):
    intra-op threads = physical cores, every graph optimisation (Conv+BN+Clip fusion, NCHWc layouts),
    sequential execution (the graph is a chain: parallel execution only adds scheduling overhead), and
    no spinning (``spin=False``): idle worker threads sleep instead of busy-waiting, which leaves CPU to
    the JPEG-decoding threads beside the engine (with other work on the cores it measured 5-20% faster;
    alone, about even). Not thread-safe: call it from one thread at a time.
    """

    name = "onnxruntime"

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], *, cache_dir: Path | str | None,
                 threads: int | None = None, spin: bool = False, exporter: str = "auto") -> None:
        import onnxruntime as ort

        self.input_shape = tuple(input_shape)
        self.onnx_path = export_onnx(module, self.input_shape, cache_dir=cache_dir, exporter=exporter)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: no per-session info/warning chatter
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = check_batch(batch, self.input_shape)
        outs = self.session.run(self.output_names, {INPUT_NAME: x})
        return tuple(np.asarray(o, dtype=np.float32) for o in outs)
