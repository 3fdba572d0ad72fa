"""Choosing the regularisation strength C of a linear head.

The protocol of Kornblith et al. (2019) and CLIP's linear probes: a coarse log grid over
1e-6..1e6 (one point per decade), then a finer grid (quarter decades) within one decade of the
best coarse value. Score = validation accuracy; ties go to the lower validation log-loss, then to
the smaller C (stronger regularisation generalises more safely).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

from headstart.errors import ConfigError
from headstart.heads.softmax import check_X

COARSE_CS = np.logspace(-6, 6, 13)  # one per decade
FINE_STEPS = np.linspace(-1.0, 1.0, 9)  # log10 offsets around the best coarse C: quarter decades


@dataclass
class SweepResult:
    """Outcome of a C search.

    ``table`` rows are ``(C, val_accuracy, val_logloss)`` sorted by C (accuracy and log-loss are
    fold means for :func:`cross_val_sweep`; log-loss is NaN for heads without ``predict_proba``).
    ``best_estimator`` is the head fitted on the training split at ``best_C`` (``sweep_C`` only;
    ``cross_val_sweep`` leaves it None: refit ``make(best_C)`` on all the data).
    """

    best_C: float
    best_score: float
    table: list[tuple[float, float, float]]
    best_estimator: Any = None


Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class _Evaluator:
    """Fits ``make(C)`` on every split, warm-starting each from the nearest C already fitted there."""

    def __init__(self, make: Callable[[float], Any], splits: list[Split]) -> None:
        self.make, self.splits = make, splits
        self.last: list[tuple[float, Any] | None] = [None] * len(splits)  # warm-start sources
        self.best: list[tuple[float, Any] | None] = [None] * len(splits)
        self.scores: dict[float, tuple[float, float]] = {}

    def __call__(self, C: float) -> tuple[float, float]:
        accs, losses, models = [], [], []
        for i, (X_tr, y_tr, X_va, y_va) in enumerate(self.splits):
            est = self.make(float(C))
            sources = [s for s in (self.last[i], self.best[i]) if s is not None]
            if sources and hasattr(est, "_set_warm_start"):
                # Nearest in log C: its solution is closest to the new one, so L-BFGS needs few steps.
                est._set_warm_start(min(sources, key=lambda s: abs(math.log(s[0] / C)))[1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # huge C on separable codes: expected
                est.fit(X_tr, y_tr)
            accs.append(float(np.mean(est.predict(X_va) == y_va)))
            losses.append(_log_loss(est, X_va, y_va))
            self.last[i] = (C, est)
            models.append(est)
        score = (float(np.mean(accs)), float(np.mean(losses)))
        self.scores[C] = score
        best = self.best_C()
        if best is None or _key(C, score) > _key(best, self.scores[best]):
            self.best = [(C, m) for m in models]
        return score

    def best_C(self) -> float | None:
        return None if self.best[0] is None else self.best[0][0]

    def run(self, Cs: Sequence[float] | None) -> SweepResult:
        grid = COARSE_CS if Cs is None else np.asarray(Cs, dtype=float)
        for C in sorted(set(grid.tolist())):  # increasing C: each solution warm-starts the next, larger-norm one
            self(float(C))
        if Cs is None:
            c0 = self.best_C()
            for C in sorted(c0 * 10.0**FINE_STEPS):
                if not any(math.isclose(C, done, rel_tol=1e-9) for done in self.scores):
                    self(float(C))
        best = self.best_C()
        table = [(C, acc, ll) for C, (acc, ll) in sorted(self.scores.items())]
        model = self.best[0][1] if len(self.splits) == 1 else None
        return SweepResult(best_C=best, best_score=self.scores[best][0], table=table, best_estimator=model)


def _log_loss(est: Any, X: np.ndarray, y: np.ndarray) -> float:
    if not hasattr(est, "predict_proba"):
        return math.nan
    proba = est.predict_proba(X)
    col = np.searchsorted(est.classes_, y)
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), col], 1e-15, None))))


def _key(C: float, score: tuple[float, float]) -> tuple[float, float, float]:
    """Larger is better: accuracy, then lower log-loss, then smaller C."""
    acc, ll = score
    return (acc, -(ll if math.isfinite(ll) else math.inf), -C)


def _check_Cs(owner: str, Cs: Sequence[float] | None) -> None:
    if Cs is None:
        return
    try:
        arr = np.asarray(Cs, dtype=float)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ConfigError(f"{owner}: 'Cs' must be a non-empty list of finite floats > 0. Got {Cs!r} instead.")


def _check_xy(owner: str, X: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = check_X(owner, X), np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ConfigError(
            f"{owner}: X{what} has {len(X)} rows but y{what} has shape {y.shape}; pass one label per row."
        )
    return X, y


def sweep_C(
    make: Callable[[float], Any],
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    Cs: Sequence[float] | None = None,
) -> SweepResult:
    """Pick C by validation accuracy. ``Cs=None``: coarse 1e-6..1e6 per decade, then quarter decades
    around the best; explicit ``Cs`` are evaluated as given (no refinement).

    >>> from headstart.heads import SoftmaxRegression
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))]; y = np.r_[[0] * 5, [1] * 5]
    >>> sweep_C(lambda C: SoftmaxRegression(C), X, y, X, y, Cs=[0.1, 1.0]).best_C
    1.0
    """
    owner = "sweep_C"
    _check_Cs(owner, Cs)
    X_train, y_train = _check_xy(owner, X_train, y_train, "_train")
    X_val, y_val = _check_xy(owner, X_val, y_val, "_val")
    unseen = np.setdiff1d(y_val, y_train)
    if unseen.size:
        raise ConfigError(
            f"{owner}: y_val has classes absent from y_train ({unseen[:5].tolist()}); "
            "split so that every class appears in training."
        )
    return _Evaluator(make, [(X_train, y_train, X_val, y_val)]).run(Cs)


def cross_val_sweep(
    make: Callable[[float], Any],
    X: Any,
    y: Any,
    *,
    n_splits: int = 5,
    Cs: Sequence[float] | None = None,
    seed: int = 0,
    repeats: int = 1,
) -> SweepResult:
    """Like :func:`sweep_C` without a validation split: mean accuracy over stratified K folds, ``repeats``
    times with different partitions (repeated k-fold: one partition's luck moves small-data choices).

    >>> from headstart.heads import SoftmaxRegression
    >>> X = np.r_[np.zeros((4, 2)), np.ones((4, 2))]; y = np.r_[[0] * 4, [1] * 4]
    >>> cross_val_sweep(lambda C: SoftmaxRegression(C), X, y, n_splits=2, Cs=[1.0]).best_score
    1.0
    """
    owner = "cross_val_sweep"
    _check_Cs(owner, Cs)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ConfigError(f"{owner}: 'n_splits' must be an int >= 2. Got {n_splits!r} instead.")
    X, y = _check_xy(owner, X, y, "")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        c = classes[counts.argmin()]
        c = c.item() if isinstance(c, np.generic) else c  # "class 2", not "class np.int64(2)"
        raise ConfigError(
            f"{owner}: class {c!r} has {counts.min()} samples, fewer than n_splits={n_splits}; "
            f"use n_splits={max(int(counts.min()), 2)} or fewer, or add more images of that class."
            if counts.min() >= 2 else
            f"{owner}: class {c!r} has {counts.min()} sample; cross-validation needs >= 2 per class: "
            "add more images of that class."
        )
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"{owner}: 'repeats' must be an int >= 1. Got {repeats!r} instead.")
    cv = (StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed) if repeats == 1 else
          RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=repeats, random_state=seed))
    folds = cv.split(X, y)
    splits = [(X[tr], y[tr], X[va], y[va]) for tr, va in folds]
    return _Evaluator(make, splits).run(Cs)
