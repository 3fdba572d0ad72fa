"""A fitted linear head as plain arrays: what a bundle stores and what prediction needs (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, softmax

PROBA_KINDS = ("softmax", "ovr_sigmoid")


@dataclass(frozen=True)
class LinearParams:
    """Scores ``X @ coef.T + intercept`` (K×D, K); probabilities by ``proba``.

    ``softmax``: multinomial softmax of the scores. ``ovr_sigmoid``: one-vs-rest Platt sigmoids
    ``1 / (1 + exp(a_k * s_k + b_k))`` normalised to sum to one (scikit-learn's calibrated LinearSVC);
    for two classes a single score (K=1) is the positive class's.
    """

    coef: np.ndarray
    intercept: np.ndarray
    proba: str = "softmax"
    calib_a: np.ndarray | None = None
    calib_b: np.ndarray | None = None

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float64) @ self.coef.T.astype(np.float64) + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        s = self.decision_function(X)
        if self.proba == "softmax":
            if s.shape[1] == 1:  # binary logistic: the score is the positive class's logit
                s = np.hstack([np.zeros_like(s), s])
            return softmax(s, axis=1)
        assert self.calib_a is not None and self.calib_b is not None
        p = expit(-(self.calib_a * s + self.calib_b))
        if p.shape[1] == 1:
            return np.hstack([1.0 - p, p])
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        # C order: safetensors writes the raw buffer, and sklearn's coef_ can be Fortran-ordered.
        out = {"coef": self.coef, "intercept": self.intercept}
        if self.calib_a is not None and self.calib_b is not None:
            out |= {"calib_a": self.calib_a, "calib_b": self.calib_b}
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    def softmax_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights (K×D) and bias (K) of a softmax layer with the same probabilities, for K >= 2 classes.

        A binary logistic head has one row ``w`` (the positive class's logit); the softmax of the rows
        ``-w/2`` and ``+w/2`` is exactly ``sigmoid(w·x + b)``. Copying the one row into both rows instead
        would give 0.5 for every image.

        >>> W, b = LinearParams(np.array([[2.0, -4.0]]), np.array([1.0])).softmax_layer()
        >>> W.tolist(), b.tolist()
        ([[-1.0, 2.0], [1.0, -2.0]], [-0.5, 0.5])
        """
        if self.proba != "softmax":
            raise ValueError(f"a {self.proba} head has no softmax layer with the same probabilities")
        coef, intercept = np.asarray(self.coef, np.float64), np.asarray(self.intercept, np.float64)
        if coef.shape[0] == 1:
            return np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
        return coef, intercept

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], proba: str) -> LinearParams:
        if proba not in PROBA_KINDS:
            raise ValueError(f"unknown probability kind {proba!r}")
        return cls(arrays["coef"], arrays["intercept"], proba, arrays.get("calib_a"), arrays.get("calib_b"))
