"""Does `--layer auto` choose the same layer when the split is redrawn, and what does the choice score on test?

    python benchmarks/bench_selection.py --dataset intel_scenes_small --per-class 30 --seeds 0,1,2

For each seed (which redraws the validation split) and with/without five junk files added to train (which
also redraw it, as in issue 14), a linear run with `--layer auto` under `--selection val` (one 15% split
decides) and `--selection cv` (repeated stratified k-fold on train+val, one-standard-error rule between
layers). `--per-class N` trains on a seeded subsample of N images per class (the test split stays whole);
the subsample is made of symlinks under --out. Prints one row per run and writes
benchmarks/results/<dataset>/selection_<N>/metrics.json with every row.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

from headstart.config import DataConfig, FitConfig, LinearConfig
from headstart.fit import fit

ROOT = Path(__file__).resolve().parents[1]


def derived(src: Path, dst: Path, per_class: int, junk: int) -> Path:
    """``dst``: src's test split, and per class ``per_class`` train images (all when 0) plus junk files."""
    if dst.exists():
        return dst
    (dst / "test").parent.mkdir(parents=True, exist_ok=True)
    (dst / "test").symlink_to((src / "test").resolve(), target_is_directory=True)
    classes = sorted(p for p in (src / "train").iterdir() if p.is_dir())
    for c, cls in enumerate(classes):
        files = sorted(p for p in cls.iterdir() if p.is_file())
        if per_class:
            files = random.Random(0).sample(files, min(per_class, len(files)))
        out = dst / "train" / cls.name
        out.mkdir(parents=True)
        for f in files:
            (out / f.name).symlink_to(f.resolve())
        for j in range(c, junk, len(classes)):  # spread over the classes
            (out / f"junk{j}.jpg").write_bytes(b"not an image")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="intel_scenes_small")
    ap.add_argument("--datasets-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--per-class", type=int, default=0, help="train images per class (0: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--junk", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "selection")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*could not be decoded")  # the junk files, on purpose
    src = args.datasets_root / args.dataset
    tag = f"{args.dataset}_{args.per_class or 'all'}"
    rows = []
    print("| selection | seed | junk | layer | C | val (protocol) | test acc | fit s |")
    print("|---|---:|---:|---|---:|---|---:|---:|")
    for junk in (0, args.junk):
        data = derived(src, args.out / "data" / f"{tag}_junk{junk}", args.per_class, junk)
        for seed in (int(s) for s in args.seeds.split(",")):
            for selection in ("val", "cv"):
                out = args.out / tag / f"{selection}_s{seed}_junk{junk}"
                cfg = FitConfig(out=str(out), strategy="linear", data=DataConfig(path=str(data), seed=seed),
                                linear=LinearConfig(layer="auto", selection=selection))
                t0 = time.perf_counter()
                m = fit(cfg, progress=False, overwrite=True)
                row = {"selection": selection, "seed": seed, "junk": junk, "layer": m["layer"], "C": m["C"],
                       "val_accuracy": m["val"]["accuracy"], "protocol": m["val"]["protocol"],
                       "test_accuracy": m["test"]["accuracy"], "fit_s": m["timing"]["fit_s"],
                       "wall_s": round(time.perf_counter() - t0, 1), "counts": m["counts"]}
                rows.append(row)
                print(f"| {selection} | {seed} | {junk} | {row['layer']} | {row['C']:.3g} | "
                      f"{100 * row['val_accuracy']:.1f}% ({row['protocol'].split(',')[0]}) | "
                      f"{100 * row['test_accuracy']:.1f}% | "
                      f"{row['fit_s']:.0f} |", flush=True)
    res = ROOT / "benchmarks" / "results" / args.dataset / f"selection_{args.per_class or 'all'}"
    res.mkdir(parents=True, exist_ok=True)
    (res / "metrics.json").write_text(json.dumps({"command": vars(args) | {"datasets_root": None, "out": None},
                                                  "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
