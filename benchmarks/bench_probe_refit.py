"""What the linear probe's refit on train + val is worth: test accuracy of the head fitted on train only vs
on train + val, at the chosen C and at ¼, ½, 2 and 4 times it.

    python benchmarks/bench_probe_refit.py RUN_DIR

RUN_DIR is a `headstart fit --layer pooled` run (its config, split and cached codes are reused; nothing is
re-extracted). For comparing strategies: fine-tuning keeps val for early stopping unless run with
--val-fraction 0.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from headstart.config import FitConfig, from_dict, load_toml
from headstart.fit.codes import SPLIT_IDS, extract_dataset
from headstart.fit.probe import make_head, select
from headstart.fit.rundir import open_dataset
from headstart.models import POOLED, create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    cfg: FitConfig = from_dict(FitConfig, load_toml(args.run / "config.toml"))
    ds = open_dataset(cfg)
    codes = extract_dataset(ds, create_model(cfg.model), [POOLED], cfg, progress=False)
    layer, C, _ = select(codes, [(POOLED,)], cfg, ds.classes)
    te = codes.split == SPLIT_IDS["test"]
    fits = {"train": codes.split == SPLIT_IDS["train"], "train + val": codes.split != SPLIT_IDS["test"]}
    print(f"| C (chosen: {C:.3g}) | " + " | ".join(f"test acc, head fitted on {k}" for k in fits) + " |")
    print("|---:|" + "---:|" * len(fits))
    for mult in (0.25, 0.5, 1, 2, 4):
        accs = []
        for mask in fits.values():
            head = make_head(cfg)(C * mult).fit(codes.X(layer, mask), codes.labels[mask])
            accs.append((head.predict_proba(codes.X(layer, te)).argmax(1) == codes.labels[te]).mean())
        print(f"| {mult:g}× | " + " | ".join(f"{a:.1%}" for a in accs) + " |")
    digest = {name: {hashlib.sha256(Path(s.path).read_bytes()).hexdigest() for s in items}
              for name, items in ds.splits.items()}
    test = [hashlib.sha256(Path(s.path).read_bytes()).hexdigest() for s in ds.splits["test"]]
    in_val_only = sum(h in digest["val"] and h not in digest["train"] for h in test)
    print(f"\ntest images with a byte-identical copy in train: {sum(h in digest['train'] for h in test)}, "
          f"only in val: {in_val_only} (seen by the train + val refit only)")


if __name__ == "__main__":
    main()
