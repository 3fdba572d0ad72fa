"""Engines run a frozen network (no autograd) on a batch of preprocessed images, as fast as the machine allows.

The contract: ``engine(batch) -> tuple[np.ndarray, ...]`` where ``batch`` is float32 (N, 3, H, W) and the
outputs are those of the wrapped module's ``forward`` in float32. Engines are built by ``make_engine``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Protocol

import numpy as np
import torch
from torch import nn


class Engine(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``device``, where "auto" is a CUDA GPU if PyTorch sees one, else Apple's MPS, else the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


PRECISIONS = ("fp32", "bf16", "int8")  # int8: OpenVINO + NNCF on the CPU (headstart.engine.openvino)


def precision_for(device: str | torch.device) -> str:
    """What fine-tuning runs on ``device`` in (the frozen prefix and the training steps): bf16 autocast on CUDA
    (the GPU fast path), fp32 elsewhere. Codes that a head is fitted on stay fp32 (``extract_codes``)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def autocast_for(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Fine-tuning's autocast on ``device``: bf16 on CUDA (``precision_for``), none elsewhere."""
    dev = torch.device(device)
    if precision_for(dev) == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TorchEngine:
    """The reference path: eager PyTorch under ``inference_mode``, channels_last (1.7x faster on CPU here).

    ``precision="bf16"``: under bf16 autocast (outputs returned as float32). On CUDA the batch goes through
    pinned memory, so the copy to the GPU is asynchronous."""

    name = "torch"

    def __init__(self, module: nn.Module, *, device: str | torch.device = "cpu", channels_last: bool = True,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the torch engine runs fp32 or bf16, not {precision!r}")
        self.device = torch.device(device)
        self.channels_last, self.precision = channels_last, precision
        self.module = module.eval().to(self.device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"), \
                _no_tf32(self.device.type == "cuda" and self.precision == "fp32"):
            out = self.module(x)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().cpu().numpy() for o in outs)


def _no_tf32(on: bool) -> contextlib.AbstractContextManager:
    """fp32 on a GPU means fp32: cuDNN would otherwise run convolutions in TF32 (10-bit mantissa)."""
    if not on:
        return contextlib.nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False)


AUTO_BATCH_START = 64  # where --batch-size auto starts; halved on each out-of-memory error
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory", "unable to allocate",
                "failed to allocate", "bad_alloc")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: ``MemoryError``, or the RuntimeError-like exceptions of
    PyTorch ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory"), ONNX Runtime and
    OpenVINO ("std::bad_alloc"), which do not subclass MemoryError."""
    if isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, Exception) and any(p in msg for p in _OOM_PHRASES)


class AutoBatchEngine:
    """``engine`` run on slices of at most ``size`` images; on out-of-memory the size is halved, for the
    rest of the run, and the slice retried. The outputs equal a single call's: engines are per-image
    functions (frozen network, eval mode), so how a batch is sliced cannot change them."""

    def __init__(self, engine: Engine, size: int = AUTO_BATCH_START) -> None:
        self.engine, self.size, self.name = engine, size, getattr(engine, "name", "engine")

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        if len(batch) == 0:
            return self.engine(batch)
        parts: list[tuple[np.ndarray, ...]] = []
        start = 0
        while start < len(batch):
            try:
                parts.append(self.engine(batch[start:start + self.size]))
            except Exception as e:  # only allocation failures are retried, see below
                if not is_out_of_memory(e) or self.size == 1:
                    raise
                self.size //= 2
                warnings.warn(f"out of memory at batch size {self.size * 2} ({_why(e)}); continuing with "
                              f"{self.size}", RuntimeWarning, stacklevel=2)
                continue
            start += self.size
        return tuple(np.concatenate(outs) for outs in zip(*parts, strict=True))


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
