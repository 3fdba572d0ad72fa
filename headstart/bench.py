"""`headstart bench`: the classic CPU-vs-GPU table (the same network, trained and run on each device), measured.

Method of timm's ``benchmark.py``: synthetic input already on the device, warm-up iterations first, then
timed iterations with the device synchronised before each clock read; the figure is the mean over the timed
iterations. Each (backbone, device) row is measured in a fresh process. Per zoo backbone and device:

- ``forward ms``: one batch through the network in eval mode without autograd (eager PyTorch);
- ``fwd+bwd ms``: one training step of the whole network (forward, backward, SGD step);
- ``extract img/s``: the engine headstart extracts codes with on that device (OpenVINO or ONNX Runtime on
  CPU; PyTorch on CUDA), its host-to-device copy included;
- ``fine-tune K=k img/s``: training steps with the first k stages frozen, run as ``headstart fit`` runs them
  with augmentation on: the frozen prefix under ``no_grad``, the rest forward and backward;
- ``speed-up``: fine-tuning at K=0 against the CPU row of the same backbone, the old course table's figure.

With ``images``, one end-to-end row per backbone and device: ``extract_codes`` on real JPEGs (decode,
resize, the engine), no cache.

    rows = run_bench(["efficientnet_lite0"], ["cpu"], iters=5)
"""

from __future__ import annotations

import multiprocessing
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.engine import make_engine
from headstart.engine.base import autocast_for, is_out_of_memory
from headstart.engine.codes import CodesModule
from headstart.errors import ConfigError
from headstart.models import POOLED, Backbone, create_model, list_models
from headstart.train.freeze import freeze_stages, set_train_mode
from headstart.train.prefix import SuffixModel, prefix_module

__all__ = ["DEVICES", "BenchRow", "devices_present", "run_bench", "zoo_models"]

DEVICES = ("cpu", "cuda", "all")
CPU_BATCH, CUDA_BATCH = 32, 256  # CUDA: the start of the out-of-memory back-off


@dataclass
class BenchRow:
    model: str
    device: str  # "cpu", or the GPU's name
    precision: str  # of the training steps: "fp32", or "bf16 autocast" on CUDA (extraction is fp32, as fit's)
    batch_size: int
    forward_ms: float
    train_ms: float  # forward + backward + step, every stage trained
    extract_img_s: float
    finetune_img_s: dict[str, float]  # "K=0", "K=5": images/s of training steps with the first K stages frozen
    engine: str  # what extract_img_s ran on
    speedup: float | None = None  # fine-tuning at K=0 over the CPU row of the same backbone
    end_to_end_img_s: float | None = None  # extract_codes on real JPEGs (with images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zoo_models() -> list[str]:
    """The backbones with ImageNet weights (the test net is not a zoo model)."""
    return [m for m in list_models() if m != "tiny_test"]


