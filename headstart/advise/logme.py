"""LogME (You et al., ICML 2021): how well a tap's codes explain the labels, as the maximised evidence of a
Bayesian linear model, with no training and nothing to tune.

For one class c, the targets are its one-hot column y (n) and the model is y = F w + noise with a prior
w ~ N(0, 1/alpha I_D) and noise ~ N(0, 1/beta). The evidence (marginal likelihood) is

    log p(y | F, alpha, beta) = D/2 log alpha + n/2 log beta - n/2 log 2pi
                                - beta/2 ||F m - y||^2 - alpha/2 m'm - 1/2 log|A|,
    A = alpha I + beta F'F,   m = beta A^-1 F' y.

MacKay's fixed point maximises it over (alpha, beta): gamma = sum_i beta s_i / (alpha + beta s_i),
alpha = gamma / m'm, beta = (n - gamma) / ||F m - y||^2, where s_i are the eigenvalues of F'F. On the
eigenbasis every term is a sum over the eigenvalues, so one eigendecomposition serves every class and every
iteration. LogME is the maximum divided by n, averaged over the classes. Because alpha is maximised, the
scale of the codes does not matter, and the evidence's Occam factor (log|A|) charges wide taps for their
width: the score compares taps of different widths, which accuracy on the training data cannot.

>>> import numpy as np
>>> rng = np.random.default_rng(0); y = rng.integers(0, 2, 60)
>>> logme(np.c_[y + 0.1 * rng.normal(size=60), rng.normal(size=60)], y) > logme(rng.normal(size=(60, 2)), y)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LogMEResult", "fit_evidence", "log_evidence", "logme", "logme_detail", "spectrum"]

_MAX_ITER = 1000
_RTOL = 1e-10  # on alpha/beta between iterations: the fixed point converges in a handful of steps anyway
_TINY = 1e-300  # keeps log() finite when a class is fitted exactly (residual 0) or not at all (m'm 0)
_T_MAX = 1e300  # alpha / beta, capped: the prior then pins every weight to 0 either way


@dataclass(frozen=True)
class LogMEResult:
    score: float  # mean over classes of the maximised log evidence per sample
    per_class: list[float]
    alpha: list[float]
    beta: list[float]


def spectrum(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, U)``: the nonzero eigenvalues of F'F and the n x k left singular vectors of F.

    Decomposes the smaller of the two Gram matrices (D x D when there are more images than features),
    which is several times cheaper than an SVD of F itself for 2,000 x 1,280 codes.
    """
    F = np.asarray(F, dtype=np.float64)
    n, d = F.shape
    s, W = np.linalg.eigh(F @ F.T if n <= d else F.T @ F)
    keep = s > max(float(s.max()), 0.0) * 1e-12  # the rank: roundoff-level eigenvalues are zeros
    s, W = s[keep], W[:, keep]
    return (s, W) if n <= d else (s, (F @ W) / np.sqrt(s))


def _terms(s: np.ndarray, z2: np.ndarray, rest: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """``(gamma, m'm, ||Fm - y||^2)`` on the eigenbasis (``rest``: the part of ||y||^2 outside span(F))."""
    t = min(alpha / beta, _T_MAX)
    r = 1.0 / (s + t)  # as factors: (s + t) ** 2 overflows when the labels are out of span(F) (alpha -> inf)
    gamma = float(np.sum(s * r))
    mm = float(np.sum(s * z2 * r * r))
    res = float(np.sum(z2 * (t * r) ** 2)) + rest
    return gamma, mm, res


def log_evidence(s: np.ndarray, z: np.ndarray, yy: float, n: int, d: int, alpha: float, beta: float) -> float:
    """The total log evidence at (alpha, beta), from the spectrum (``yy`` = ||y||^2).

    log|A| has the k nonzero eigenvalues' factors (alpha + beta s_i) and ``d - k`` factors alpha: with more
    features than images most directions of w see no data, and the prior alone pays for them.
    """
    z2 = z * z
    _, mm, res = _terms(s, z2, max(yy - float(z2.sum()), 0.0), alpha, beta)
    logdet = float(np.sum(np.log(alpha + beta * s))) + (d - len(s)) * math.log(alpha)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res - alpha / 2 * mm - logdet / 2)


def fit_evidence(s: np.ndarray, z: np.ndarray, yy: float, n: int, d: int) -> tuple[float, float, float]:
    """``(max log evidence, alpha, beta)`` for one target column, by MacKay's fixed-point iteration."""
    z2 = z * z
    rest = max(yy - float(z2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(_MAX_ITER):
        gamma, mm, res = _terms(s, z2, rest, alpha, beta)
        new_alpha = gamma / max(mm, _TINY)
        new_beta = max(n - gamma, _TINY) / max(res, _TINY)
        done = abs(new_alpha - alpha) <= _RTOL * alpha and abs(new_beta - beta) <= _RTOL * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return log_evidence(s, z, yy, n, d, alpha, beta), alpha, beta


def logme(F: np.ndarray, labels: np.ndarray) -> float:
    """The LogME score of codes ``F`` (n x D) for integer ``labels``: higher is better (see the module)."""
    return logme_detail(F, labels).score


def logme_detail(F: np.ndarray, labels: np.ndarray) -> LogMEResult:
    """LogME with each class's log evidence per sample and its (alpha, beta)."""
    F = np.asarray(F, dtype=np.float64)
    labels = np.asarray(labels)
    if F.ndim != 2 or len(F) != len(labels) or len(F) < 2:
        raise ValueError(f"logme: need F of shape (n >= 2, D) and n labels; got {F.shape} and {labels.shape}")
    n, d = F.shape
    s, U = spectrum(F)
    per_class, alphas, betas = [], [], []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        ev, a, b = fit_evidence(s, U.T @ y, float(y @ y), n, d)
        per_class.append(ev / n)
        alphas.append(a)
        betas.append(b)
    return LogMEResult(float(np.mean(per_class)), per_class, alphas, betas)
