"""`headstart extract --engine ray` against the default engine: the same codes? Each runs from an empty cache
of its own (so every code is computed), on a local Ray instance with this machine's cores.

    python benchmarks/bench_ray.py --data ../shared/datasets/brain_mri

Result: benchmarks/results/ray/<dataset>.json (the two commands, their times, and how the codes compare).
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--layer", default="pooled,stage5")
    args = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            out, cache = Path(tmp) / engine, Path(tmp) / f"cache-{engine}"
            cmd = ["headstart", "extract", str(args.data), "--out", "D", "--layer", args.layer, "--engine", engine,
                   "--quiet"]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", *cmd[:4], str(out), *cmd[5:], "--cache-dir", str(cache)],
                                  check=True, capture_output=True, text=True)
            runs[engine] = {"command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
                            "summary": proc.stdout.strip().splitlines()[-1],
                            "index": json.loads((out / "index.json").read_text()),
                            "codes": {t: np.load(out / f"codes_{t}.npy") for t in args.layer.split(",")}}
            print(engine, runs[engine]["seconds"], "s:", runs[engine]["summary"], flush=True)
    local, ray = runs["local"], runs["ray"]
    compare = {t: {"shape": list(local["codes"][t].shape),
                   "identical": bool(np.array_equal(local["codes"][t], ray["codes"][t])),
                   "max_abs_diff": float(np.abs(local["codes"][t].astype(np.float32)
                                                - ray["codes"][t].astype(np.float32)).max())}
               for t in local["codes"]}
    result = {"data": str(args.data), "same_rows": local["index"]["rows"] == ray["index"]["rows"],
              "codes": compare, "runs": {k: {x: v[x] for x in ("command", "seconds", "summary")}
                                         for k, v in runs.items()}}
    print(json.dumps(result, indent=1))
    dest = ROOT / "benchmarks" / "results" / "ray" / f"{args.data.resolve().name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
