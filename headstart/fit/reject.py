"""Open-set answers: ``predict --reject auto`` says "unknown" for an image that looks like none of the classes.

The score is the **maximum softmax probability** (MSP, Hendrycks & Gimpel, ICLR 2017): the top class's
probability. Energy scores (Liu et al., NeurIPS 2020) often separate a little better, but they need the
logits, and here not every model has one logit vector (a calibrated linear SVM gives probabilities, a
snapshot ensemble averages them); MSP works for every run and costs nothing at prediction time.

The ``auto`` threshold is set at fit time from images the model did not train on: the 5th percentile of the
MSP of held-out images of the known classes, so about 5% of images of known classes would be answered
"unknown". That false-rejection rate is the one figure that can be fixed without examples of the unknown;
how many unknown images it catches is measured in BENCHMARKS.md (leave one class out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["FALSE_REJECTION", "SCORE", "calibration", "out_of_fold_max_proba"]

SCORE = "max_softmax"
FALSE_REJECTION = 0.05


def calibration(max_proba: np.ndarray, how: str) -> dict[str, Any]:
    """metrics.json's ``reject``: the threshold below which ``predict --reject auto`` answers "unknown"."""
    max_proba = np.asarray(max_proba, dtype=np.float64)
    return {"score": SCORE, "threshold": float(np.quantile(max_proba, FALSE_REJECTION)),
            "false_rejection_target": FALSE_REJECTION, "calibrated_on": how, "images": int(max_proba.size)}


def out_of_fold_max_proba(make: Callable[[], Any], X: np.ndarray, y: np.ndarray, *, folds: int = 3,
                          seed: int = 0) -> np.ndarray:
    """Each image's top probability from a head that did not see it (stratified ``folds``-fold): how sure
    the model is on new images of the known classes. ``make()`` returns an unfitted head."""
    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        raise ValueError("out_of_fold_max_proba needs at least 2 images per class")
    out = np.zeros(len(y), dtype=np.float64)
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y):
        out[te] = make().fit(X[tr], y[tr]).to_params().predict_proba(X[te]).max(axis=1)
    return out
