"""Peak memory of `headstart extract` on a large folder: extraction streams, so it must not grow with N.

    python benchmarks/bench_memory.py                    # 20000 synthetic 500x375 JPEGs, default model/engine
    python benchmarks/bench_memory.py --n 500 --backend torch
    python benchmarks/bench_memory.py --n 20000 --images /tmp/jpegs20k   # keep (and reuse) the generated images

The images (distinct random 500x375 JPEGs in 10 class folders) are generated once into ``--images`` or a
temporary folder. A warm-up run on 16 images exports and caches the engine first, so that the measured run
is extraction only. The measured run is the real command, ``headstart extract DATA --out OUT``, in its own
process with an empty feature cache; its peak RSS is read from ``wait4`` (ru_maxrss of that child alone).
The bound and the figures measured with this script are in RELIABILITY.md ("Resource bounds").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CLI = "import sys; from headstart.cli import main; sys.argv[0] = 'headstart'; main()"


def make_jpegs(folder: Path, n: int, size: tuple[int, int], classes: int = 10) -> list[Path]:
    """``n`` distinct JPEGs (smooth random colour fields + noise), reusing those already in ``folder``."""
    from PIL import Image

    w, h = size

    def one(i: int) -> Path:
        p = folder / f"class{i % classes:02d}" / f"img{i:06d}.jpg"
        if not p.exists():
            rng = np.random.default_rng(i)
            small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
            arr = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
            tmp = p.with_suffix(".tmp")
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=85)
            os.replace(tmp, p)
        return p

    for c in range(classes):
        (folder / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, range(n)))


def run_extract(data: Path, out: Path, cache: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """``headstart extract`` as a child process: wall time, exit code and that child's own peak RSS."""
    cmd = [sys.executable, "-c", CLI, "extract", str(data), "--out", str(out), "--cache-dir", str(cache),
           "--model", args.model, "--backend", args.backend, "--batch-size", args.batch_size, "-q"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    stdout, stderr = child.stdout.read().decode(), child.stderr.read().decode()  # type: ignore[union-attr]
    child.stdout.close(), child.stderr.close()  # type: ignore[union-attr]
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"headstart extract failed ({code}):\n{stderr[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "summary": stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="number of images [20000]")
    ap.add_argument("--size", default="500x375", help="image size WxH [500x375]")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--backend", default="auto", help="auto, openvino, onnxruntime or torch [auto]")
    ap.add_argument("--batch-size", default="32", help="an integer or auto [32]")
    ap.add_argument("--images", type=Path, help="folder for the generated images (kept and reused); default: temp")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="headstart-bench-memory-"))
    try:
        images = a.images or work / "images"
        t0 = time.perf_counter()
        paths = make_jpegs(images, a.n, (w, h))
        gen_s = time.perf_counter() - t0
        data = images if len(paths) == len(list(images.rglob("*.jpg"))) else None
        if data is None:  # --images holds more than --n images: extract exactly n of them
            data = work / "subset"
            for p in paths:
                (data / p.parent.name).mkdir(parents=True, exist_ok=True)
                os.symlink(p, data / p.parent.name / p.name)
        # Engines (exported ONNX / compiled blobs) go to a private HEADSTART_CACHE, warmed on 16 images.
        env = {**os.environ, "HEADSTART_CACHE": str(work / "headstart-cache")}
        warm = work / "warm"
        make_jpegs(warm, 16, (w, h), classes=2)
        run_extract(warm, work / "warm-out", work / "warm-cache", a, env)
        result = run_extract(data, work / "codes", work / "feature-cache", a, env)
        codes_mb = sum(p.stat().st_size for p in (work / "codes").glob("codes_*.npy")) / 2**20
        report = {"n": a.n, "size": a.size, "model": a.model, "backend": a.backend, "batch_size": a.batch_size,
                  "generate_s": round(gen_s, 1), **result, "codes_mb": round(codes_mb, 1),
                  "images_per_s": round(a.n / result["seconds"], 1)}
        print(json.dumps(report))
        print(f"peak RSS of `headstart extract` on {a.n} images: {result['peak_rss_mb']:.0f} MB "
              f"({result['seconds']:.0f}s, {report['images_per_s']:.0f} img/s; codes file {codes_mb:.1f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
