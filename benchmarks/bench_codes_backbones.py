"""A stronger fixed extractor, second try (issue 14; §11 tried mirror-averaged codes): the pooled codes of a
bigger zoo network (lite1 at 240 px, lite2 at 260), of all three concatenated (an ensemble at the cost of three
extractions), and of lite0 at a higher input resolution (288 px instead of 224), each against lite0's own codes
under the linear strategy's choice of C (bench_codes_tta.evaluate), on the same test images: paired.

    python benchmarks/bench_codes_backbones.py --data ../shared/datasets/intel_scenes_small [--name ROW]

Codes come from the feature cache (keyed by model, weights and preprocessing, so lite0 at 288 px has its own).
Extraction time is what this run spent computing codes not yet cached (0 when all were). One JSON per row goes
to benchmarks/results/codes_backbones/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codes_tta import evaluate  # noqa: E402 - one definition of "the linear strategy's test accuracy"

from headstart.config import DataConfig, EngineConfig, FitConfig  # noqa: E402
from headstart.fit.codes import Codes, extract_dataset  # noqa: E402
from headstart.fit.rundir import open_dataset  # noqa: E402
from headstart.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "codes_backbones"
VARIANTS = {"lite0": ("efficientnet_lite0", None), "lite1": ("efficientnet_lite1", None),
            "lite2": ("efficientnet_lite2", None), "lite0_288": ("efficientnet_lite0", 288)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", default="", help="row name (default: the folder's name)")
    args = ap.parse_args()
    name = args.name or args.data.name
    cfg = FitConfig(strategy="linear", data=DataConfig(path=str(args.data)), engine=EngineConfig())
    ds = open_dataset(cfg)
    by_tap: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    base: Codes | None = None
    for variant, (model, size) in VARIANTS.items():
        backbone = create_model(model)
        if size is not None:
            backbone.spec = dataclasses.replace(backbone.spec, input_size=size)
        t = time.perf_counter()
        codes = extract_dataset(ds, backbone, ["pooled"], cfg, progress=False)
        seconds[variant] = round(time.perf_counter() - t, 1)
        if base is None:
            base = codes
        assert codes.hashes == base.hashes, "the variants must see the same images in the same order"
        by_tap[variant] = codes.by_tap["pooled"].astype(np.float32)
    assert base is not None
    codes = Codes(by_tap, base.labels, base.split, hashes=base.hashes)
    arms = {v: (v,) for v in VARIANTS} | {"lite0+1+2": ("lite0", "lite1", "lite2")}
    rec: dict = {"data": name, "extraction_s": seconds, "arms": {}}
    ok_base = None
    for arm, layer in arms.items():
        ok, sel = evaluate(codes, layer, cfg, ds.classes)
        ok_base = ok if ok_base is None else ok_base
        rec["arms"][arm] = {"test_accuracy": float(ok.mean()), "fixed": int((ok & ~ok_base).sum()),
                            "broken": int((ok_base & ~ok).sum()), **sel}
        print(f"{name} {arm}: {100 * ok.mean():.1f}% (vs lite0: fixed {rec['arms'][arm]['fixed']}, "
              f"broke {rec['arms'][arm]['broken']} of {ok.size})")
    rec["test_images"] = int(ok_base.size) if ok_base is not None else 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
