"""The baseline a user would write by hand: a plain full fine-tune of the same backbone, nothing frozen.

    python benchmarks/bench_plain_finetune.py --dataset intel_scenes_small --seed 0

Adam (lr 1e-4), 8 epochs, batch 32, random-resized crops (torchvision's default scale 0.08-1) and flips,
BatchNorm in training mode, cross-entropy, the last epoch kept. Same images as `headstart fit DATA`
with the same seed: trained on its train split (val left unused, as a script without early stopping
would), scored on its test split. Writes benchmarks/results/<dataset>/plain_full_ft_s<seed>/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headstart.config import DataConfig, FitConfig
from headstart.data.augment import AugmentConfig, TrainTransform
from headstart.data.decode import decode_image
from headstart.evaluate.metrics import classification_metrics
from headstart.fit.rundir import open_dataset
from headstart.models import create_model
from headstart.train.tta import evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="intel_scenes_small")
    ap.add_argument("--datasets-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    ds = open_dataset(FitConfig(data=DataConfig(path=str(args.datasets_root / args.dataset), seed=args.seed)))
    train = ds.splits["train"]
    torch.manual_seed(args.seed)
    model = create_model("efficientnet_lite0")
    model.reset_classifier(len(ds.classes), seed=args.seed)
    tf = TrainTransform(model.spec, AugmentConfig(hflip=True, crop="rrc", rrc_scale=(0.08, 1.0)))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = np.random.default_rng([args.seed, epoch]).permutation(len(train))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            rng = np.random.default_rng([args.seed, epoch, start])
            x = torch.from_numpy(np.stack([tf(decode_image(train[i].path), rng) for i in idx]))
            y = torch.as_tensor([train[i].label for i in idx])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    train_s = time.perf_counter() - t0
    test = ds.splits["test"]
    probs, labels = evaluate(model, [s.path for s in test])
    labels = np.array([s.label for s in test])
    metrics = {"benchmark": "plain full fine-tune", "dataset": args.dataset, "seed": args.seed,
               "recipe": f"Adam lr {args.lr}, {args.epochs} epochs, batch 32, rrc 0.08-1 + flip, nothing frozen",
               "counts": {k: len(v) for k, v in ds.splits.items()},
               "test": classification_metrics(labels, probs, ds.classes), "timing": {"train_s": round(train_s, 1)}}
    out = ROOT / "benchmarks" / "results" / args.dataset / f"plain_full_ft_s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{args.dataset} seed {args.seed}: test {metrics['test']['accuracy']:.4f} ({train_s:.0f}s training)")


if __name__ == "__main__":
    main()
