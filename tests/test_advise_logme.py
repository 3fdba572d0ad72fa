"""LogME against brute-force evidence maximisation, and the properties that make it compare taps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from headstart.advise.logme import logme, logme_detail


def _direct_log_evidence(F: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log N(y; 0, I/beta + F F'/alpha): the marginal likelihood written directly, with determinants, sharing
    nothing with the eigenbasis formulas under test."""
    n = len(y)
    cov = np.eye(n) / np.exp(log_beta) + F @ F.T / np.exp(log_alpha)
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (logdet + y @ np.linalg.solve(cov, y) + n * np.log(2 * np.pi)))


def _brute_force_max(F: np.ndarray, y: np.ndarray) -> float:
    """A grid over (log alpha, log beta), then Nelder-Mead from the best grid point."""
    grid = np.linspace(-8, 10, 37)
    start = max((_direct_log_evidence(F, y, a, b), a, b) for a in grid for b in grid)[1:]
    res = minimize(lambda p: -_direct_log_evidence(F, y, *p), start, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000})
    return float(-res.fun)


def _codes(rng: np.random.Generator, n: int, d: int, k: int = 3, noise: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]  # every class present
    F = np.eye(k)[labels] @ rng.normal(size=(k, d)) + noise * rng.normal(size=(n, d)) + 1.0
    return F, labels


@pytest.mark.parametrize(("n", "d"), [(40, 6), (16, 30), (25, 25)])
def test_fixed_point_reaches_the_brute_force_maximum(n: int, d: int) -> None:
    """Per class, the fixed point's evidence equals the maximum found by direct search, with more images than
    features, fewer (where log|A| needs the d - k prior-only directions), and as many."""
    F, labels = _codes(np.random.default_rng(n + d), n, d)
    result = logme_detail(F, labels)
    for c, per_sample in enumerate(result.per_class):
        brute = _brute_force_max(F, (labels == c).astype(float))
        assert per_sample * n == pytest.approx(brute, abs=1e-5 * n)
        # ... and at the fixed point's own (alpha, beta), the direct formula gives the same value.
        direct = _direct_log_evidence(F, (labels == c).astype(float), np.log(result.alpha[c]), np.log(result.beta[c]))
        assert direct == pytest.approx(per_sample * n, rel=1e-9, abs=1e-9)
    assert result.score == pytest.approx(np.mean(result.per_class))


def test_informative_codes_score_higher_and_scale_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    F, labels = _codes(rng, 120, 8)
    noise = rng.normal(size=F.shape) + 1.0
    assert logme(F, labels) > logme(noise, labels) + 0.1
    # alpha is maximised, so codes x 100 (a stage with larger activations) score the same.
    assert logme(100.0 * F, labels) == pytest.approx(logme(F, labels), rel=1e-9)


def test_width_is_charged_for() -> None:
    """The same information with 200 junk channels appended scores lower: the Occam factor lets taps of 40
    and of 1,280 channels be compared, where training accuracy always favours the wider."""
    rng = np.random.default_rng(1)
    F, labels = _codes(rng, 150, 6, noise=0.5)
    wide = np.c_[F, rng.normal(size=(150, 200))]
    assert logme(wide, labels) < logme(F, labels)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="n labels"):
        logme(np.ones((5, 2)), np.zeros(4))
