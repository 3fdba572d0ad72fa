"""Does int8 (OpenVINO + NNCF post-training quantisation) keep the fixed extractor's accuracy? Per dataset:
pooled lite0 codes of the train and test splits in fp32 and in int8 (calibrated on 300 training images, content
order), their cosine similarity, and a linear probe's test accuracy on each (softmax regression, C chosen by
5-fold cross-validation on train, the same way for both), over the probe's 3 CV seeds.

    python benchmarks/bench_int8.py ../shared/datasets/intel_scenes_small ../shared/datasets/brain_mri

The rule of issue 15: int8 becomes the default only if test accuracy stays within 0.3 points of fp32 on every
dataset and the codes' cosine similarity is >= 0.99. Results: benchmarks/results/int8/<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

from headstart.data import ImageFolder
from headstart.features import extract_codes
from headstart.heads.softmax import SoftmaxRegression
from headstart.models import POOLED, create_model

ROOT = Path(__file__).resolve().parents[1]
CS = (0.01, 0.1, 1.0, 10.0)


def probe(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, seed: int) -> dict:
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = {C: cross_val_score(SoftmaxRegression(C=C), Xtr, ytr, cv=folds).mean() for C in CS}
    C = max(scores, key=scores.get)
    acc = float((SoftmaxRegression(C=C).fit(Xtr, ytr).predict(Xte) == yte).mean())
    return {"C": C, "cv_accuracy": float(scores[C]), "test_accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    model = create_model("efficientnet_lite0")
    for data in args.datasets:
        ds = ImageFolder(data, val_fraction=0.0)
        train, test = ds.splits["train"], ds.splits["test"]
        codes, seconds = {}, {}
        for precision in ("fp32", "int8"):
            t0 = time.perf_counter()
            res = extract_codes([s.path for s in train + test], model, [POOLED], cache=None, progress=False,
                                precision=precision, calibrate_on=[s.path for s in train])
            seconds[precision] = round(time.perf_counter() - t0, 1)
            codes[precision] = (res.codes[POOLED], res.index)
        (a, ia), (b, ib) = codes["fp32"], codes["int8"]
        assert np.array_equal(ia, ib)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        labels = np.array([s.label for s in train + test])[ia]
        is_train = ia < len(train)
        rows = {p: [probe(X[is_train], labels[is_train], X[~is_train], labels[~is_train], seed) for seed in args.seeds]
                for p, (X, _) in codes.items()}
        mean = {p: float(np.mean([r["test_accuracy"] for r in rs])) for p, rs in rows.items()}
        result = {"data": str(data), "train": int(is_train.sum()), "test": int((~is_train).sum()),
                  "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                  "cosine_p01": float(np.quantile(cos, 0.01)), "seconds": seconds, "probe": rows,
                  "test_accuracy_mean": mean, "delta_points": round(100 * (mean["int8"] - mean["fp32"]), 2)}
        print(json.dumps({k: v for k, v in result.items() if k != "probe"}), flush=True)
        dest = ROOT / "benchmarks" / "results" / "int8" / f"{data.resolve().name}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
