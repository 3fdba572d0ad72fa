"""The linear probe both strategies use: (layer, C) chosen on train and val, never on test. The linear
strategy reports it; fine-tuning starts its new head from it (LP-FT).

How the choice is made (``linear.selection``):

- ``cv`` (``auto`` picks it below ``CV_BELOW_IMAGES`` train+val images): train and val pooled, repeated
  stratified k-fold. Layers are ranked by the cheap ridge probe ``advise`` uses, and an earlier or wider
  layer replaces the top codes only when better by more than one standard error (Breiman's rule); then C
  is chosen for that layer by the head's own repeated-CV sweep: the lowest log-loss among the Cs within one
  standard error of the best accuracy (``_c_within_one_se``). One 15% split of a few hundred images is
  too noisy to choose on: five junk files that moved the split used to flip the chosen layer (issue 14).
- ``val``: the validation split decides (or plain k-fold on train when there is none), highest accuracy,
  ties to the lower log-loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.advise.probe import CV_SEED, cv_repeats, one_se_choice, probe_accuracy
from headstart.config import CV_BELOW_IMAGES, FitConfig
from headstart.fit.checks import check_cv_folds
from headstart.fit.codes import SPLIT_IDS, Codes
from headstart.fit.layers import Layer, layer_name
from headstart.heads import LinearSVM, SoftmaxRegression, cross_val_sweep, sweep_C
from headstart.models import POOLED

__all__ = ["Selection", "make_head", "select", "selection_mode"]


def make_head(cfg: FitConfig):  # noqa: ANN201
    lin = cfg.linear
    cw = lin.class_weight or None
    if lin.head == "svm":
        return lambda C: LinearSVM(C=C, standardize=lin.standardize, class_weight=cw)
    return lambda C: SoftmaxRegression(C=C, standardize=lin.standardize, class_weight=cw)


@dataclass(frozen=True)
class Selection:
    """The chosen layer and C, with the figure behind them (``accuracy`` on ``images`` held-out predictions,
    measured as ``protocol`` says) and one ``table`` row per candidate layer."""

    layer: Layer
    C: float
    accuracy: float
    images: int
    protocol: str
    table: list[dict[str, Any]]


def selection_mode(pool_labels: np.ndarray, has_val: bool, cfg: FitConfig) -> str:
    """``"cv"`` (repeated k-fold on train+val), ``"val"`` (the validation split) or ``"kfold"`` (k-fold on
    train: no validation split). ``auto`` cross-validates small data when every class has a fold's worth."""
    mode = cfg.linear.selection
    if mode == "auto":
        counts = np.bincount(np.asarray(pool_labels, dtype=np.int64))
        enough = counts.size > 0 and counts[counts > 0].min() >= cfg.linear.cv_folds
        mode = "cv" if len(pool_labels) < CV_BELOW_IMAGES and enough else "val"
    return "kfold" if mode == "val" and not has_val else mode


def select(codes: Codes, candidates: list[Layer], cfg: FitConfig, classes: list[str]) -> Selection:
    """Pick (layer, C) using train and val only — never the test split."""
    tr, va = codes.split == SPLIT_IDS["train"], codes.split == SPLIT_IDS["val"]
    pool = tr | va
    mode = selection_mode(codes.labels[pool], bool(va.any()), cfg)
    if mode != "val":
        check_cv_folds(codes.labels[pool if mode == "cv" else tr], classes, cfg.linear.cv_folds,
                       finetune=cfg.strategy == "finetune", selection_cv=mode == "cv" and bool(va.any()))
    if mode == "cv":
        return _select_cv(codes, candidates, cfg, pool)
    return _select_split(codes, candidates, cfg, tr, va if mode == "val" else None)


def _select_split(codes: Codes, candidates: list[Layer], cfg: FitConfig, tr: np.ndarray,
                  va: np.ndarray | None) -> Selection:
    make, Cs = make_head(cfg), _Cs(cfg)
    table = []
    for layer in candidates:
        if va is not None:
            r = sweep_C(make, codes.X(layer, tr), codes.labels[tr], codes.X(layer, va), codes.labels[va], Cs=Cs)
        else:
            r = cross_val_sweep(make, codes.X(layer, tr), codes.labels[tr], n_splits=cfg.linear.cv_folds,
                                Cs=Cs, seed=cfg.data.seed)
        table.append({"layer": layer_name(layer), "C": float(r.best_C), "val_accuracy": float(r.best_score),
                      "val_log_loss": _logloss_at(r.table, r.best_C)})

    # Highest validation accuracy; ties (common on small val sets) go to the lower validation log-loss.
    def rank(i: int) -> tuple[float, float]:
        ll = table[i]["val_log_loss"]
        return table[i]["val_accuracy"], -(ll if np.isfinite(ll) else np.inf)

    best = max(range(len(candidates)), key=rank)
    if va is not None:
        protocol, images = "validation split", int(va.sum())
    else:
        protocol, images = f"{cfg.linear.cv_folds}-fold cross-validation on train", int(tr.sum())
    return Selection(candidates[best], table[best]["C"], table[best]["val_accuracy"], images, protocol, table)


