"""`headstart predict` speed: the latency of one image (warm, p50/p99), the throughput of a folder, and the
wall time of the command itself from a cold process (start-up and model loading included).

    python benchmarks/bench_predict.py --images ../shared/datasets/intel_scenes_small/test --run RUN_DIR

Each model: the zoo's lite0 (ImageNet classes) and each RUN_DIR given. One image at a time: ``Predictor.predict``
on a different file each call (decode, resize, network, top-5), after 10 warm-up calls. Folder: every image of
--images in one call, batch 32. Command: ``headstart predict -m MODEL IMAGE`` in a fresh process, 5 times.
Results: benchmarks/results/predict/<images folder>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from headstart.bundle import load
from headstart.data import find_images
from headstart.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, predictor: Predictor, files: list[Path], n: int) -> dict:
    for p in files[:10]:
        predictor.predict([p])
    lat = []
    for p in files[10:10 + n]:
        t = time.perf_counter()
        predictor.predict([p])
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    res = predictor.predict(files, batch_size=32)
    folder_s = time.perf_counter() - t
    return {"model": name, "one_image_ms_p50": round(statistics.median(lat), 1),
            "one_image_ms_p99": round(float(np.percentile(lat, 99)), 1), "one_image_calls": len(lat),
            "folder_images": len(res.predictions), "folder_img_s": round(len(res.predictions) / folder_s, 1)}


def command_ms(model: str, image: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "headstart", "predict", "-m", model, str(image)], check=True,
                       capture_output=True)
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--run", type=Path, nargs="*", default=[])
    ap.add_argument("--n", type=int, default=200, help="one-image calls timed")
    args = ap.parse_args()
    files = find_images([args.images])
    models = [("efficientnet_lite0", Predictor.from_zoo("efficientnet_lite0"))]
    models += [(str(r), load(r).predictor) for r in args.run]
    rows = []
    for name, predictor in models:
        row = measure(name, predictor, files, args.n)
        row["command_ms_median"] = command_ms(name, files[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    dest = ROOT / "benchmarks" / "results" / "predict" / f"{args.images.resolve().parent.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"images": str(args.images), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
