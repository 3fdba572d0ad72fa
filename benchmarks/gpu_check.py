"""The prepared GPU check (run by gpu_check.sh whenever a GPU machine is lent; at most ~8 minutes):

1. ``headstart bench --device all``: the CPU and GPU rows of every zoo backbone;
2. a short fine-tuning run on a shared dataset with the GPU path (``--device cuda``: bf16 autocast, channels_last);
3. GPU-vs-CPU code agreement: the same images' codes on CUDA (fp32, as fit extracts; and bf16) against the
   CPU's (fp32): cosine similarity;
4. a single-GPU NCCL smoke test: ``torchrun --nproc-per-node 1 -m headstart fit ... --strategy finetune``.

Every step is timed and recorded (the report is rewritten after each), and a failing step does not stop the
others; the step limits (170 + 120 + 90 s, the agreement step about a minute) fit the wrapper's 480 s.
``--dry-run`` runs the same steps on the CPU with the tiny test backbone on generated images (bf16 on the CPU
for step 3, gloo for step 4), so the script itself is tested where no GPU is (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py --data shared/intel_scenes_small --out benchmarks/results/gpu-2026-12-03.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _headstart(*args: str, launch: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = (launch or [sys.executable]) + ["-m", "headstart", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def step_bench(ctx: dict[str, Any]) -> dict[str, Any]:
    models = ["--models", "tiny_test"] if ctx["dry"] else []
    proc = _headstart("bench", "--device", "all", "--json", "--iters", "3", *models, timeout=170)
    return json.loads(proc.stdout)


def step_finetune(ctx: dict[str, Any]) -> dict[str, Any]:
    out = Path(ctx["tmp"]) / "ft"
    _headstart("fit", str(ctx["data"]), "--strategy", "finetune", "--epochs", "2", "--device", ctx["device"],
               "--model", ctx["model"], "--out", str(out), "--quiet", timeout=120)
    m = json.loads((out / "metrics.json").read_text())
    return {"test_accuracy": m["test"]["accuracy"], "val_accuracy": m["val"]["accuracy"],
            "train_s": m["timing"]["train_s"], "feed": m["training"]["feed"], "device": ctx["device"]}


def step_agreement(ctx: dict[str, Any]) -> dict[str, Any]:
    from headstart.features import extract_codes
    from headstart.models import POOLED, create_model

    paths = sorted(p for p in Path(ctx["data"]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:256]
    model = create_model(ctx["model"])
    cpu = extract_codes(paths, model, [POOLED], cache=None, progress=False, device="cpu")
    result: dict[str, Any] = {"images": len(paths), "cpu_seconds": cpu.seconds}
    for precision in ("fp32", "bf16"):  # fit's codes (fp32), and extract --precision bf16
        gpu = extract_codes(paths, model, [POOLED], cache=None, progress=False, device=ctx["device"],
                            precision=precision)
        a, b = cpu.codes[POOLED], gpu.codes[POOLED]
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        result[precision] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                             "max_abs_diff": float(np.abs(a - b).max()), "seconds": gpu.seconds}
    return result


def step_nccl(ctx: dict[str, Any]) -> dict[str, Any]:
    out = Path(ctx["tmp"]) / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    _headstart("fit", str(ctx["data"]), "--strategy", "finetune", "--epochs", "1", "--device", ctx["device"],
               "--model", ctx["model"], "--out", str(out), "--quiet", launch=launch, timeout=90)
    m = json.loads((out / "metrics.json").read_text())
    return {"backend": m["training"]["process_group"], "processes": m["training"]["processes"],
            "test_accuracy": m["test"]["accuracy"]}


STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bench": step_bench, "finetune": step_finetune, "agreement": step_agreement, "nccl": step_nccl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "intel_scenes_small")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / f"gpu-{time.strftime('%Y-%m-%d')}.json")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny backbone, generated images")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.dry_run:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import make_class_folder

            data = make_class_folder(Path(tmp) / "data", n_per_class=12, classes=("a", "b", "c"))
        os.environ.setdefault("HEADSTART_CACHE", str(Path(tmp) / "cache"))
        ctx = {"dry": args.dry_run, "tmp": tmp, "data": data, "device": "cpu" if args.dry_run else "cuda",
               "model": "tiny_test" if args.dry_run else "efficientnet_lite0"}
        report: dict[str, Any] = {"dry_run": args.dry_run, "data": str(args.data), "steps": {}}
        for name, fn in STEPS.items():
            t0 = time.perf_counter()
            try:
                result = {"ok": True, **fn(ctx)}
            except Exception as e:  # noqa: BLE001 - record it and run the other steps
                result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["steps"][name] = result
            print(f"{name}: {'ok' if result['ok'] else result['error'][:300]} ({result['seconds']} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))  # after every step: a kill keeps what was measured
    print(f"wrote {args.out}")
    sys.exit(0 if all(s["ok"] for s in report["steps"].values()) else 1)


if __name__ == "__main__":
    main()
