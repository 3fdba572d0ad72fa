"""Transferability signals on cached codes: per tap, LogME and the cross-validated probe; and how the
network's own ImageNet head sees the data (its confidence, and how much its predicted class tells the label).

Example::

    scores = score_taps({"stage4": X4, "pooled": Xp}, labels, ["stage4", "pooled"], seed=0)
    [(s.tap, s.accuracy, s.logme) for s in scores]   # [('stage4', 0.86, -0.10), ('pooled', 0.91, 0.33)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

from headstart.advise.logme import logme
from headstart.advise.probe import ProbeScore, cv_plan, probe_accuracy
from headstart.models import Backbone

__all__ = ["TapScore", "imagenet_view", "score_taps"]


@dataclass(frozen=True)
class TapScore:
    tap: str
    dim: int
    logme: float
    probe: ProbeScore

    @property
    def accuracy(self) -> float:
        return self.probe.mean

    def to_dict(self) -> dict[str, Any]:
        return {"tap": self.tap, "dim": self.dim, "logme": round(self.logme, 4),
                "probe_accuracy": round(self.accuracy, 4), "probe_se": round(self.probe.se, 4),
                "probe_folds": f"{self.probe.folds}x{len(self.probe.fold_accuracies) // self.probe.folds}",
                "probe_relative_lambda": self.probe.relative_lambda}


def score_taps(codes: dict[str, np.ndarray], labels: np.ndarray, taps: Sequence[str], *, seed: int,
               on_tap: Callable[[str], None] | None = None) -> list[TapScore]:
    """LogME and the probe's CV accuracy of every tap in ``taps`` (input to output order). A tap whose codes
    equal the next one's (EfficientNet's ``head`` stage pooled is ``pooled``) is scored once, as the later."""
    labels = np.asarray(labels)
    k, repeats = cv_plan(labels)
    out = []
    for i, tap in enumerate(taps):
        if i + 1 < len(taps) and np.array_equal(codes[tap], codes[taps[i + 1]]):
            continue
        X = np.asarray(codes[tap], dtype=np.float64)
        out.append(TapScore(tap, X.shape[1], logme(X, labels), probe_accuracy(X, labels, seed=seed, folds=k,
                                                                              repeats=repeats)))
        if on_tap is not None:
            on_tap(tap)
    return out


def imagenet_view(pooled: np.ndarray, labels: np.ndarray, classes: Sequence[str], backbone: Backbone,
                  names: Sequence[str] | None = None) -> dict[str, Any]:
    """The pretrained classifier applied to the pooled codes (one pass of the ImageNet head, at no cost):

    - ``mean_max_softmax``: its mean confidence; photos of ImageNet-like objects get high values, images
      from another world (scans, microscopy) low ones.
    - ``nce``: negative conditional entropy -H(Y|Z) of the labels Y given its top-1 class Z (Tran et al.,
      ICCV 2019), and ``nce_normalized`` = 1 - H(Y|Z)/H(Y): the share of the labels' uncertainty that
      ImageNet's own categories already explain (1: each ImageNet class maps to one of yours). Estimated
      from counts per predicted class, it reads high when those are few (``predicted_classes`` tells).
    - ``top_imagenet_class``: per class, ImageNet's most frequent prediction (with ``names``).
    """
    W = backbone.classifier.weight.detach().cpu().numpy().astype(np.float64)
    b = backbone.classifier.bias.detach().cpu().numpy().astype(np.float64)
    probs = softmax(np.asarray(pooled, dtype=np.float64) @ W.T + b, axis=1)
    z = probs.argmax(1)
    labels = np.asarray(labels)
    h_y_given_z = _conditional_entropy(labels, z)
    h_y = _entropy(np.bincount(labels) / len(labels))
    view: dict[str, Any] = {"mean_max_softmax": round(float(probs.max(1).mean()), 4),
                            "nce": round(-h_y_given_z, 4),
                            "nce_normalized": round(1.0 - h_y_given_z / h_y, 4) if h_y > 0 else 0.0,
                            "predicted_classes": int(len(np.unique(z)))}
    if names is not None and len(names) == W.shape[0]:
        view["top_imagenet_class"] = {
            c: {"label": names[int(np.bincount(z[labels == i]).argmax())],
                "share": round(float(np.mean(z[labels == i] == np.bincount(z[labels == i]).argmax())), 3)}
            for i, c in enumerate(classes) if (labels == i).any()}
    return view


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _conditional_entropy(y: np.ndarray, z: np.ndarray) -> float:
    """H(Y|Z) in nats from the joint counts of labels ``y`` and ImageNet predictions ``z``."""
    total = 0.0
    for zi in np.unique(z):
        at = y[z == zi]
        total += len(at) / len(y) * _entropy(np.bincount(at) / len(at))
    return total