def _select_cv(codes: Codes, candidates: list[Layer], cfg: FitConfig, pool: np.ndarray) -> Selection:
    # The folds depend on the images alone: not on how the val split was drawn, nor on --seed (which draws
    # it), so the choice is a function of the train+val images.
    pool = codes.canonical(pool)
    y, seed, k = codes.labels[pool], CV_SEED, cfg.linear.cv_folds
    repeats = cv_repeats(len(y))
    table: list[dict[str, Any]] = [{"layer": layer_name(c)} for c in candidates]
    layer, note = candidates[0], ""
    if len(candidates) > 1:
        order = _least_preferred_first(candidates)
        scores = [probe_accuracy(codes.X(candidates[i], pool), y, seed=seed, folds=k, repeats=repeats)
                  for i in order]
        for i, s in zip(order, scores):
            table[i] |= {"probe_cv_accuracy": s.mean, "probe_cv_se": s.se}
        chosen, best = one_se_choice([layer_name(candidates[i]) for i in order], scores)
        layer = next(c for c in candidates if layer_name(c) == chosen)
        if best != chosen:
            note = f"; {chosen} within one standard error of {best}"
    r = cross_val_sweep(make_head(cfg), codes.X(layer, pool), y, n_splits=k, Cs=_Cs(cfg), seed=seed,
                        repeats=repeats)
    C, acc, loss = _c_within_one_se(r.table, len(y))
    row = table[candidates.index(layer)]
    row |= {"C": C, "val_accuracy": acc, "val_log_loss": loss}
    where = "train+val" if (codes.split == SPLIT_IDS["val"]).any() else "train"
    protocol = (f"{k}-fold cross-validation x{repeats} on {where} ({len(y)} images)"
                + (", layers ranked by a ridge probe, one-standard-error rule" if len(candidates) > 1 else "")
                + note)
    return Selection(layer, row["C"], row["val_accuracy"], len(y), protocol, table)


def _c_within_one_se(rows: list[tuple[float, float, float]], n: int) -> tuple[float, float, float]:
    """``(C, accuracy, log-loss)``: among the Cs whose cross-validated accuracy is within one (binomial)
    standard error of the best, the lowest log-loss. Accuracy is flat near its top, so its argmax lands
    anywhere on the plateau (on intel_scenes_small's codes it took a C 5.6x smaller than the log-loss optimum
    for 0.05 points, and lost 1.2 on test); log-loss, a proper score, has a clear minimum there. Heads without
    probabilities (SVM) keep the accuracy argmax."""
    best = max(rows, key=lambda r: (r[1], -r[0]))
    if not all(np.isfinite(r[2]) for r in rows):
        return float(best[0]), float(best[1]), float(best[2])
    floor = best[1] - np.sqrt(best[1] * (1 - best[1]) / max(n, 1))
    C, acc, loss = min((r for r in rows if r[1] >= floor - 1e-12), key=lambda r: (r[2], r[0]))
    return float(C), float(acc), float(loss)


def _least_preferred_first(candidates: list[Layer]) -> list[int]:
    """Candidate indices from least to most preferred when scores tie within the noise: concatenations
    (widest first), then single stages as listed (input to output), then the top codes (pooled)."""
    concats = sorted((i for i, c in enumerate(candidates) if len(c) > 1), key=lambda i: -len(candidates[i]))
    singles = [i for i, c in enumerate(candidates) if len(c) == 1 and c != (POOLED,)]
    top = [i for i, c in enumerate(candidates) if c == (POOLED,)]
    return concats + singles + top


def _Cs(cfg: FitConfig) -> list[float] | None:
    return [cfg.linear.C] if cfg.linear.C > 0 else None


def _logloss_at(rows: list[tuple[float, float, float]], C: float) -> float:
    return float(next((row[2] for row in rows if row[0] == C), float("nan")))
