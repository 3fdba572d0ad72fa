"""Does `torchrun --nproc-per-node 2 -m headstart fit ...` train as one process does with the same global batch?
Runs the same fine-tuning command as one process and under torchrun (2 gloo processes, each half of every
batch), per seed, and records each run's validation curve, test figures and time.

    python benchmarks/bench_ddp.py --data ../shared/datasets/intel_scenes_small --epochs 2 --seeds 0 1

Results (with every run's metrics.json) go to benchmarks/results/ddp/<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            fit = ["-m", "headstart", "fit", str(args.data), "--strategy", "finetune", "--epochs", str(args.epochs),
                   "--seed", str(seed), "--quiet"]
            for how, launch in (("1 process", [sys.executable]),
                                (f"torchrun {args.nproc}", [sys.executable, "-m", "torch.distributed.run",
                                                            "--standalone", "--nproc-per-node", str(args.nproc)])):
                out = Path(tmp) / f"{seed}-{len(rows)}"
                seconds = run(launch + fit + ["--out", str(out)])
                m = json.loads((out / "metrics.json").read_text())
                curves = [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]
                rows.append({"seed": seed, "launch": how, "seconds": round(seconds, 1),
                             "command": " ".join(["headstart" if c == sys.executable else c for c in launch]
                                                 + fit[2:] + ["--out", "R"]),
                             "test_accuracy": m["test"]["accuracy"], "test_log_loss": m["test"]["log_loss"],
                             "val_accuracy": m["val"]["accuracy"], "processes": m["training"]["processes"],
                             "curves": [{k: c[k] for k in ("epoch", "train_loss", "val_loss", "val_acc")}
                                        for c in curves], "metrics": m})
                print(f"seed {seed} {how}: test {m['test']['accuracy']:.2%}, val loss "
                      f"{[round(c['val_loss'], 4) for c in curves]}, {seconds:.0f} s", flush=True)
    dest = ROOT / "benchmarks" / "results" / "ddp" / f"{args.data.resolve().name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"data": str(args.data), "epochs": args.epochs, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
