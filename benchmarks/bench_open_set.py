"""How well does `predict --reject auto` catch images of a class the model never saw? Leave one class out:
train the linear strategy (pooled codes, its own choice of C) on the other classes, calibrate the threshold as
fit does (5th percentile of out-of-fold max-softmax on train+val), then score the dataset's test split: images
of the held-out class should be answered "unknown", the others should not.

    python benchmarks/bench_open_set.py --data ../shared/datasets/intel_scenes_small

Per held-out class: AUROC of the max-softmax score (known vs unknown test images), and at the auto threshold
the share of unknown images refused, the share of known images kept (coverage) and the accuracy on those.
One JSON per dataset goes to benchmarks/results/open_set/.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from headstart.advise.probe import CV_SEED
from headstart.config import DataConfig, FitConfig
from headstart.fit.codes import SPLIT_IDS, Codes, extract_dataset
from headstart.fit.probe import make_head, select
from headstart.fit.reject import calibration, out_of_fold_max_proba
from headstart.fit.rundir import open_dataset
from headstart.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TAP = "pooled"
KNN = 10


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def leave_out(codes: Codes, held: int, cfg: FitConfig, classes: list[str]) -> dict:
    keep = codes.labels != held
    remap = np.array([i - (i > held) for i in range(len(classes))])  # the known classes, renumbered 0..K-2
    labels = np.where(keep, remap[codes.labels], -1)
    known = Codes({TAP: codes.by_tap[TAP][keep]}, labels[keep], codes.split[keep],
                  hashes=[h for h, k in zip(codes.hashes, keep) if k])
    names = [c for i, c in enumerate(classes) if i != held]
    sel = select(known, [(TAP,)], cfg, names)
    fit = known.split != SPLIT_IDS["test"]
    head = make_head(cfg)(sel.C).fit(known.X((TAP,), fit), known.labels[fit])
    pool = known.canonical(fit)
    cal = calibration(out_of_fold_max_proba(lambda: make_head(cfg)(sel.C), known.X((TAP,), pool),
                                            known.labels[pool], seed=CV_SEED), "oof")
    te = codes.split == SPLIT_IDS["test"]
    probs = head.to_params().predict_proba(codes.by_tap[TAP][te].astype(np.float32))
    msp, is_known = probs.max(axis=1), keep[te]
    kept = msp >= cal["threshold"]
    correct = probs.argmax(axis=1) == labels[te]
    # For comparison (not what --reject uses): the deep-nearest-neighbour score (Sun et al., ICML 2022), minus
    # the cosine distance of an image's code to its k-th nearest training code.
    train = _unit(known.X((TAP,), fit))
    sims = _unit(codes.by_tap[TAP][te].astype(np.float32)) @ train.T
    knn = np.sort(sims, axis=1)[:, -KNN]
    return {"held_out": classes[held], "threshold": cal["threshold"], "auroc": float(roc_auc_score(is_known, msp)),
            "auroc_knn": float(roc_auc_score(is_known, knn)),
            "unknown_refused": float((~kept[~is_known]).mean()), "known_kept": float(kept[is_known].mean()),
            "accuracy_on_kept_known": float(correct[is_known & kept].mean()),
            "accuracy_on_all_known": float(correct[is_known].mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    name = args.name or args.data.name
    cfg = FitConfig(strategy="linear", data=DataConfig(path=str(args.data)))
    ds = open_dataset(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = extract_dataset(ds, create_model(cfg.model), [TAP], cfg, progress=False)
    rows = [leave_out(codes, c, cfg, ds.classes) for c in range(len(ds.classes))]
    for r in rows:
        print(f"{name} without {r['held_out']}: AUROC {r['auroc']:.3f} (kNN {r['auroc_knn']:.3f}), unknown refused "
              f"{r['unknown_refused']:.1%}, known kept {r['known_kept']:.1%} (accuracy "
              f"{r['accuracy_on_kept_known']:.1%} vs {r['accuracy_on_all_known']:.1%} on all)", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("auroc", "auroc_knn", "unknown_refused", "known_kept",
                                                              "accuracy_on_kept_known", "accuracy_on_all_known")}
    out = ROOT / "benchmarks" / "results" / "open_set" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": name, "score": "max_softmax", "mean": mean, "rows": rows}, indent=1) + "\n")
    print(json.dumps({"data": name, "mean": mean}))


if __name__ == "__main__":
    main()
