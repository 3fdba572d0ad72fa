"""The validation grid of the advisor (issue 14): does `--strategy auto` pick what wins on test?

    python benchmarks/bench_grid.py --rows intel_10,digits_10 --strategies linear_top,linear_best,auto
    python benchmarks/bench_grid.py --report          # the table, from the committed results only

Rows cover the four quadrants (size x similarity to ImageNet): the shared datasets subsampled to 10, 30, 50 and
100 training images per class or whole, scikit-learn's digits, and intel_scenes_small shifted on purpose
(blurred and noisy, grayscale-inverted, patch-shuffled). Test splits stay whole. Derived images are made
under --out (symlinks where unchanged) and never committed.

For every row: linear on the top codes and on the best stage (3 seeds), fine-tuning at K = 7 and K = 3
frozen stages (2 seeds), and auto (2 seeds). One small JSON per run goes to benchmarks/results/grid/<row>/
(committed), and a run whose JSON exists is not run again, so the grid fills in across sessions. --report
renders: the signals advise saw, each strategy's mean test accuracy, the best (a winner only by more than the
seed spread), and the regret of auto, always-linear, always-fine-tune and a size-only rule.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from headstart.advise.plan import LARGE_PER_CLASS  # the size-only rule's threshold is advise's

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "grid"
SHARED = ROOT.parent / "shared" / "datasets"


@dataclass(frozen=True)
class Row:
    source: str  # a folder of ../shared/datasets, or "digits"
    per_class: int = 0  # training images per class; 0: all
    shift: str = ""  # "", blur_noise, gray_inverted, patch_shuffled
    # Added after advise's size threshold (50) was set from the other rows' test figures: the rows it was
    # not designed on, reported apart.
    check: bool = False


ROWS = {
    "intel_10": Row("intel_scenes_small", 10), "intel_30": Row("intel_scenes_small", 30),
    "intel_50": Row("intel_scenes_small", 50, check=True),
    "intel_100": Row("intel_scenes_small", 100), "intel_all": Row("intel_scenes_small"),
    "brain_30": Row("brain_mri", 30), "brain_50": Row("brain_mri", 50, check=True), "brain_100": Row("brain_mri", 100),
    "brain_all": Row("brain_mri"),
    "digits_10": Row("digits", 10), "digits_50": Row("digits", 50, check=True), "digits_all": Row("digits"),
    "intel_100_blur_noise": Row("intel_scenes_small", 100, "blur_noise"),
    "intel_100_gray_inverted": Row("intel_scenes_small", 100, "gray_inverted"),
    "intel_100_patch_shuffled": Row("intel_scenes_small", 100, "patch_shuffled"),
}
# name -> (fit options, seeds)
STRATEGIES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "linear_top": ({"strategy": "linear", "linear": {"layer": "pooled"}}, (0, 1, 2)),
    "linear_best": ({"strategy": "linear", "linear": {"layer": "auto"}}, (0, 1, 2)),
    "ft_k7": ({"strategy": "finetune", "finetune": {"freeze": 7}}, (0, 1)),
    "ft_k3": ({"strategy": "finetune", "finetune": {"freeze": 3}}, (0, 1)),
    "auto": ({"strategy": "auto"}, (0, 1)),
}
FIXED = ("linear_top", "linear_best", "ft_k7", "ft_k3")  # what auto chooses among, in effect


# ---- derived datasets ---------------------------------------------------------------------------------------

def materialise(name: str, row: Row, data_root: Path) -> Path:
    dst = data_root / name
    if (dst / ".done").is_file():
        return dst
    if row.source == "digits":
        src = _digits(data_root / "_digits")
    else:
        src = SHARED / row.source
    for split in ("train", "test"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(p for p in cls.iterdir() if p.is_file())
            if split == "train" and row.per_class:
                files = random.Random(0).sample(files, min(row.per_class, len(files)))
            out = dst / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                if row.shift:
                    _shifted(f, row.shift).save(out / (f.stem + ".png"))
                elif not (out / f.name).exists():
                    (out / f.name).symlink_to(f.resolve())
    (dst / ".done").write_text("")
    return dst


def _digits(dst: Path) -> Path:
    """scikit-learn's 8x8 digits as 64x64 RGB PNGs, a stratified 20% test split (seed 0)."""
    if (dst / ".done").is_file():
        return dst
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
    for split, ids in (("train", tr), ("test", te)):
        for i in ids:
            out = dst / split / str(d.target[i])
            out.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
            img.convert("RGB").save(out / f"{i:04d}.png")
    (dst / ".done").write_text("")
    return dst


