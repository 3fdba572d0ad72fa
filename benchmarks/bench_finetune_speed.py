"""Fine-tuning speed per epoch with the first K stages frozen: naive freezing vs headstart's prefix paths.

    python benchmarks/bench_finetune_speed.py --n 256 --freeze 5,6,7

naive:   requires_grad=False on the first K stages, everything else as a careful user writes it
         (decode + resize every epoch, eager torch forward through the whole network, backward, AdamW).
online:  headstart, frozen prefix through the inference engine without autograd every batch
         (what runs when augmentation is on).
cached:  headstart, frozen prefix computed once (the one-off cost is reported apart), each epoch only
         runs the trainable suffix (augmentation off).
Steady-state images/s: the best of epochs 2-3 (epoch 1 warms up allocators and the engine); all three
measured in the same run, same images. headstart runs with the CLI's defaults (BatchNorm statistics fixed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headstart.data import BatchLoader, EvalTransform, ImageFolder
from headstart.models import create_model
from headstart.train import ImageSet, OptimConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suffix_step import child  # noqa: E402  (the one timing of the suffix step)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def naive_epoch_rate(paths: list[Path], labels: np.ndarray, k: int, batch: int) -> float:
    model = create_model("efficientnet_lite0", num_classes=int(labels.max()) + 1)
    for stage in list(model.stages.values())[:k]:
        for p in stage.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tf = EvalTransform(model.spec)
    rates = []
    for _ in range(EPOCHS):
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
    return max(rates[1:])


def frozen_mac_share(k: int) -> float:
    """Share of the forward multiply-adds (convolutions + classifier, one 224 image) in the first k stages."""
    model = create_model("efficientnet_lite0", pretrained=False).eval()
    macs: list[tuple[str, int]] = []

    def hook(name: str):  # noqa: ANN202
        def count(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            per_out = mod.weight[0].numel()  # (in/groups)·kh·kw for a conv, in_features for a linear layer
            macs.append((name, out.numel() * per_out))
        return count

    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    frozen = tuple(f"stages.{s}." for s in list(model.stages)[:k])
    return sum(m for n, m in macs if n.startswith(frozen)) / sum(m for _, m in macs)


def suffix_bound(k: int, batch: int, classes: int) -> float:
    """Images/s of the trainable suffix's step alone (forward, backward, AdamW) on a fixed prefix output:
    the ceiling of any prefix trick, since each epoch must still train the suffix."""
    return 1000.0 / child(k, cl=True, classes=classes, batch=batch)["ms_per_img"]


def headstart_rates(paths: list[Path], labels: np.ndarray, k: int, batch: int, cache: bool) -> tuple[float, float]:
    model = create_model("efficientnet_lite0", num_classes=int(labels.max()) + 1)
    res = train(model, ImageSet(paths, labels), None, optim_cfg=OptimConfig(lr=1e-4), epochs=EPOCHS, freeze=k,
                freeze_bn=True, batch_size=batch, cache=cache)
    return max(len(paths) / h["seconds"] for h in res.history[1:]), res.timings.get("setup_s", 0.0)


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
    print("| freeze K (frozen stages) | naive | headstart online | headstart cached | cached vs naive | "
          "one-off prefix pass | suffix step alone (ceiling) | ceiling vs naive |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (int(v) for v in args.freeze.split(",")):
        naive = naive_epoch_rate(paths, labels, k, args.batch)
        online, _ = headstart_rates(paths, labels, k, args.batch, cache=False)
        cached, setup = headstart_rates(paths, labels, k, args.batch, cache=True)
        bound = suffix_bound(k, args.batch, int(labels.max()) + 1)
        mac = frozen_mac_share(k)
        print(f"| {k} ({stages[0]}..{stages[k - 1]}, {mac:.0%} of MACs) | {naive:.1f} | {online:.1f} | "
              f"{cached:.1f} | {cached / naive:.1f}× | {setup:.1f}s | {bound:.1f} | {bound / naive:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
