"""Foreign ONNX backbones (``--model onnx:PATH``): what reading one costs, and whether a known network read
back through ONNX gives the same codes, probe accuracy and extraction speed as the native one.

    python benchmarks/bench_onnx_backbone.py --data ../shared/datasets/intel_scenes_small

1. Each ``light_*`` topology in the ``onnx`` wheel (placeholder weights): seconds to tidy + convert + cut
   (a fresh process each, so the conversion cache does not help), stages, parameters.
2. EfficientNet-Lite0 exported to ONNX and read back (``onnx:lite0.onnx`` with a sidecar giving its
   preprocessing) against the native zoo entry on DATA's train/test split: the codes' largest difference, the
   logistic-regression probe's test accuracy on pooled codes, and extraction img/s on OpenVINO (no cache).
Results: benchmarks/results/onnx_backbone/<data>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TOPOLOGIES = ["light_resnet50", "light_vgg19", "light_bvlc_alexnet", "light_inception_v1", "light_squeezenet",
              "light_densenet121", "light_inception_v2", "light_shufflenet", "light_zfnet512"]


def load_cost(name: str) -> dict:
    code = ("import time, sys; t=time.perf_counter(); from headstart.models import create_model; "
            f"m=create_model('onnx:{LIGHT / name}.onnx'); "
            "print(time.perf_counter()-t, len(m.stages), sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"model": name, "load_s": round(float(out[0]), 2), "stages": int(out[1]),
            "params_m": round(int(out[2]) / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    from headstart.data import find_images
    from headstart.features.extract import extract_codes
    from headstart.models import POOLED, create_model
    from headstart.models.onnx_backbone import save_as_onnx

    rows = [load_cost(n) for n in TOPOLOGIES]
    for r in rows:
        print(r)
    native = create_model("efficientnet_lite0")
    path = save_as_onnx(native, Path(tempfile.mkdtemp()) / "lite0.onnx")
    foreign = create_model(f"onnx:{path}")
    splits = {sp: find_images([args.data / sp]) for sp in ("train", "test")}
    labels = {sp: np.array([p.parent.name for p in files]) for sp, files in splits.items()}
    result: dict = {"light": rows, "lite0_roundtrip": {}}
    codes = {}
    for name, model in (("native", native), ("onnx", foreign)):
        extract_codes(splits["test"][:64], model, [POOLED], cache=None, backend="openvino", progress=False)  # warm
        t = time.perf_counter()
        got = {sp: extract_codes(files, model, [POOLED], cache=None, backend="openvino", progress=False).codes[POOLED]
               for sp, files in splits.items()}
        n = sum(len(f) for f in splits.values())
        codes[name] = got
        probe = LogisticRegression(max_iter=3000, C=1.0).fit(got["train"], labels["train"])
        acc = float((probe.predict(got["test"]) == labels["test"]).mean())
        result["lite0_roundtrip"][name] = {"img_per_s": round(n / (time.perf_counter() - t), 1),
                                           "probe_test_acc": round(100 * acc, 2), "images": n}
        print(name, result["lite0_roundtrip"][name])
    result["lite0_roundtrip"]["max_code_diff"] = float(max(np.abs(codes["native"][sp] - codes["onnx"][sp]).max()
                                                           for sp in splits))
    out = ROOT / "benchmarks" / "results" / "onnx_backbone" / f"{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["lite0_roundtrip"], indent=2))


if __name__ == "__main__":
    main()