def _shifted(path: Path, kind: str) -> Image.Image:
    img = Image.open(path).convert("RGB")
    rng = np.random.default_rng(int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16))
    if kind == "blur_noise":
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
        return Image.fromarray(np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8))
    if kind == "gray_inverted":
        return ImageOps.invert(ImageOps.grayscale(img)).convert("RGB")
    if kind == "patch_shuffled":  # a 4x4 grid of tiles in a random order per image: texture stays, layout goes
        n = 4
        w, h = (img.width // n) * n, (img.height // n) * n
        a = np.asarray(img.crop((0, 0, w, h)))
        tiles = [a[r * h // n:(r + 1) * h // n, c * w // n:(c + 1) * w // n] for r in range(n) for c in range(n)]
        order = rng.permutation(len(tiles))
        rows = [np.concatenate([tiles[order[r * n + c]] for c in range(n)], 1) for r in range(n)]
        return Image.fromarray(np.concatenate(rows, 0))
    raise ValueError(kind)


# ---- runs ---------------------------------------------------------------------------------------------------

def run_one(row: str, data: Path, strategy: str, seed: int, out_root: Path) -> dict[str, Any]:
    from headstart.config import FitConfig, deep_update, from_dict
    from headstart.fit import fit

    options, _ = STRATEGIES[strategy]
    out = out_root / row / f"{strategy}_s{seed}"
    cfg = from_dict(FitConfig, deep_update({"out": str(out), "data": {"path": str(data), "seed": seed}}, options))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fit(cfg, progress=False, overwrite=True)
    rec = {"row": row, "strategy": strategy, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1),
           "test_accuracy": m["test"]["accuracy"], "test_balanced": m["test"]["balanced_accuracy"],
           "val_accuracy": m["val"]["accuracy"], "val_protocol": m["val"]["protocol"], "counts": m["counts"],
           "layer": m.get("layer"), "freeze": m.get("freeze"), "classes": len(m["classes"])}
    if strategy == "auto":
        advice = json.loads((out / "advice.json").read_text())
        taps = {t["tap"]: t["probe_accuracy"] for t in advice["taps"]}
        rec["auto"] = {"plan": m["auto"]["plan"]["strategy"], "quadrant": m["auto"]["plan"]["quadrant"],
                       "winner": m["auto"]["winner"], "kept": m["strategy"],
                       "summary": m["auto"]["plan"]["summary"]}
        rec["signals"] = {"per_class_median": advice["facts"]["per_class_median"],
                          "top_tap": taps.get("pooled"), "best_tap": advice["best_tap"],
                          "best_tap_accuracy": taps.get(advice["best_tap"])}
    return rec


# ---- the table ----------------------------------------------------------------------------------------------

def report() -> str:
    lines = ["| row | images/class | signals (top / best stage, CV) | " + " | ".join(FIXED) + " | auto (its pick) | "
             "best on test | regret: auto / always-linear / always-FT / size rule | cost |",
             "|---|---:|---|" + "---:|" * len(FIXED) + "---|---|---|---:|"]
    regrets: dict[str, list[float]] = {"auto": [], "linear_top": [], "ft_k3": [], "size": []}
    checks: dict[str, list[float]] = {k: [] for k in regrets}
    for row, spec in ROWS.items():
        recs = [json.loads(p.read_text()) for p in sorted((RESULTS / row).glob("*.json"))]
        if not recs:
            continue
        by = {s: [r["test_accuracy"] for r in recs if r["strategy"] == s] for s in STRATEGIES}
        mean = {s: statistics.mean(v) for s, v in by.items() if v}
        spread = {s: (max(v) - min(v)) for s, v in by.items() if v}
        auto = [r for r in recs if r["strategy"] == "auto"]
        sig = auto[0]["signals"] if auto else {}
        per_class = sig.get("per_class_median") or _per_class(recs)
        cells = [f"{100 * mean[s]:.1f}" + (f" ±{50 * spread[s]:.1f}" if spread.get(s) else "") if s in mean else "-"
                 for s in FIXED]
        fixed = {s: m for s, m in mean.items() if s in FIXED}
        best = max(fixed, key=fixed.get) if fixed else None
        second = sorted(fixed, key=fixed.get)[-2] if len(fixed) > 1 else None
        runner = fixed[second] if second else None
        noise = max(spread.get(best, 0.0), spread.get(second, 0.0)) if second else 0.0  # the two compared
        best_cell = "-" if best is None else (best if runner is None or fixed[best] - runner > noise else
                                              f"tie ({best} by {100 * (fixed[best] - runner):.1f})")
        # Regrets only for rows where every strategy and auto ran: the means then compare the same rows.
        complete = best is not None and len(fixed) == len(FIXED) and "auto" in mean
        regret_cells = []
        size_pick = "linear_best" if per_class < LARGE_PER_CLASS else "ft_k3"
        for key, value in (("auto", mean.get("auto")), ("linear_top", mean.get("linear_top")),
                           ("ft_k3", mean.get("ft_k3")), ("size", mean.get(size_pick))):
            if value is None or not complete:
                regret_cells.append("-")
                continue
            regrets[key].append(100 * (fixed[best] - value))
            if spec.check:
                checks[key].append(100 * (fixed[best] - value))
            regret_cells.append(f"{100 * (fixed[best] - value):.1f}")
        picks = ", ".join(sorted({f"{r['auto']['kept']}" + (f" K={r['freeze']}" if r["freeze"] is not None else
                                                            f" {r['layer']}") for r in auto}))
        auto_cell = f"{100 * mean['auto']:.1f} ({picks})" if "auto" in mean else "-"
        signals = (f"{100 * sig['top_tap']:.0f}% / {sig['best_tap']} {100 * sig['best_tap_accuracy']:.0f}%"
                   if sig else "-")
        cost = sum(r["wall_s"] for r in recs) / 60
        name = f"{row} (check)" if spec.check else row
        lines.append(f"| {name} | {per_class:g} | {signals} | " + " | ".join(cells) + f" | {auto_cell} | {best_cell} | "
                     + " / ".join(regret_cells) + f" | {cost:.0f} min |")
    def means(by: dict[str, list[float]]) -> str:
        return " · ".join(f"{k}: {statistics.mean(v):.2f} over {len(v)} rows" for k, v in by.items() if v)

    out = "\n".join(lines)
    if means(regrets):
        out += "\n\nmean regret (points): " + means(regrets)
    if means(checks):
        out += "\n\nof which the check rows (added after the size threshold was set): " + means(checks)
    return out


def _per_class(recs: list[dict[str, Any]]) -> float:
    """Training images (train + val) per class, from any run of the row."""
    c = recs[0]["counts"]
    return (c["train"] + c["val"]) / recs[0]["classes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seeds", default="", help="only these seeds (default: each strategy's own)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "grid")
    ap.add_argument("--report", action="store_true", help="only print the table of the committed results")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    only = {int(s) for s in args.seeds.split(",") if s}
    for row in args.rows.split(","):
        data = materialise(row, ROWS[row], args.out / "data")
        for strategy in args.strategies.split(","):
            for seed in STRATEGIES[strategy][1]:
                if only and seed not in only:
                    continue
                dest = RESULTS / row / f"{strategy}_s{seed}.json"
                if dest.is_file():
                    continue
                rec = run_one(row, data, strategy, seed, args.out)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(json.dumps(rec, indent=1) + "\n")
                print(f"{row} {strategy} s{seed}: test {100 * rec['test_accuracy']:.1f}% ({rec['wall_s']:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
