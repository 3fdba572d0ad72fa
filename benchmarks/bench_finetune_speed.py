"""Fine-tuning speed per epoch with the first K stages frozen: naive freezing vs headstart's prefix paths.

    python benchmarks/bench_finetune_speed.py --n 256 --freeze 5,6,7

naive:   requires_grad=False on the first K stages, everything else as a careful user writes it
         (decode + resize every epoch, eager torch forward through the whole network, backward, AdamW).
online:  headstart, frozen prefix through the inference engine without autograd every batch
         (what runs when augmentation is on).
cached:  headstart, frozen prefix computed once (the one-off cost is reported apart), each epoch only
         runs the trainable suffix (augmentation off).
Steady-state images/s of the second epoch; all three measured in the same run, same images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headstart.data import BatchLoader, EvalTransform, ImageFolder
from headstart.models import create_model
from headstart.train import ImageSet, OptimConfig, train

ROOT = Path(__file__).resolve().parents[1]


def naive_epoch_rate(paths: list[Path], labels: np.ndarray, k: int, batch: int) -> float:
    model = create_model("efficientnet_lite0", num_classes=int(labels.max()) + 1)
    for stage in list(model.stages.values())[:k]:
        for p in stage.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tf = EvalTransform(model.spec)
    rates = []
    for _ in range(2):
        model.train()
        t0, n = time.perf_counter(), 0
        for b in BatchLoader(paths, tf, batch_size=batch, draft_size=tf.draft_size):
            x, y = torch.from_numpy(b.images), torch.from_numpy(labels[b.indices])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
        rates.append(n / (time.perf_counter() - t0))
    return rates[-1]


def headstart_rates(paths: list[Path], labels: np.ndarray, k: int, batch: int, cache: bool) -> tuple[float, float]:
    model = create_model("efficientnet_lite0", num_classes=int(labels.max()) + 1)
    res = train(model, ImageSet(paths, labels), None, optim_cfg=OptimConfig(lr=1e-4), epochs=2, freeze=k,
                batch_size=batch, cache=cache)
    return len(paths) / res.history[-1]["seconds"], res.timings.get("setup_s", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "intel_scenes_small")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--freeze", default="5,6,7")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    ds = ImageFolder(args.data)
    samples = ds.splits["train"][: args.n]
    paths, labels = [s.path for s in samples], np.array([s.label for s in samples])
    stages = list(create_model("efficientnet_lite0", pretrained=False).stages)
    print(f"efficientnet_lite0, {len(paths)} real JPEGs at 224, batch {args.batch}, images/s of an epoch\n")
    print("| freeze K (frozen stages) | naive | headstart online | headstart cached | cached vs naive | one-off prefix pass |")
    print("|---|---|---|---|---|---|")
    for k in (int(v) for v in args.freeze.split(",")):
        naive = naive_epoch_rate(paths, labels, k, args.batch)
        online, _ = headstart_rates(paths, labels, k, args.batch, cache=False)
        cached, setup = headstart_rates(paths, labels, k, args.batch, cache=True)
        print(f"| {k} ({stages[0]}..{stages[k - 1]}) | {naive:.1f} | {online:.1f} | {cached:.1f} | "
              f"{cached / naive:.1f}× | {setup:.1f}s |", flush=True)


if __name__ == "__main__":
    main()
