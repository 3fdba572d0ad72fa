"""Strategy "finetune": a new head, the first K stages frozen, the rest trained at a smaller learning rate.

LP-FT by default: the new head starts from a linear probe on the (cached) pooled codes, so the first
steps refine good features instead of back-propagating a random head's gradients into them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from headstart.bundle import load, save_finetune_bundle
from headstart.config import FitConfig
from headstart.data.augment import PcaLighting, compute_pca_lighting
from headstart.ensemble import run_proba
from headstart.evaluate.curves import diagnose
from headstart.evaluate.metrics import classification_metrics
from headstart.evaluate.predictions import write_test_predictions
from headstart.fit.reject import calibration
from headstart.heads.params import LinearParams
from headstart.fit.codes import SPLIT_IDS, Codes, extract_dataset
from headstart.fit.probe import make_head, select
from headstart.fit.rundir import start_run
from headstart.models import POOLED, Backbone, create_model
from headstart.train import ImageSet, TrainResult, clone_state, cycle_ends, evaluate, train
from headstart.train.checkpoint import save_tensors
from headstart.train.distributed import broadcast_state, current
from headstart.train.wise import interpolate

# What fine-tuning trains with when --batch-size is auto (0): the batch size changes the optimisation
# itself, so it is never lowered behind the user's back; only inference (the codes) backs off on OOM.
TRAIN_BATCH_SIZE = 32


def probe_head(model: Backbone, codes: Codes, cfg: FitConfig, classes: list[str]) -> dict[str, Any]:
    """Fit softmax regression on pooled codes (C chosen on val / CV, never test) and load it as the classifier."""
    codes = replace(codes, split=np.where(codes.split == SPLIT_IDS["test"], -1, codes.split))  # not even visible
    # C on the validation split (k-fold on train without one), as the fine-tuning rows of BENCHMARKS.md ran:
    # the probe only sets the head's start, and its C matters far less than a linear run's.
    lin_cfg = replace(cfg, linear=replace(cfg.linear, head="softmax", selection="val"))
    C = select(codes, [(POOLED,)], lin_cfg, classes).C
    fit_mask = codes.split == SPLIT_IDS["train"]
    head = make_head(lin_cfg)(C).fit(codes.X((POOLED,), fit_mask), codes.labels[fit_mask])
    model.reset_classifier(len(classes), seed=cfg.data.seed)
    weight, bias = LinearParams(np.asarray(head.coef_), np.asarray(head.intercept_)).softmax_layer()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        model.classifier.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return {"C": C}


def wise_start(model: Backbone, run_dir: Path, *, resume: bool, write: bool = True) -> dict[str, torch.Tensor]:
    """WiSE-FT's other end: the model as fine-tuning starts (pretrained + new head). The head is stored in
    the run (when ``write``), and a resumed run mixes with the stored one, even if the probe would now come
    out otherwise."""
    start, file = clone_state(model), run_dir / "wise_start_head.safetensors"
    if resume and file.is_file():
        start.update(load_file(str(file)))
    elif write:
        save_tensors(file, {k: v for k, v in start.items() if k.startswith("classifier.")})
    return start


def _val_scores(model: Backbone, val_set: ImageSet, classes: list[str], batch_size: int) -> dict[str, Any]:
    probs, labels = evaluate(model, val_set, batch_size=batch_size)
    m = classification_metrics(labels, probs, classes)
    return {"accuracy": m["accuracy"], "loss": m["log_loss"]}


def _snapshot_members(model: Backbone, result: TrainResult, start: dict[str, torch.Tensor] | None,
                      alpha: float) -> dict[int, dict[str, torch.Tensor]]:
    """The snapshot ensemble's members besides ``model`` (which holds the kept weights, a member too): the
    weights saved at the cycle ends, except the kept epoch's own, WiSE-FT-mixed like ``model``."""
    keep, members = clone_state(model), {}
    try:
        for path in result.snapshots:
            epoch = int(path.stem.removeprefix("epoch-"))
            if epoch == result.kept_epoch:  # the very weights ``model`` holds
                continue
            model.load_state_dict(load_file(str(path)))
            if start is not None:
                interpolate(model, start, alpha)
            members[epoch] = clone_state(model)
    finally:
        model.load_state_dict(keep)
    return members


