"""WiSE-FT after the fact: val and test accuracy along the line from the LP-FT start to a fine-tuned run.

    python benchmarks/bench_wise.py RUN_DIR [--alphas 0,0.25,0.5,0.75,1]

RUN_DIR is a `headstart fit --strategy finetune` run with the default LP-FT start (head_init = probe) and
without --wise-ft. The start is rebuilt exactly as fit builds it (pretrained weights + the probe head,
fitted on the cached codes with the run's own config); the fine-tuned end is the run's bundle. Each α is
`headstart fit ... --wise-ft α` without retraining. The test column is for the benchmark table only: an α
chosen by it would have seen the test split (fit's --wise-ft takes α from the user, never from test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from headstart.config import FitConfig, from_dict, load_toml
from headstart.fit.codes import extract_dataset
from headstart.fit.finetune import probe_head
from headstart.fit.rundir import open_dataset
from headstart.models import POOLED, create_model
from headstart.train import ImageSet, evaluate
from headstart.train.checkpoint import clone_state
from headstart.train.wise import interpolate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = ap.parse_args()
    cfg: FitConfig = from_dict(FitConfig, load_toml(args.run / "config.toml"))
    ft = cfg.finetune
    if ft.head_init != "probe" or ft.wise_ft != 1.0 or cfg.data.val_fraction == 0:
        raise SystemExit(f"{args.run}: needs a run with head_init = probe, a validation split and no --wise-ft")
    ds = open_dataset(cfg)
    model = create_model(cfg.model, drop_rate=ft.dropout, drop_path_rate=ft.drop_path)
    codes = extract_dataset(ds, model, [POOLED], cfg, progress=False)
    probe_head(model, codes, cfg, ds.classes)
    start = clone_state(model)
    tuned = load_file(str(args.run / "bundle" / "weights.safetensors"))
    skipped = {f.path for f in codes.failures}
    sets = {name: ImageSet.from_samples([s for s in ds.splits[name] if s.path not in skipped])
            for name in ("val", "test")}
    rows = []
    print(f"| α (fine-tuned share) | val acc | test acc (tta {ft.tta}) |\n|---:|---:|---:|")
    for alpha in (float(a) for a in args.alphas.split(",")):
        model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tuned.items()})
        interpolate(model, start, alpha)
        acc = {}
        for name, data in sets.items():
            probs, labels = evaluate(model, data, tta=ft.tta if name == "test" else "none")
            acc[name] = float((probs.argmax(1) == labels).mean())
        rows.append({"alpha": alpha, "val_accuracy": acc["val"], "test_accuracy": acc["test"]})
        print(f"| {alpha:g} | {acc['val']:.1%} | {acc['test']:.1%} |", flush=True)
    (args.run / "wise_sweep.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
