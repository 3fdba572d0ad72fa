"""Strategy "linear": the ConvNet as a fixed feature extractor, a linear classifier on its CNN codes.

Choices (layer, C) are made on a validation split carved from train — or by cross-validation — and
the final head is refit on train+val. The test split is only ever used for the reported figure.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from headstart.config import FitConfig
from headstart.evaluate.metrics import classification_metrics
from headstart.fit.checks import check_cv_folds
from headstart.fit.codes import SPLIT_IDS, Codes, extract_dataset
from headstart.fit.layers import Layer, layer_name, parse_layer
from headstart.fit.rundir import start_run
from headstart.heads import LinearSVM, SoftmaxRegression, cross_val_sweep, sweep_C
from headstart.models import create_model


def make_head(cfg: FitConfig):  # noqa: ANN201
    lin = cfg.linear
    cw = lin.class_weight or None
    if lin.head == "svm":
        return lambda C: LinearSVM(C=C, standardize=lin.standardize, class_weight=cw)
    return lambda C: SoftmaxRegression(C=C, standardize=lin.standardize, class_weight=cw)


def select(codes: Codes, candidates: list[Layer], cfg: FitConfig, classes: list[str]) -> tuple[Layer, float, list[dict[str, Any]]]:
    """Pick (layer, C) using train and val only — never the test split."""
    make = make_head(cfg)
    Cs = [cfg.linear.C] if cfg.linear.C > 0 else None
    tr, va = codes.split == SPLIT_IDS["train"], codes.split == SPLIT_IDS["val"]
    if not va.any():
        check_cv_folds(codes.labels[tr], classes, cfg.linear.cv_folds)
    table = []
    for layer in candidates:
        if va.any():
            r = sweep_C(make, codes.X(layer, tr), codes.labels[tr], codes.X(layer, va), codes.labels[va], Cs=Cs)
        else:
            r = cross_val_sweep(make, codes.X(layer, tr), codes.labels[tr], n_splits=cfg.linear.cv_folds,
                                Cs=Cs, seed=cfg.data.seed)
        logloss = next((row[2] for row in r.table if row[0] == r.best_C), float("nan"))
        table.append({"layer": layer_name(layer), "C": float(r.best_C), "val_accuracy": float(r.best_score),
                      "val_log_loss": float(logloss)})
    # Highest validation accuracy; ties (common on small val sets) go to the lower validation log-loss.
    def rank(i: int) -> tuple[float, float]:
        ll = table[i]["val_log_loss"]
        return table[i]["val_accuracy"], -(ll if np.isfinite(ll) else np.inf)

    best = max(range(len(candidates)), key=rank)
    return candidates[best], table[best]["C"], table


def fit_linear(cfg: FitConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole linear strategy; writes RUN_DIR and returns the metrics dict."""
    cfg = cfg.validate()
    run, ds = start_run(cfg)
    backbone = create_model(cfg.model)
    candidates = parse_layer(backbone, cfg.linear.layer)
    taps = [t for t in backbone.tap_names if any(t in c for c in candidates)]

    t0 = time.perf_counter()
    codes = extract_dataset(ds, backbone, taps, cfg, progress=progress)
    extract_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    layer, C, table = select(codes, candidates, cfg, ds.classes)
    fit_mask = codes.split != SPLIT_IDS["test"]
    head = make_head(cfg)(C).fit(codes.X(layer, fit_mask), codes.labels[fit_mask])
    fit_s = time.perf_counter() - t0

    te = codes.split == SPLIT_IDS["test"]
    params = head.to_params()
    test_metrics = classification_metrics(codes.labels[te], params.predict_proba(codes.X(layer, te)), ds.classes)
    from headstart.bundle import save_linear_bundle

    save_linear_bundle(run.bundle, model=cfg.model, weights_id=backbone.weights_id, taps=layer, spec=backbone.spec,
                       classes=ds.classes, head=params)
    chosen = next(r for r in table if r["layer"] == layer_name(layer))
    metrics = {
        "strategy": "linear", "model": cfg.model, "layer": layer_name(layer), "head": cfg.linear.head, "C": C,
        "classes": ds.classes, "seed": cfg.data.seed,
        "counts": {k: int((codes.split == v).sum()) for k, v in SPLIT_IDS.items()},
        "val": {"accuracy": chosen["val_accuracy"],
                "protocol": "validation split" if (codes.split == SPLIT_IDS["val"]).any()
                else f"{cfg.linear.cv_folds}-fold cross-validation on train"},
        "test": test_metrics,
        "selection": table,
        "skipped_files": codes.skipped_files(),
        "duplicates_across_splits": codes.duplicates, "cautions": run.cautions, "batch_size": codes.batch_size,
        "timing": {"extract_s": round(extract_s, 3), "fit_s": round(fit_s, 3)},
    }
    run.write_json("metrics.json", metrics)
    return metrics
