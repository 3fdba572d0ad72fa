"""The linear probe both strategies use: (layer, C) chosen on the validation split, or by cross-validation
on train when there is none, and never on test. The linear strategy reports it; fine-tuning starts its new
head from it (LP-FT)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.config import FitConfig
from headstart.fit.checks import check_cv_folds
from headstart.fit.codes import SPLIT_IDS, Codes
from headstart.fit.layers import Layer, layer_name
from headstart.heads import LinearSVM, SoftmaxRegression, cross_val_sweep, sweep_C

__all__ = ["make_head", "select"]


def make_head(cfg: FitConfig):  # noqa: ANN201
    lin = cfg.linear
    cw = lin.class_weight or None
    if lin.head == "svm":
        return lambda C: LinearSVM(C=C, standardize=lin.standardize, class_weight=cw)
    return lambda C: SoftmaxRegression(C=C, standardize=lin.standardize, class_weight=cw)


def select(codes: Codes, candidates: list[Layer], cfg: FitConfig,
           classes: list[str]) -> tuple[Layer, float, list[dict[str, Any]]]:
    """Pick (layer, C) using train and val only — never the test split."""
    make = make_head(cfg)
    Cs = [cfg.linear.C] if cfg.linear.C > 0 else None
    tr, va = codes.split == SPLIT_IDS["train"], codes.split == SPLIT_IDS["val"]
    if not va.any():
        check_cv_folds(codes.labels[tr], classes, cfg.linear.cv_folds, finetune=cfg.strategy == "finetune")
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
