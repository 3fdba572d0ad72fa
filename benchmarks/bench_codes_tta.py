"""Does a stronger fixed extractor pay? Codes averaged over the image and its mirror (test-time augmentation
on codes, for training and test images alike), against the plain codes, with the linear strategy's own
choice of C (repeated cross-validation on train+val below 2,000 images, else the val split).

    python benchmarks/bench_codes_tta.py --data ../shared/datasets/intel_scenes_small --tap pooled

The plain codes come from the feature cache (as `headstart fit --strategy linear` reads them); the mirrored
ones are computed here with the torch backbone (not cached: the cache has no key for a mirrored view). The
test split is the dataset's own; both arms see the same images, so the comparison is paired: the table
counts test images that averaging fixed and broke. One JSON per dataset and tap goes to
benchmarks/results/codes_tta/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

from headstart.config import DataConfig, EngineConfig, FitConfig
from headstart.data import BatchLoader, EvalTransform
from headstart.engine.codes import CodesModule
from headstart.fit.codes import SPLIT_IDS, Codes, extract_dataset
from headstart.fit.probe import make_head, select
from headstart.fit.rundir import open_dataset
from headstart.models import create_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "codes_tta"


def mirrored_codes(paths: list[Path], model: str, tap: str, batch_size: int = 32) -> np.ndarray:
    backbone = create_model(model)
    module = CodesModule(backbone, [tap]).eval()
    transform = EvalTransform(backbone.spec)
    loader = BatchLoader(paths, transform=lambda img: transform(ImageOps.mirror(img.convert("RGB"))),
                         batch_size=batch_size)
    out = np.zeros((len(paths), backbone.num_features[tap]), dtype=np.float32)
    with torch.inference_mode():
        for batch in loader:
            out[batch.indices] = module(torch.from_numpy(batch.images))[0].numpy()
    if loader.failures:
        raise RuntimeError(f"{len(loader.failures)} files failed here but not in the cached pass")
    return out


def evaluate(codes: Codes, tap: str | tuple[str, ...], cfg: FitConfig, classes: list[str]) -> tuple[np.ndarray, dict]:
    """Per test image, whether the linear strategy's head (C chosen as `fit` chooses it) is right."""
    layer = tap if isinstance(tap, tuple) else (tap,)  # a tuple: the taps' codes concatenated
    sel = select(codes, [layer], cfg, classes)
    fit = codes.split != SPLIT_IDS["test"]
    head = make_head(cfg)(sel.C).fit(codes.X(layer, fit), codes.labels[fit])
    te = codes.split == SPLIT_IDS["test"]
    pred = head.to_params().predict_proba(codes.X(layer, te)).argmax(1)
    return pred == codes.labels[te], {"C": sel.C, "val_accuracy": sel.accuracy, "protocol": sel.protocol}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", default="", help="row name (default: the folder's name)")
    ap.add_argument("--tap", default="pooled")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--cache-dir", default="")
    args = ap.parse_args()
    name = args.name or args.data.name
    cfg = FitConfig(strategy="linear", model=args.model, data=DataConfig(path=str(args.data)),
                    engine=EngineConfig(cache_dir=args.cache_dir))
    ds = open_dataset(cfg)
    backbone = create_model(args.model)
    t0 = time.perf_counter()
    plain = extract_dataset(ds, backbone, [args.tap], cfg, progress=False)
    samples = [s for items in ds.splits.values() for s in items]
    # extract_dataset keeps the decodable files in split order: the same order here
    failed = {f.path for f in plain.failures}
    kept = [s.path for s in samples if s.path not in failed]
    assert len(kept) == len(plain.labels), (len(kept), len(plain.labels))
    t1 = time.perf_counter()
    mirror = mirrored_codes(kept, args.model, args.tap)
    mirror_s = time.perf_counter() - t1
    averaged = Codes({args.tap: (plain.by_tap[args.tap].astype(np.float32) + mirror) / 2}, plain.labels,
                     plain.split, hashes=plain.hashes)
    ok_plain, sel_plain = evaluate(plain, args.tap, cfg, ds.classes)
    ok_avg, sel_avg = evaluate(averaged, args.tap, cfg, ds.classes)
    rec = {"data": name, "tap": args.tap, "model": args.model, "test_images": int(ok_plain.size),
           "plain": {"test_accuracy": float(ok_plain.mean()), **sel_plain},
           "flip_averaged": {"test_accuracy": float(ok_avg.mean()), **sel_avg},
           "fixed": int((ok_avg & ~ok_plain).sum()), "broken": int((ok_plain & ~ok_avg).sum()),
           "mirror_extraction_s": round(mirror_s, 1), "total_s": round(time.perf_counter() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}_{args.tap}.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{name} {args.tap}: plain {100 * ok_plain.mean():.1f}% -> flip-averaged {100 * ok_avg.mean():.1f}% "
          f"(fixed {rec['fixed']}, broke {rec['broken']} of {ok_plain.size}; mirror pass {mirror_s:.0f} s)")


if __name__ == "__main__":
    main()
