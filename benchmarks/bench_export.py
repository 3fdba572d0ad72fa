"""How closely does `headstart export` reproduce `headstart predict`? For each run: export it in every format,
run the export's own predict.py (in a fresh process, as a user would) on test photos, and compare with the
library's probabilities: top-1 agreement and the largest absolute difference.

    python benchmarks/bench_export.py --images ../shared/datasets/intel_scenes_small/test RUN_DIR...

One JSON per run goes to benchmarks/results/export/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from headstart.bundle import load
from headstart.export import FORMATS, export_run

ROOT = Path(__file__).resolve().parents[1]


def exported_proba(folder: Path, images: list[str], dest: Path) -> np.ndarray:
    code = ("import sys, importlib.util as u, numpy as np; sys.argv = ['p']; "
            f"s = u.spec_from_file_location('p', {str(folder / 'predict.py')!r}); m = u.module_from_spec(s); "
            f"s.loader.exec_module(m); np.save({str(dest)!r}, m.predict({images!r}))")
    subprocess.run([sys.executable, "-c", code], check=True)
    return np.load(dest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--every", type=int, default=40, help="take every k-th image of the folder, sorted")
    ap.add_argument("--count", type=int, default=15)
    args = ap.parse_args()
    images = [str(p) for p in sorted(args.images.rglob("*.jpg"))[::args.every][:args.count]]
    for run in args.runs:
        want = load(run, backend="torch").predict_proba(images)
        rec = {"run": str(run), "kind": json.loads((run / "bundle" / "bundle.json").read_text())["kind"],
               "images": len(images), "formats": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in FORMATS:
                got = exported_proba(export_run(run, Path(tmp) / fmt, fmt=fmt), images, Path(tmp) / f"{fmt}.npy")
                rec["formats"][fmt] = {"top1_equal": bool((got.argmax(1) == want.argmax(1)).all()),
                                       "max_abs_diff": float(np.abs(got - want).max())}
        out = ROOT / "benchmarks" / "results" / "export" / f"{run.parent.name}_{run.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1) + "\n")
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
