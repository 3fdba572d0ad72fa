"""How much of a test figure is copies: accuracy on the test images that are byte-identical or near-copies of
training images, and on the rest, for the linear probe and for any runs given.

    python benchmarks/bench_copies.py --dataset brain_mri [--runs RUN_DIR ...]

Copies are found as `fit` finds them (fit.checks: SHA-256 for exact copies, cosine >= 0.99 of lite0's pooled
codes for near-copies). The linear probe is `headstart fit DATA` (pooled codes, C chosen as fit chooses it);
each RUN_DIR's bundle predicts the same test images with its own TTA. Writes
benchmarks/results/<dataset>/copies/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from headstart.bundle import load
from headstart.config import DataConfig, FitConfig
from headstart.ensemble import run_proba
from headstart.features.cache import hash_file
from headstart.fit.checks import near_duplicate_pairs
from headstart.fit.codes import SPLIT_IDS, extract_dataset
from headstart.fit.probe import make_head, select
from headstart.fit.rundir import open_dataset
from headstart.models import create_model
from headstart.train import ImageSet

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="brain_mri")
    ap.add_argument("--datasets-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--runs", nargs="*", type=Path, default=[])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    cfg = FitConfig(data=DataConfig(path=str(args.datasets_root / args.dataset)))
    ds = open_dataset(cfg)
    backbone = create_model(cfg.model)
    codes = extract_dataset(ds, backbone, ["pooled"], cfg, progress=False)
    te, rest = np.flatnonzero(codes.split == SPLIT_IDS["test"]), np.flatnonzero(codes.split != SPLIT_IDS["test"])
    hashes = np.asarray(codes.hashes)
    exact = np.isin(hashes[te], hashes[rest])
    near = np.zeros(len(te), bool)
    for q, _, _ in near_duplicate_pairs(codes.by_tap["pooled"], te, rest, list(hashes)):
        near[np.searchsorted(te, q)] = True
    groups = {"exact copies": exact, "near copies": near & ~exact, "new images": ~exact & ~near}

    sel = select(codes, [("pooled",)], cfg, ds.classes)
    head = make_head(cfg)(sel.C).fit(codes.X(("pooled",), rest), codes.labels[rest])
    correct = {"linear probe (fit's defaults)": head.predict(codes.X(("pooled",), te)) == codes.labels[te]}
    for run in args.runs:  # each test file predicted by the run's bundle, matched to the rows by content hash
        metrics = json.loads((run / "metrics.json").read_text())
        samples = list(ds.splits["test"])
        probs = run_proba(load(run / "bundle"), ImageSet.from_samples(samples),
                          tta=metrics["test"].get("tta", "none"), batch_size=32)
        pred = {hash_file(s.path): int(p) for s, p in zip(samples, probs.argmax(1))}
        correct[str(run)] = np.array([pred[h] for h in hashes[te]]) == codes.labels[te]

    rows = []
    for who, ok in correct.items():
        row = {"model": who, "all": round(float(ok.mean()), 4)}
        row |= {g: {"images": int(m.sum()), "accuracy": round(float(ok[m].mean()), 4) if m.any() else None}
                for g, m in groups.items()}
        rows.append(row)
        print(f"{who}: all {100 * row['all']:.1f}% · " + " · ".join(
            f"{g} {row[g]['images']}: {100 * row[g]['accuracy']:.1f}%" for g in groups))
    out = ROOT / "benchmarks" / "results" / args.dataset / "copies"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
