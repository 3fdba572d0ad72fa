"""End-to-end extraction speed on real JPEGs: headstart's pipeline per engine vs a plain PyTorch eager pipeline.

    python benchmarks/bench_extract.py --data ../shared/datasets/intel_scenes_small --n 1000
    python benchmarks/bench_extract.py --data ../shared/datasets/brain_mri --size 400 --n 1000 \
        --engines openvino,openvino-int8                  # 400x400 JPEGs, quality 90, re-encoded from brain_mri

Each configuration runs in a fresh subprocess (so peak RSS is its own) with no feature cache. For headstart's
engines the same process also measures what bounds the pipeline: the engine alone on a preprocessed batch
(both cores) and decoding + preprocessing alone (one thread), per image; the bound is 2 cores over their sum
of CPU-ms, and ``of_bound`` what the pipeline reached of it. ``build_s``: building the engine (reading, and
for int8 quantising on the first run, then compiling), a fixed cost included in the end-to-end time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _resized(data: Path, n: int, size: int, workdir: Path) -> list[Path]:
    """``n`` of the dataset's JPEGs (every k-th, sorted) re-encoded at ``size``x``size``, quality 90."""
    from PIL import Image

    files = sorted(p for p in data.rglob("*.jpg"))
    step = max(1, len(files) // n)
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(files[::step][:n]):
        p = workdir / f"{size}_{i:06d}.jpg"
        Image.open(src).convert("RGB").resize((size, size), Image.BICUBIC).save(p, quality=90)
        out.append(p)
    return out


def _jpegs(data: Path, n: int, workdir: Path) -> list[Path]:
    """``n`` distinct real JPEGs: the dataset's files, plus re-encoded random crops of them if more are needed."""
    from PIL import Image

    files = sorted(p for p in data.rglob("*.jpg"))
    if n <= len(files):
        return files[:n]
    rng = np.random.default_rng(0)
    out = list(files)
    workdir.mkdir(parents=True, exist_ok=True)
    while len(out) < n:
        src = files[len(out) % len(files)]
        im = Image.open(src).convert("RGB")
        w, h = im.size
        s = rng.uniform(0.7, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        p = workdir / f"aug_{len(out):06d}.jpg"
        im.crop((x, y, x + cw, y + ch)).save(p, quality=90)
        out.append(p)
    return out


def run_headstart(paths: list[Path], backend: str, model: str, batch: int) -> dict:
    import headstart.features.extract as ex
    from headstart.data import BatchLoader, EvalTransform
    from headstart.features import extract_codes
    from headstart.models import create_model

    backend, _, precision = backend.partition("-")
    precision = precision or "fp32"
    backbone = create_model(model)
    # Warm-up: exports (and for int8 calibrates on the same images the timed run will name), as a second run finds.
    extract_codes(paths, backbone, ["pooled"], cache=None, backend=backend, progress=False, precision=precision)
    built: list = []
    make = ex._make_engine

    def timed_make(*a: object, **k: object) -> object:
        t = time.perf_counter()
        engine = make(*a, **k)
        built.append((time.perf_counter() - t, engine))
        return engine

    ex._make_engine = timed_make
    t0 = time.perf_counter()
    res = extract_codes(paths, backbone, ["pooled"], cache=None, backend=backend, batch_size=batch, progress=False,
                        precision=precision)
    dt = time.perf_counter() - t0
    build_s, engine = built[0]
    tf = EvalTransform(backbone.spec)
    x = next(iter(BatchLoader(paths[:batch], tf, batch_size=batch, workers=1)))
    for _ in range(3):
        engine(x.images)
    t = time.perf_counter()
    for _ in range(10):
        engine(x.images)
    engine_cpu_ms = (time.perf_counter() - t) / (10 * batch) * 1e3 * 2  # wall ms per image on both cores
    t, n = time.perf_counter(), 0
    for b in BatchLoader(paths[:320], tf, batch_size=batch, workers=1, draft_size=tf.draft_size):
        n += len(b.indices)
    decode_cpu_ms = (time.perf_counter() - t) / n * 1e3
    bound = 2 / (engine_cpu_ms + decode_cpu_ms) * 1e3
    return {"images": len(res.index), "seconds": dt, "build_s": round(build_s, 2),
            "engine_cpu_ms": round(engine_cpu_ms, 2), "decode_cpu_ms": round(decode_cpu_ms, 2),
            "bound_img_s": round(bound, 1), "of_bound": round(len(res.index) / dt / bound, 3),
            "steady_img_s": round(len(res.index) / (dt - build_s), 1)}


def run_eager(paths: list[Path], model: str, batch: int) -> dict:
    """What a careful user writes by hand: PIL decode+resize in the loop, torch eager NCHW, no_grad."""
    import torch
    from PIL import Image

    from headstart.models import create_model

    m = create_model(model).eval()
    s = m.spec
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            xs = []
            for p in paths[i:i + batch]:
                im = Image.open(p).convert("RGB")
                w, h = im.size
                r = s.resize_size / min(w, h)
                im = im.resize((round(w * r), round(h * r)), Image.BICUBIC)
                w, h = im.size
                left, top = (w - s.input_size) // 2, (h - s.input_size) // 2
                im = im.crop((left, top, left + s.input_size, top + s.input_size))
                xs.append((np.asarray(im, np.float32) - 127.0) / 128.0)
            x = torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).copy())
            m.forward_features(x).mean((2, 3))
            n += len(xs)
    return {"images": n, "seconds": time.perf_counter() - t0}


def child(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in json.loads(Path(args.paths_file).read_text())]
    if args.engine == "eager":
        r = run_eager(paths, args.model, args.batch)
    else:
        r = run_headstart(paths, args.engine, args.model, args.batch)
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "intel_scenes_small")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=0, help="re-encode the images at SIZE x SIZE, quality 90")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--engines", default="eager,torch,onnxruntime,openvino")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        paths = (_resized(args.data, args.n, args.size, Path(tmp) / "jpegs") if args.size
                 else _jpegs(args.data, args.n, Path(tmp) / "jpegs"))
        pf = Path(tmp) / "paths.json"
        pf.write_text(json.dumps([str(p) for p in paths]))
        rows = []
        for eng in args.engines.split(","):
            cmd = [sys.executable, __file__, "--engine", eng, "--paths-file", str(pf), "--model", args.model,
                   "--batch", str(args.batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{eng}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["engine"] = eng
            r["img_s"] = r["images"] / r["seconds"]
            rows.append(r)
            print(f"{eng}: {r['img_s']:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB; {r}", file=sys.stderr,
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"data": str(args.data), "n": args.n, "size": args.size, "model": args.model,
                                        "batch": args.batch, "rows": rows}, indent=1))
    base = next((r["img_s"] for r in rows if r["engine"] == "eager"), None)
    print(f"\n{args.model}, {args.n} real JPEGs, batch {args.batch}, end to end (decode+resize+network)\n")
    print("| pipeline | images/s | vs eager | peak RSS (MB) |\n|---|---|---|---|")
    for r in rows:
        speed = f"{r['img_s'] / base:.1f}×" if base else "-"
        print(f"| {r['engine']} | {r['img_s']:.1f} | {speed} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
