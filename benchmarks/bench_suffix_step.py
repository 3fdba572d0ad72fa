"""What makes the trainable suffix's training step faster on this CPU: memory format, bf16, torch.compile.

    python benchmarks/bench_suffix_step.py --freeze 5
    python benchmarks/bench_suffix_step.py --depthwise    # where the time goes: depthwise conv passes

One training step (forward, backward, AdamW) of lite0's stages K.. + head on a fixed batch of prefix
outputs (batch 32, 224 input), BatchNorm statistics fixed as `headstart fit` does by default; milliseconds
per image, best of 6 steps after 2 warm-up steps. Each variant runs in its own process, because bf16 needs
ONEDNN_MAX_CPU_ISA set before torch loads (AMX faults on this VM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "NCHW": {},
    "channels_last (headstart's CPU default)": {"cl": True},
    "channels_last + bf16 autocast (AVX512-BF16, no AMX)": {"cl": True, "bf16": True},
    "channels_last + torch.compile (inductor)": {"cl": True, "compile": True},
}


def child(k: int, cl: bool = False, bf16: bool = False, compile: bool = False, classes: int = 6,
          batch: int = 32) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from headstart.models import create_model
    from headstart.train.freeze import freeze_stages, set_train_mode
    from headstart.train.prefix import SuffixModel, prefix_module

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=classes)
    fz = freeze_stages(model, k, freeze_bn=True)
    suffix = SuffixModel(model, fz.k)
    with torch.no_grad():
        x = prefix_module(model, k).eval()(torch.randn(batch, 3, 224, 224))
    if cl:
        suffix.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch) % classes
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    set_train_mode(model, fz.k, fz.freeze_bn)
    t0 = time.perf_counter()
    run = torch.compile(suffix) if compile else suffix

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    first = time.perf_counter() - t0
    step()
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return {"ms_per_img": best * 1000 / batch, "first_step_s": first}


def depthwise_table() -> None:
    """Forward, input-gradient and weight-gradient times of lite0's depthwise convolutions (batch 32,
    channels_last), through the same aten call autograd makes."""
    import torch
    import torch.nn.functional as F

    def best(fn) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) * 1000

    print("| depthwise conv (channels, size, kernel) | forward ms | input grad ms | weight grad ms |")
    print("|---|---:|---:|---:|")
    for c, hw, k in ((672, 14, 5), (672, 14, 3), (1152, 7, 5), (1152, 7, 3)):
        cl = torch.channels_last
        x = torch.randn(32, c, hw, hw).contiguous(memory_format=cl)
        w = torch.randn(c, 1, k, k).contiguous(memory_format=cl)
        g = torch.randn(32, c, hw, hw).contiguous(memory_format=cl)

        def grad(mask: tuple[bool, bool, bool]):  # noqa: ANN202
            return lambda: torch.ops.aten.convolution_backward(g, x, w, None, (1, 1), (k // 2, k // 2), (1, 1),
                                                               False, (0, 0), c, mask)
        fwd = best(lambda: F.conv2d(x, w, padding=k // 2, groups=c))
        print(f"| {c}, {hw}x{hw}, {k}x{k} | {fwd:.1f} | {best(grad((True, False, False))):.1f} | "
              f"{best(grad((False, True, False))):.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--freeze", type=int, default=5)
    ap.add_argument("--child", default="")
    ap.add_argument("--depthwise", action="store_true", help="only the depthwise convolution table")
    args = ap.parse_args()
    if args.depthwise:
        depthwise_table()
        return
    if args.child:
        print(json.dumps(child(args.freeze, **json.loads(args.child))))
        return
    print(f"lite0 suffix after freeze {args.freeze}, batch 32, ms per image of a training step\n")
    print("| variant | ms/img | vs NCHW | first step (incl. compile) |")
    print("|---|---:|---:|---:|")
    base = None
    for name, kw in VARIANTS.items():
        env = {**os.environ, **({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"} if kw.get("bf16") else {})}
        proc = subprocess.run([sys.executable, __file__, "--freeze", str(args.freeze), "--child", json.dumps(kw)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {name} | failed (exit {proc.returncode}) | | |", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        base = base or r["ms_per_img"]
        print(f"| {name} | {r['ms_per_img']:.1f} | {base / r['ms_per_img']:.2f}× | {r['first_step_s']:.1f}s |",
              flush=True)


if __name__ == "__main__":
    main()
