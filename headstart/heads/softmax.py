"""Multinomial logistic regression on CNN codes, with scikit-learn's exact objective.

Also holds the validation/standardisation helpers the other heads share.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from headstart.errors import ConfigError
from headstart.heads.params import LinearParams

# "auto" uses torch for float32 codes with at least this many entries (N*D), sklearn otherwise.
# Measured with benchmarks/bench_heads.py (2-core CPU, K=6, C=1): see the SoftmaxRegression docstring.
AUTO_TORCH_MIN_ENTRIES = 5_000_000


def auto_solver(n_samples: int, n_features: int, dtype: np.dtype) -> str:
    """The solver ``solver="auto"`` runs: ``"torch"`` for big float32 codes, else ``"sklearn"``."""
    big = n_samples * n_features >= AUTO_TORCH_MIN_ENTRIES
    return "torch" if big and np.dtype(dtype) == np.float32 else "sklearn"


# ----------------------------------------------------------------------------- shared helpers
def param_error(owner: str, name: str, constraint: str, value: Any) -> ConfigError:
    return ConfigError(f"The '{name}' parameter of {owner} must be {constraint}. Got {value!r} instead.")


def check_positive(owner: str, name: str, value: Any, *, integer: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number > 0 (an int when ``integer``)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not (np.isfinite(value) and value > 0):
        what = "an int in the range [1, inf)" if integer else "a float in the range (0, inf)"
        raise param_error(owner, name, what, value)


def check_class_weight(owner: str, value: Any) -> None:
    if not (value is None or value == "balanced" or isinstance(value, dict)):
        raise param_error(owner, "class_weight", "None, 'balanced' or a dict {label: weight}", value)


def check_X(owner: str, X: Any, n_features: int | None = None) -> np.ndarray:
    """A finite 2-D float array (float32 kept as is: codes are big, copies are expensive)."""
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ConfigError(f"{owner}: X must be a non-empty 2-D array (n_samples, n_features); got shape {X.shape}.")
    if n_features is not None and X.shape[1] != n_features:
        raise ConfigError(
            f"{owner}: X has {X.shape[1]} features but the head was fitted on {n_features}; "
            "extract codes with the same backbone and layer."
        )
    if not np.isfinite(X.sum(dtype=np.float64)):  # NaN/inf propagate; no N x D boolean temporary
        raise ConfigError(f"{owner}: X contains NaN or infinity; check the feature extraction.")
    return X


def check_Xy(owner: str, X: Any, y: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (X, y, sample_weight); y must hold at least two classes."""
    X = check_X(owner, X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ConfigError(f"{owner}: X has {X.shape[0]} rows but y has shape {y.shape}; pass one label per row of X.")
    if np.unique(y).size < 2:
        raise ConfigError(f"{owner}: y holds a single class ({y[0]!r}); a classifier needs at least 2 classes.")
    sw = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if sw.shape != (X.shape[0],) or not np.isfinite(sw).all() or (sw < 0).any() or sw.sum() <= 0:
        raise ConfigError(f"{owner}: sample_weight must be {X.shape[0]} finite non-negative numbers, not all zero.")
    return X, y, sw


def class_sample_weight(owner: str, class_weight: Any, classes: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
    """Per-sample weights from ``class_weight`` (sklearn's definition of 'balanced')."""
    if class_weight is None:
        return np.ones(y_idx.shape[0])
    try:
        per_class = compute_class_weight(class_weight, classes=classes, y=classes[y_idx])
    except ValueError as exc:  # e.g. a dict key that is not a class
        raise ConfigError(f"{owner}: bad class_weight ({exc}); use None, 'balanced' or {{label: weight}}.") from None
    return per_class[y_idx]


def standardize_stats(X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature, in float64: ``scale = sqrt(std^2 + eps^2)``, eps = 1e-3 x median std.

    The epsilon stops nearly-dead channels (std far below the typical feature's, e.g. a ReLU unit
    that fired once, or float16 rounding noise in cached codes) from being blown up to unit variance
    and then carrying weights of 1e4+ in the original space. Constant features map to exactly 0.
    """
    d = X.shape[1]
    if not enabled:
        return np.zeros(d), np.ones(d)
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    live = std > 0
    eps = 1e-3 * float(np.median(std[live])) if live.any() else 1.0
    return mean, np.sqrt(std**2 + eps**2)


def fold_standardization(W: np.ndarray, b: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    """Map weights learned on (x - mean) / scale back to the original feature space."""
    coef = W / scale
    return coef, b - coef @ mean


def linear_scores(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``X @ coef.T + intercept`` in float64, a block of rows at a time (no float64 copy of all of X).

    float64 because folded coefficients can be large with intercepts cancelling them.
    """
    out = np.empty((X.shape[0], coef.shape[0]))
    for i in range(0, X.shape[0], chunk):
        out[i : i + chunk] = X[i : i + chunk].astype(np.float64) @ coef.T + intercept
    return out


# ----------------------------------------------------------------------------- torch solver
# Below this many multiply-adds per pass (N*D*K) torch runs single-threaded: the matrices are too small
# to split, and idle OpenMP threads spin-waiting made fits 10-40x slower on a busy 2-core machine.
TORCH_SINGLE_THREAD_MAX_WORK = 20_000_000


def torch_thread_count(work: int) -> int:
    """Threads for one L-BFGS fit: 1 for small problems, torch's default for big ones.

    Decided by the problem size only, never by machine load: thread count changes float reduction
    order, and the same data with the same seed must give the same head (reproducible metrics.json).
    """
    return 1 if work <= TORCH_SINGLE_THREAD_MAX_WORK else torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily cap torch's intra-op threads (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(min(n, old))
    try:
        yield
    finally:
        torch.set_num_threads(old)


Init = tuple[np.ndarray, np.ndarray]  # (W, b) in the standardised space


def lbfgs_torch(
    Z: np.ndarray, y_idx: np.ndarray, sw: np.ndarray, C: float, n_classes: int, *,
    max_iter: int, tol: float, init: Init | None = None, dtype: torch.dtype = torch.float64,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Full-batch L-BFGS on the (already standardised) codes ``Z``; returns (W, b, n_iter).

    The objective is divided by sum(sw) (same argmin) so ``tol`` bounds the max-abs gradient exactly
    like scikit-learn's ``gtol``, whatever N is.
    """
    rows = 1 if n_classes == 2 else n_classes  # binary: one sigmoid row, like sklearn
    Zt = torch.as_tensor(Z).to(dtype)
    wt = torch.as_tensor(sw / sw.sum(), dtype=dtype)
    lam = 1.0 / (C * float(sw.sum()))
    W = torch.zeros(rows, Z.shape[1], dtype=dtype)
    b = torch.zeros(rows, dtype=dtype)
    if init is not None and init[0].shape == W.shape:
        W.copy_(torch.as_tensor(init[0]))
        b.copy_(torch.as_tensor(init[1]))
    W.requires_grad_(True)
    b.requires_grad_(True)
    target = torch.as_tensor(y_idx == 1, dtype=dtype) if rows == 1 else torch.as_tensor(y_idx, dtype=torch.long)

    # history_size=10 mirrors scipy's maxcor: memory stays 20 copies of W even for 1000 classes.
    opt = torch.optim.LBFGS(
        [W, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2, tolerance_grad=tol,
        tolerance_change=1e-14, history_size=10, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.addmm(b, Zt, W.T)
        if rows == 1:
            loss_i = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        else:
            loss_i = F.cross_entropy(logits, target, reduction="none")
        loss = wt @ loss_i + 0.5 * lam * (W * W).sum()
        loss.backward()
        return loss

    with torch_threads(torch_thread_count(Z.shape[0] * Z.shape[1] * rows)):
        opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    W_np, b_np = W.detach().double().numpy(), b.detach().double().numpy()
    if rows > 1:
        b_np = b_np - b_np.mean()  # softmax is shift-invariant; sklearn-like centred intercepts
    return W_np, b_np, n_iter


def lbfgs_sklearn(
    Z: np.ndarray, y_idx: np.ndarray, sw: np.ndarray, C: float, *, max_iter: int, tol: float, init: Init | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-learn's lbfgs on the same objective; returns (W, b, n_iter) like :func:`lbfgs_torch`."""
    lr = LogisticRegression(C=C, tol=tol, max_iter=max_iter, solver="lbfgs", warm_start=init is not None)
    if init is not None:  # sklearn's warm_start starts from whatever coef_/intercept_ it finds
        lr.coef_, lr.intercept_ = init[0].copy(), init[1].copy()
    # X @ W.T has only K columns: memory-bound, so BLAS threads gain nothing and, on small machines,
    # spin against sklearn's OpenMP loss threads (measured 2-10x slower on 2 cores). One BLAS thread.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fit() warns for both solvers alike
        lr.fit(Z, y_idx, sample_weight=sw)  # class weights are already folded into sw
    return lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64), int(np.max(lr.n_iter_))


# ----------------------------------------------------------------------------- estimator
class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """L2-regularised multinomial logistic regression for CNN codes.

    Minimises exactly scikit-learn's ``LogisticRegression(C=C)`` objective
    ``sum_i w_i * loss_i + ||W||^2 / (2 C)`` (intercept not penalised; ``w_i`` = sample weight x class
    weight) on z-scored features when ``standardize`` (so C means the same for every backbone).
    ``coef_`` / ``intercept_`` are folded back into the original feature space. Two classes use one
    sigmoid row, as sklearn does (``coef_`` is 1 x D, ``decision_function`` returns shape (N,)).

    Solvers: ``"torch"`` is full-batch L-BFGS (strong Wolfe line search, 10 memory pairs like scipy),
    computing in X's dtype: float32 codes give float32 maths (half the memory, ~2x faster per step
    on big inputs, same predictions and objective within ~5e-5 relative at ``tol=1e-6``; tolerances
    far below 1e-6 need float64 input). ``"sklearn"`` is ``LogisticRegression(solver="lbfgs")``.
    ``"auto"`` runs ``"torch"`` for float32 X with ``N * D >= 5e6`` and ``"sklearn"`` otherwise:
    on a 2-core CPU (benchmarks/bench_heads.py, K=6) sklearn was as fast or faster up to
    10000 x 320 (tie there), torch-float32 1.7x faster at 10000 x 1280; torch-float64 never won.
    Both solvers warm-start from :meth:`_set_warm_start` (used by the C sweeps).

    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> SoftmaxRegression(C=10.0).fit(X, y).predict([[0.2], [2.8]]).tolist()
    [0, 1]
    """

    def __init__(
        self, C: float = 1.0, *, standardize: bool = True, class_weight: None | str | dict = None,
        max_iter: int = 500, tol: float = 1e-6, solver: Literal["auto", "torch", "sklearn"] = "auto",
    ) -> None:
        self.C = C
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver

    def _check_params(self) -> None:
        name = type(self).__name__
        check_positive(name, "C", self.C)
        check_positive(name, "max_iter", self.max_iter, integer=True)
        check_positive(name, "tol", self.tol)
        check_class_weight(name, self.class_weight)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise param_error(name, "standardize", "a bool", self.standardize)
        if self.solver not in ("auto", "torch", "sklearn"):
            raise param_error(name, "solver", "one of 'auto', 'torch', 'sklearn'", self.solver)

    def _set_warm_start(self, prev: "SoftmaxRegression") -> None:
        """Start the next fit from ``prev``'s solution (same training data, e.g. the previous C of a sweep)."""
        state = getattr(prev, "_std_solution_", None)
        if state is not None:
            self._init = state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "SoftmaxRegression":
        self._check_params()
        name = type(self).__name__
        X, y, sw = check_Xy(name, X, y, sample_weight)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        sw = sw * class_sample_weight(name, self.class_weight, self.classes_, y_idx)
        self.n_features_in_ = X.shape[1]
        self.mean_, self.scale_ = standardize_stats(X, self.standardize)
        K = len(self.classes_)
        solver = self.solver
        if solver == "auto":
            solver = auto_solver(X.shape[0], X.shape[1], X.dtype)
        self.solver_ = solver
        Z = (X - self.mean_.astype(X.dtype)) / self.scale_.astype(X.dtype) if self.standardize else X

        init = getattr(self, "_init", None)
        if init is not None and init[0].shape != (1 if K == 2 else K, X.shape[1]):
            init = None  # a different problem: start from zero
        opts = dict(max_iter=self.max_iter, tol=self.tol, init=init)
        if solver == "torch":
            # float32 codes -> float32 maths (class docstring: same predictions, faster, half the memory).
            dtype = torch.float32 if X.dtype == np.float32 else torch.float64
            W, b, self.n_iter_ = lbfgs_torch(Z, y_idx, sw, float(self.C), K, dtype=dtype, **opts)
        else:
            W, b, self.n_iter_ = lbfgs_sklearn(Z, y_idx, sw, float(self.C), **opts)
        if self.n_iter_ >= self.max_iter:
            warnings.warn(
                f"{name}(C={self.C}) stopped at max_iter={self.max_iter} before tol={self.tol}; "
                "raise max_iter or lower C.", ConvergenceWarning, stacklevel=2,
            )
        self._std_solution_ = (W, b)
        self.coef_, self.intercept_ = fold_standardization(W, b, self.mean_, self.scale_)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits, shape (N, K); shape (N,) for two classes (logit of ``classes_[1]``)."""
        check_is_fitted(self, "coef_")
        X = check_X(type(self).__name__, X, self.n_features_in_)
        z = linear_scores(X, self.coef_, self.intercept_)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (N, K), columns in ``classes_`` order."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p1 = expit(z)
            return np.column_stack([1.0 - p1, p1])
        return softmax(z, axis=1)

    def to_params(self) -> LinearParams:
        """The fitted head as plain arrays (what a bundle stores); same ``predict_proba``."""
        check_is_fitted(self, "coef_")
        return LinearParams(self.coef_, self.intercept_, "softmax")

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[idx]