def fit_finetune(cfg: FitConfig, *, progress: bool = True, resume: bool = False,
                 on_epoch_end: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Run the whole fine-tuning strategy; writes RUN_DIR (curves, checkpoints, bundle, metrics.json) and
    returns the metrics dict. Its test figure is computed from the saved bundle, as `headstart evaluate` does.
    ``on_epoch_end(row)`` sees each epoch's curves row (``fit --strategy auto`` shows progress and keeps its
    budget with it: a returned string stops training there).

    Under torchrun every process trains its share of each batch (``headstart.train.distributed``); rank 0
    writes the run and returns the metrics, the others return ``{}`` once training ends."""
    cfg = cfg.validate()
    ft, d = cfg.finetune, current()
    run, ds = start_run(cfg, writer=d.is_main)
    model = create_model(cfg.model, drop_rate=ft.dropout, drop_path_rate=ft.drop_path)
    t0 = time.perf_counter()
    # The pooled codes of every split, computed once (and cached): the probe's features, and the check of
    # every file, so that undecodable files are dropped up front: listed once, excluded from the counts.
    codes = extract_dataset(ds, model, [POOLED], cfg, progress=progress, dist=d)
    skipped = {f.path for f in codes.failures}
    splits = {name: [s for s in items if s.path not in skipped] for name, items in ds.splits.items()}
    probe = probe_head(model, codes, cfg, ds.classes) if ft.head_init == "probe" else {}
    if ft.head_init == "random":
        model.reset_classifier(len(ds.classes), seed=cfg.data.seed)
    broadcast_state(model, d)  # one start for every process: rank 0's head
    start = wise_start(model, run.path, resume=resume, write=d.is_main) if ft.wise_ft < 1.0 else None
    if start is not None and not ft.freeze_bn:
        warnings.warn("--wise-ft with BatchNorm statistics trained (--no-freeze-bn): the mixed network gets the "
                      "average of both ends' running statistics, an approximation of its own", stacklevel=2)
    probe_s = time.perf_counter() - t0
    batch_size = cfg.engine.batch_size or TRAIN_BATCH_SIZE

    pca = None
    if ft.augment.pca_lighting > 0:  # AlexNet lighting: eigen-decomposition of the training pixels, stored
        vals, vecs = compute_pca_lighting([s.path for s in splits["train"]], seed=cfg.data.seed)
        pca = PcaLighting(vals, vecs, ft.augment.pca_lighting)
        run.write_json("pca_lighting.json", pca.to_dict())
    train_set = ImageSet.from_samples(splits["train"], ft.augment, pca)
    val_set = ImageSet.from_samples(splits["val"]) if splits.get("val") else None
    if val_set is None:
        warnings.warn("no validation split (val_fraction = 0 and no val folder): no early stopping, the weights "
                      "at the end of training are kept", stacklevel=2)

    t0 = time.perf_counter()
    # Early stopping (with a val split) leaves the best epoch's weights in ``model``, else the last epoch's;
    # with EMA, the averaged ones.
    result = train(model, train_set, val_set, optim_cfg=ft.optim, sched_cfg=ft.schedule, epochs=ft.epochs,
                   freeze=ft.freeze, freeze_bn=ft.freeze_bn, label_smoothing=ft.label_smoothing, ema=ft.ema,
                   ema_warmup=ft.ema_warmup, patience=ft.patience,
                   snapshot_epochs=cycle_ends(ft.schedule, ft.epochs) if ft.snapshots else (),
                   seed=cfg.data.seed, run_dir=run.path, resume=resume, batch_size=batch_size,
                   backend=cfg.engine.backend, device=cfg.engine.device, on_epoch_end=on_epoch_end)
    train_s = time.perf_counter() - t0
    if not d.is_main:
        return {}
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
    if val_set is not None:
        val = {"accuracy": best["val_acc"], "loss": best["val_loss"],
               "protocol": f"validation split, best epoch {result.best_epoch}"}
    else:  # null in metrics.json, not NaN (which strict JSON readers refuse)
        val = {"accuracy": None, "loss": None, "protocol": "no validation split: no early stopping, the weights "
               "at the end of training are kept" + (", the probe's C by cross-validation" if probe else "")}
    wise = {}
    if start is not None:
        wise = {"alpha": ft.wise_ft}
        if val_set is not None:  # both ends scored by one pipeline (training's may use a cached fp16 prefix)
            wise["val_accuracy_finetuned"] = _val_scores(model, val_set, ds.classes, batch_size)["accuracy"]
        interpolate(model, start, ft.wise_ft)
        if val_set is not None:
            val = _val_scores(model, val_set, ds.classes, batch_size) | {
                "protocol": f"validation split, WiSE-FT alpha {ft.wise_ft} of best epoch {result.best_epoch}"}

    members = _snapshot_members(model, result, start, ft.wise_ft) if ft.snapshots else {}
    save_finetune_bundle(run.bundle, model=model, classes=ds.classes, snapshots=members)

    t0 = time.perf_counter()
    # Through the saved bundle, on the path `headstart evaluate RUN` takes: it reproduces this figure exactly.
    test_set = ImageSet.from_samples(splits["test"])
    bundle = load(run.bundle, backend=cfg.engine.backend)
    probs, labels = run_proba(bundle, test_set, tta=ft.tta, batch_size=batch_size), test_set.labels
    write_test_predictions(run.path, test_set.paths, labels, probs, ds.classes)
    reject = None
    if val_set is not None:  # as `predict` will see new images: the saved model, no TTA
        val_probs = run_proba(bundle, val_set, tta="none", batch_size=batch_size)
        reject = calibration(val_probs.max(axis=1), f"the validation split ({len(val_set.paths)} images)")
    eval_s = time.perf_counter() - t0
    metrics = {
        "strategy": "finetune", "model": cfg.model, "layer": "all", "classes": ds.classes, "seed": cfg.data.seed,
        "freeze": ft.freeze, "head_init": ft.head_init, **({"probe_C": probe["C"]} if probe else {}),
        "counts": {k: len(v) for k, v in splits.items()} | {k: 0 for k in SPLIT_IDS if k not in splits},
        "val": val, **({"wise_ft": wise} if wise else {}), "reject": reject,
        "test": classification_metrics(labels, probs, ds.classes) | {
            "tta": ft.tta, "snapshots": 1 + len(members) if ft.snapshots else 0},
        "training": {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "processes": d.world,
                     "process_group": d.backend,
                     "stop_reason": result.stop_reason, "feed": result.feed, "diagnosis": diagnose(result.history)},
        "skipped_files": codes.skipped_files(),
        "left_out_files": [str(p) for p in ds.left_out],  # not images: never read
        "duplicates_across_splits": codes.duplicates,
        "near_duplicates_across_splits": codes.near_duplicates,
        "cautions": run.cautions, "batch_size": batch_size,
        "timing": {"probe_s": round(probe_s, 3), "train_s": round(train_s, 3), "eval_s": round(eval_s, 3)},
    }
    run.write_json("metrics.json", metrics)
    return metrics
