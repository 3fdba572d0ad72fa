"""A cheap cross-validated linear probe per tap, and the one-standard-error rule for choosing among taps.

The probe is ridge regression on one-hot targets (a least-squares linear classifier) on standardised codes:
one eigendecomposition per fold gives the predictions for every ridge strength at once, so ten taps x 15
folds cost seconds, where the softmax head's C sweep costs minutes. It ranks taps; it is not the final head
(``fit`` trains that, and picks its C on its own).

Choosing the argmax of one noisy validation score is what made ``--layer auto`` flip its choice when five
junk files moved the split (issue 14). Here every tap is scored by repeated stratified k-fold, and the
choice is the deepest tap whose mean accuracy is within one standard error of the best (Breiman's rule):
an earlier stage must beat the top codes by more than the noise to be chosen.

>>> import numpy as np
>>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 30)
>>> probe_accuracy(np.c_[y + rng.normal(0, .3, 60), rng.normal(size=60)], y, seed=0).mean > 0.9
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

__all__ = ["CV_SEED", "ProbeScore", "content_order", "cv_plan", "cv_repeats", "one_se_choice", "probe_accuracy"]

CV_SEED = 0  # the partitions of every repeated k-fold that chooses (advise's taps, fit's layer and C)


def content_order(hashes: Sequence[str]) -> np.ndarray:
    """The order of rows by image content hash: folds drawn with ``CV_SEED`` over rows in this order depend
    on the images alone, not on how a folder was listed or split."""
    return np.argsort(np.asarray(hashes), kind="stable")

# Ridge strengths relative to the mean eigenvalue of the fold's Gram matrix: from barely regularised to
# shrinking every direction; scale-free, so one grid fits taps of 16 and of 1,280 channels.
RELATIVE_LAMBDAS = 10.0 ** np.arange(-4.0, 2.0)


@dataclass(frozen=True)
class ProbeScore:
    """Fold accuracies at the ridge strength with the best mean (its choice sees the same folds, a small
    optimism shared by every tap, so rankings are fair)."""

    fold_accuracies: tuple[float, ...]
    folds: int  # k of the k-fold, for the standard error
    relative_lambda: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracies))

    @property
    def se(self) -> float:
        """Standard error of the mean accuracy, counting k independent folds, not k x repeats: repeats reuse
        the same images, so dividing by sqrt(k x repeats) would claim more certainty than the data has."""
        if len(self.fold_accuracies) < 2:
            return 0.0
        return float(np.std(self.fold_accuracies, ddof=1) / np.sqrt(self.folds))


def cv_repeats(images: int) -> int:
    """Repeats of k-fold: 3 on small data, where one partition's luck moves the estimate most, 2 from 1,000."""
    return 3 if images < 1000 else 2


def cv_plan(labels: np.ndarray, *, max_folds: int = 5) -> tuple[int, int]:
    """``(k, repeats)``: 5 folds where every class has 5 images, fewer otherwise (at least 2); ``cv_repeats``."""
    counts = np.bincount(np.asarray(labels))
    counts = counts[counts > 0]
    return max(2, min(max_folds, int(counts.min()))), cv_repeats(len(labels))


def probe_accuracy(X: np.ndarray, y: np.ndarray, *, seed: int, folds: int = 5, repeats: int = 3) -> ProbeScore:
    """Repeated stratified k-fold accuracy of a ridge classifier on ``X``; each class needs >= ``folds``
    images (``cv_plan`` picks a k that fits)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    classes, y_idx = np.unique(y, return_inverse=True)
    Y = np.eye(len(classes))[y_idx]
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    scores = np.array([_fold_scores(X[tr], Y[tr], X[va], y_idx[va]) for tr, va in cv.split(X, y_idx)])
    best = int(np.flatnonzero(scores.mean(0) >= scores.mean(0).max() - 1e-12)[-1])  # ties: the stronger ridge
    return ProbeScore(tuple(float(a) for a in scores[:, best]), folds, float(RELATIVE_LAMBDAS[best]))


def _fold_scores(Xtr: np.ndarray, Ytr: np.ndarray, Xva: np.ndarray, yva: np.ndarray) -> np.ndarray:
    """Validation accuracy at every ridge strength, from one eigendecomposition of the smaller Gram matrix."""
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd < 1e-8] = 1.0  # a constant channel (dead ReLU) carries nothing; do not blow it up
    Xtr, Xva = (Xtr - mu) / sd, (Xva - mu) / sd
    y_mean = Ytr.mean(0)  # the intercept: class priors, so imbalance is not the ridge's to learn
    Ytr = Ytr - y_mean
    n, d = Xtr.shape
    if n >= d:  # primal: W = V diag(1/(w + lam)) V' X'Y
        w, V = np.linalg.eigh(Xtr.T @ Xtr)
        left, right = Xva @ V, V.T @ (Xtr.T @ Ytr)
    else:  # dual: W = X' U diag(1/(w + lam)) U'Y
        w, U = np.linalg.eigh(Xtr @ Xtr.T)
        left, right = (Xva @ Xtr.T) @ U, U.T @ Ytr
    w = np.clip(w, 0.0, None)
    scale = max(float(w.mean()), 1e-12)
    out = np.empty(len(RELATIVE_LAMBDAS))
    for i, rel in enumerate(RELATIVE_LAMBDAS):
        pred = (left / (w + rel * scale)) @ right + y_mean
        out[i] = float(np.mean(pred.argmax(1) == yva))
    return out


def one_se_choice(taps: Sequence[str], scores: Sequence[ProbeScore]) -> tuple[str, str]:
    """``(chosen, best)``: ``best`` has the highest mean accuracy; ``chosen`` is the deepest tap (``taps`` run
    from input to output) within one standard error of it, so the top codes keep their place unless an
    earlier stage is better by more than the folds' noise."""
    means = np.array([s.mean for s in scores])
    b = int(np.flatnonzero(means >= means.max() - 1e-12)[-1])  # a tie goes to the deeper tap
    floor = means[b] - scores[b].se
    chosen = int(np.flatnonzero(means >= floor - 1e-12)[-1])
    return taps[chosen], taps[b]