def devices_present(which: str) -> list[str]:
    """``which`` ("cpu", "cuda" or "all") as the devices this machine has; asking for an absent GPU is an error."""
    if which not in DEVICES:
        raise ConfigError(f"--device {which!r} is not one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if which == "cuda" and not cuda:
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch here (torch.cuda.is_available() is "
                          "False); use --device cpu or all")
    return {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu", "cuda"] if cuda else ["cpu"]}[which]


def run_bench(models: Sequence[str], devices: Sequence[str], *, freeze: Sequence[int] = (0, 5), warmup: int = 2,
              iters: int = 5, images: Sequence[Path] = (), on_row: Callable[[BenchRow], None] | None = None
              ) -> list[BenchRow]:
    """One row per (model, device): see the module docstring. ``on_row`` sees each row as it is measured."""
    if warmup < 0 or iters < 1:
        raise ConfigError(f"--warmup {warmup} / --iters {iters}: use warmup >= 0 and iters >= 1")
    rows: list[BenchRow] = []
    for name in models:
        cpu_rate: float | None = None
        for dev in devices:
            # A fresh process per row: measured in one process after another backbone (and its OpenVINO
            # engine), eager forward times came out the same for lite0, 1 and 2 (~600 ms); alone, 580/840/1320.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(_bench_one, name, dev, tuple(freeze), warmup, iters, tuple(images)).result()
            if dev == "cpu":
                cpu_rate = row.finetune_img_s.get("K=0")
            elif cpu_rate:
                row.speedup = row.finetune_img_s.get("K=0", 0.0) / cpu_rate
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _bench_one(name: str, device: str, freeze: Sequence[int], warmup: int, iters: int,
               images: Sequence[Path]) -> BenchRow:
    dev = torch.device(device)
    model = create_model(name, num_classes=1000).to(dev)
    size = model.spec.input_size
    cuda = dev.type == "cuda"
    batch = _fit_batch(model, dev, size) if cuda else CPU_BATCH
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    model = model.to(memory_format=torch.channels_last)
    timer = _Timer(dev, warmup, iters)

    model.eval()
    with torch.no_grad(), autocast_for(dev):
        forward_s = timer(lambda: model(x))
    rates = {}
    train_s = 0.0
    for k in freeze:
        k = min(k, len(model.stages))
        step = _train_step(model, k, dev)
        seconds = timer(lambda: step(x, y))  # noqa: B023 - called right here
        rates[f"K={k}"] = batch / seconds
        if k == 0:
            train_s = seconds
    freeze_stages(model, 0)
    engine = make_engine(CodesModule(model.eval(), [POOLED]), (3, size, size), device=dev)
    xb = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    extract_s = timer(lambda: engine(xb))
    e2e = _end_to_end(model, images, dev) if images else None
    return BenchRow(model=name, device=torch.cuda.get_device_name(dev) if cuda else "cpu",
                    precision="bf16 autocast" if cuda else "fp32", batch_size=batch,
                    forward_ms=round(forward_s * 1e3, 2), train_ms=round(train_s * 1e3, 2),
                    extract_img_s=round(batch / extract_s, 1),
                    finetune_img_s={k: round(v, 1) for k, v in rates.items()},
                    engine=getattr(engine, "name", "torch"), end_to_end_img_s=e2e)


def _train_step(model: Backbone, k: int, dev: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step as fine-tuning takes it: the frozen prefix without autograd, the rest trained."""
    freeze_stages(model, k)
    set_train_mode(model, k)
    prefix, suffix = prefix_module(model, k), SuffixModel(model, k)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast_for(dev):
            with torch.no_grad():
                h = prefix(x)
            loss = F.cross_entropy(suffix(h), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _end_to_end(model: Backbone, images: Sequence[Path], dev: torch.device) -> float:
    """Images/s of ``extract_codes`` (hash, decode, resize, network; no cache), after one warm-up call on a few
    images, which leaves the exported engine in its on-disk cache as a user's second run finds it."""
    from headstart.features import extract_codes

    extract_codes(list(images)[:8], model.eval(), [POOLED], cache=None, progress=False, device=dev)
    res = extract_codes(list(images), model.eval(), [POOLED], cache=None, progress=False, device=dev)
    return round(len(res.paths) / res.seconds, 1)


def _fit_batch(model: Backbone, dev: torch.device, size: int) -> int:
    """The largest batch (from ``CUDA_BATCH``, halving) with which a full training step fits in memory."""
    batch = CUDA_BATCH
    step = _train_step(model, 0, dev)
    while True:
        try:
            x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
            step(x, torch.zeros(batch, dtype=torch.long, device=dev))
            torch.cuda.synchronize(dev)
            return batch
        except Exception as e:  # only allocation failures are retried
            if not is_out_of_memory(e) or batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


class _Timer:
    """Mean seconds per call of ``fn`` after ``warmup`` untimed calls, the device synchronised before each
    clock read (CUDA runs asynchronously: unsynchronised, the clock would time the launches)."""

    def __init__(self, dev: torch.device, warmup: int, iters: int) -> None:
        self.dev, self.warmup, self.iters = dev, warmup, iters

    def __call__(self, fn: Callable[[], Any]) -> float:
        for _ in range(self.warmup):
            fn()
        self._sync()
        t0 = time.perf_counter()
        for _ in range(self.iters):
            fn()
        self._sync()
        return (time.perf_counter() - t0) / self.iters

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
