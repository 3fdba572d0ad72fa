"""Linear SVM head (one-vs-rest squared hinge) with honest probability estimates."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from headstart.heads.params import LinearParams
from headstart.heads.softmax import (
    param_error,
    check_class_weight,
    check_positive,
    check_X,
    check_Xy,
    fold_standardization,
    linear_scores,
    standardize_stats,
)

CALIBRATION_FOLDS = 3


class LinearSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM (sklearn ``LinearSVC``, squared hinge, L2, ``dual="auto"``) on z-scored codes.

    ``coef_`` / ``intercept_`` are folded back into the original feature space, as in
    :class:`~headstart.heads.softmax.SoftmaxRegression`; two classes give one row and a 1-D
    ``decision_function``, as in sklearn.

    Probabilities: SVM margins are not probabilities, and a temperature fitted on the training
    margins would be over-confident (the SVM has already separated its own training set). So when
    every class has at least 3 samples, per-class Platt sigmoids ``1 / (1 + exp(a_k s_k + b_k))`` are
    fitted on out-of-fold margins (sklearn ``CalibratedClassifierCV(method="sigmoid", cv=3,
    ensemble=False)``) and normalised to sum to one; the scores ``s`` come from the single full-data
    SVM (``coef_``), so the head is one linear map plus ``calib_a_`` / ``calib_b_``. With fewer
    samples it falls back to a softmax of the margins (sigmoid for two classes): fine for ranking,
    *not* calibrated (``calibrated_`` False, ``calib_a_`` None). ``argmax(predict_proba)`` can differ
    from ``predict`` (raw margins) on borderline samples, as with sklearn's ``SVC(probability=True)``.

    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array(["a", "a", "b", "b"])
    >>> LinearSVM().fit(X, y).predict([[0.1], [2.9]]).tolist()
    ['a', 'b']
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        standardize: bool = True,
        class_weight: None | str | dict = None,
        max_iter: int = 5000,
        tol: float = 1e-4,
    ) -> None:
        self.C = C
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol

    def _svc(self) -> LinearSVC:
        # random_state fixes liblinear's coordinate order: the same data gives the same head.
        return LinearSVC(
            C=float(self.C), dual="auto", class_weight=self.class_weight, max_iter=self.max_iter,
            tol=self.tol, random_state=0,
        )

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "LinearSVM":
        name = type(self).__name__
        check_positive(name, "C", self.C)
        check_positive(name, "max_iter", self.max_iter, integer=True)
        check_positive(name, "tol", self.tol)
        check_class_weight(name, self.class_weight)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise param_error(name, "standardize", "a bool", self.standardize)
        X, y, sw = check_Xy(name, X, y, sample_weight)
        self.classes_, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
        self.n_features_in_ = X.shape[1]
        self.mean_, self.scale_ = standardize_stats(X, self.standardize)
        Z = (X - self.mean_) / self.scale_  # float64: liblinear copies to float64 anyway
        with threadpool_limits(limits=1, user_api="blas"):
            # liblinear needs no BLAS; Platt's 2-parameter scipy L-BFGS-B only loses to BLAS threads'
            # start-up and spinning (measured 10x slower on 2 cores).
            self._fit_standardized(Z, self.classes_[y_idx], sw, counts)
        return self

    def _fit_standardized(self, Z: np.ndarray, labels: np.ndarray, sw: np.ndarray, counts: np.ndarray) -> None:
        self.calibrated_ = bool(counts.min() >= CALIBRATION_FOLDS)
        self.calib_a_: np.ndarray | None = None
        self.calib_b_: np.ndarray | None = None
        # sklearn resolves dict class weights by label; we fit on labels so dict keys keep their meaning.
        if self.calibrated_:
            # Platt needs margins the SVM did not train on: out-of-fold ones (cv=3); ensemble=False
            # keeps a single SVM refitted on all the data, the one predict() uses.
            cal = CalibratedClassifierCV(self._svc(), method="sigmoid", cv=CALIBRATION_FOLDS, ensemble=False)
            fitted = cal.fit(Z, labels, sample_weight=sw).calibrated_classifiers_[0]
            svc = fitted.estimator
            self.calib_a_ = np.array([c.a_ for c in fitted.calibrators], dtype=np.float64)
            self.calib_b_ = np.array([c.b_ for c in fitted.calibrators], dtype=np.float64)
        else:
            svc = self._svc().fit(Z, labels, sample_weight=sw)
        self.n_iter_ = int(svc.n_iter_)
        self.coef_, self.intercept_ = fold_standardization(svc.coef_, svc.intercept_, self.mean_, self.scale_)

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed margins, shape (N, K); shape (N,) for two classes (margin of ``classes_[1]``)."""
        check_is_fitted(self, "coef_")
        z = linear_scores(check_X(type(self).__name__, X, self.n_features_in_), self.coef_, self.intercept_)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[idx]

    def to_params(self) -> LinearParams:
        """The fitted head as plain arrays (what a bundle stores); same ``predict_proba``."""
        check_is_fitted(self, "coef_")
        if self.calib_a_ is None:
            return LinearParams(self.coef_, self.intercept_, "softmax")
        return LinearParams(self.coef_, self.intercept_, "ovr_sigmoid", self.calib_a_, self.calib_b_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, K): normalised Platt sigmoids when ``calibrated_``, else softmax of margins."""
        s = self.decision_function(X)
        s2 = s[:, None] if s.ndim == 1 else s
        if self.calib_a_ is None:
            return softmax(np.hstack([np.zeros_like(s2), s2]) if s.ndim == 1 else s2, axis=1)
        p = expit(-(self.calib_a_ * s2 + self.calib_b_))  # 1 / (1 + exp(a s + b)), no overflow warning
        if s.ndim == 1:
            return np.column_stack([1.0 - p[:, 0], p[:, 0]])
        total = p.sum(axis=1, keepdims=True)
        # All sigmoids ~0 (far from every class): uniform, as sklearn does.
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])
