"""Model-only throughput of each inference engine, and its error against PyTorch fp32.

    python benchmarks/bench_engine.py                       # lite0, 224, batch 32, ~10 s per engine
    python benchmarks/bench_engine.py --sweep --seconds 5   # also thread/stream/batch variants

Prints a markdown table: img/s from the median call time (robust to other processes stealing the CPU
for a moment; the mean-based figure is shown too) and the max abs difference of the logits vs eager fp32.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headstart.engine import TorchEngine
from headstart.models import create_model

Runner = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def bench(run: Runner, x: np.ndarray, seconds: float) -> tuple[float, float, float]:
    """(img/s from the median call, img/s from the mean call, CPU ms per image) after two warm-up calls.

    CPU time (all this process's threads) per image is what an engine costs when it shares the cores
    with decoding threads, and it barely moves when other processes compete for the CPU.
    """
    run(x)
    run(x)
    times: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    cpu_ms = 1000 * (time.process_time() - cpu0) / (len(times) * len(x))
    return len(x) / statistics.median(times), len(x) / statistics.fmean(times), cpu_ms


def torch_bf16(model: torch.nn.Module) -> Runner:
    """channels_last + bf16 autocast: oneDNN uses AMX for convolutions."""
    model = model.eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        return (out.float().numpy(),)

    return run


def engines(model: torch.nn.Module, shape: tuple[int, int, int], cache: Path, threads: int | None,
            sweep: bool) -> dict[str, Callable[[], Runner]]:
    """Name → builder, for whatever is installed. Builders are lazy so one failure skips one row."""
    out: dict[str, Callable[[], Runner]] = {
        # Copies: TorchEngine converts its module to channels_last in place.
        "torch eager NCHW": lambda: TorchEngine(copy.deepcopy(model), channels_last=False),
        "torch channels_last": lambda: TorchEngine(copy.deepcopy(model)),
        "torch bf16 autocast": lambda: torch_bf16(copy.deepcopy(model)),
    }
    if importlib.util.find_spec("onnxruntime"):
        from headstart.engine.ort import OnnxRuntimeEngine

        out["onnxruntime"] = lambda: OnnxRuntimeEngine(model, shape, cache_dir=cache, threads=threads)
        if sweep:
            out["onnxruntime spin"] = lambda: OnnxRuntimeEngine(model, shape, cache_dir=cache,
                                                                   threads=threads, spin=True)
            out["onnxruntime 1 thread"] = lambda: OnnxRuntimeEngine(model, shape, cache_dir=cache, threads=1)
    if importlib.util.find_spec("openvino"):
        from headstart.engine.openvino import OpenVinoEngine

        def ov(**kw: object) -> Callable[[], Runner]:
            return lambda: OpenVinoEngine(model, shape, cache_dir=cache, threads=threads, **kw)  # type: ignore[arg-type]

        out["openvino f32"] = ov(inference_precision="f32")
        out["openvino bf16"] = ov(inference_precision="bf16")
        if sweep:
            out["openvino f32 latency"] = ov(inference_precision="f32", hint="latency")
            out["openvino bf16 latency"] = ov(inference_precision="bf16", hint="latency")
            out["openvino f32 1 thread"] = lambda: OpenVinoEngine(model, shape, cache_dir=cache, threads=1)
    return out


def images(n: int, size: int) -> np.ndarray:
    """Real photos (scikit-image, if installed) tiled to n, else smooth noise; normalised (x - 127) / 128."""
    try:
        from PIL import Image
        from skimage import data

        photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
        arrs = [np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC), np.float32) for p in photos]
    except ImportError:
        rng = np.random.default_rng(0)
        arrs = [rng.uniform(0, 255, (size, size, 3)).astype(np.float32)]
    x = np.stack([arrs[i % len(arrs)] for i in range(n)]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x - 127.0) / 128.0, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: physical cores)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of engine names to run")
    ap.add_argument("--sweep", action="store_true", help="also thread/stream variants")
    ap.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: a temp dir)")
    args = ap.parse_args()
    from headstart.engine.openvino import guard_amx

    # Before any oneDNN call: where AMX faults (some VMs), bf16 rows would kill the process (SIGILL).
    print(f"AMX usable: {guard_amx()} (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')})")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_model(args.model).eval()
    shape = (3, args.size, args.size)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="headstart-bench-"))
    with torch.inference_mode():
        check = images(8, args.size)
        reference = model(torch.from_numpy(check)).numpy()
    rows = []
    print(f"{args.model} @ {args.size}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    for name, build in engines(model, shape, cache, args.threads, args.sweep).items():
        if args.only and not any(s in name for s in args.only):
            continue
        try:
            t0 = time.perf_counter()
            run = build()
            setup = time.perf_counter() - t0
            diff = float(np.abs(run(check)[0] - reference).max())
            top1 = float((run(check)[0].argmax(1) == reference.argmax(1)).mean())
            for b in args.batch:
                median, mean, cpu_ms = bench(run, images(b, args.size), args.seconds)
                rows.append((name, b, median, mean, cpu_ms, diff, top1, setup))
                print(f"  {name:40s} batch {b:3d}: {median:7.1f} img/s (mean {mean:6.1f}), {cpu_ms:5.1f} CPU ms/img, "
                      f"max|diff| {diff:.2e}, setup {setup:.1f}s", flush=True)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other engines
            print(f"  {name}: skipped ({type(exc).__name__}: {exc})")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| engine | batch | img/s (median) | img/s (mean) | CPU ms/img | max abs diff vs torch fp32 | top-1 agree "
          "| setup s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, b, median, mean, cpu_ms, diff, top1, setup in rows:
        print(f"| {name} | {b} | {median:.1f} | {mean:.1f} | {cpu_ms:.1f} | {diff:.1e} | {top1:.0%} | {setup:.1f} |")


if __name__ == "__main__":
    main()
