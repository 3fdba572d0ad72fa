"""Linear heads: agreement with scikit-learn's objective, estimator contract, C selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from headstart.errors import ConfigError
from headstart.heads import LinearSVM, SoftmaxRegression, SweepResult, cross_val_sweep, sweep_C
from headstart.heads.softmax import auto_solver

TIGHT = dict(tol=1e-10, max_iter=5000)  # converge far enough that solver differences vanish


@pytest.fixture(scope="module")
def data4() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(300, 40, n_informative=10, n_classes=4, random_state=0)


def _sk(X: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    with threadpool_limits(limits=1, user_api="blas"):  # tiny problem: BLAS threads only slow it down
        return LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, y)


def _assert_same(ours_coef, ours_b, ours_proba, ours_pred, sk: LogisticRegression, X) -> None:
    rel = np.abs(ours_coef - sk.coef_).max() / np.abs(sk.coef_).max()
    assert rel < 1e-3
    assert np.abs(ours_b - sk.intercept_).max() < 1e-3 * max(1.0, np.abs(sk.intercept_).max())
    assert np.abs(ours_proba - sk.predict_proba(X)).max() < 1e-3
    np.testing.assert_array_equal(ours_pred, sk.predict(X))


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_torch_matches_sklearn_raw_features(data4, C):
    X, y = data4
    m = SoftmaxRegression(C, standardize=False, solver="torch", **TIGHT).fit(X, y)
    _assert_same(m.coef_, m.intercept_, m.predict_proba(X), m.predict(X), _sk(X, y, C), X)


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_torch_matches_sklearn_standardized(data4, C):
    X, y = data4
    X = X * np.linspace(0.1, 10, X.shape[1]) + 3.0  # make standardisation matter
    m = SoftmaxRegression(C, solver="torch", **TIGHT).fit(X, y)
    scaler = StandardScaler().fit(X)
    np.testing.assert_allclose(m.mean_, scaler.mean_)
    # StandardScaler's scale, plus an epsilon of 1e-3 x the median std (visible only on small-std features).
    np.testing.assert_allclose(m.scale_, scaler.scale_, rtol=3e-3)
    Xs = (X - m.mean_) / m.scale_
    sk = _sk(Xs, y, C)
    # Map our original-space head back to the standardised space sklearn saw.
    coef_std = m.coef_ * m.scale_
    b_std = m.intercept_ + m.coef_ @ m.mean_
    _assert_same(coef_std, b_std, m.predict_proba(X), m.predict(X), sk, Xs)


def test_binary_matches_sklearn_and_shapes():
    X, y = make_classification(200, 10, random_state=1)
    y = np.where(y == 1, "dog", "cat")
    m = SoftmaxRegression(1.0, standardize=False, solver="torch", **TIGHT).fit(X, y)
    sk = _sk(X, y, 1.0)
    _assert_same(m.coef_, m.intercept_, m.predict_proba(X), m.predict(X), sk, X)
    assert m.coef_.shape == (1, 10) and m.decision_function(X).shape == (200,)
    assert m.predict_proba(X).shape == (200, 2)
    np.testing.assert_allclose(m.predict_proba(X).sum(axis=1), 1.0)
    assert list(m.classes_) == ["cat", "dog"]
    # The bundle's numpy-only form (softmax kind) reproduces the head, binary and multiclass.
    np.testing.assert_allclose(m.to_params().predict_proba(X), m.predict_proba(X), atol=1e-12)
    m4 = SoftmaxRegression().fit(*make_classification(100, 6, n_informative=4, n_classes=3, random_state=0))
    np.testing.assert_allclose(m4.to_params().predict_proba(X[:, :6]), m4.predict_proba(X[:, :6]), atol=1e-12)


def test_sklearn_solver_and_float32_agree_with_torch(data4):
    X, y = data4
    ref = SoftmaxRegression(1.0, solver="torch", **TIGHT).fit(X, y)
    via_sk = SoftmaxRegression(1.0, solver="sklearn", **TIGHT).fit(X, y)
    f32 = SoftmaxRegression(1.0, solver="torch").fit(X.astype(np.float32), y)  # float32 maths, default tol
    for m in (via_sk, f32):
        assert np.abs(m.predict_proba(X) - ref.predict_proba(X)).max() < 2e-3
        assert np.mean(m.predict(X) == ref.predict(X)) == 1.0
    assert via_sk.solver_ == "sklearn" and f32.solver_ == "torch"
    assert SoftmaxRegression().fit(X, y).solver_ == "sklearn"  # auto: small
    assert auto_solver(10000, 1280, np.float32) == "torch" and auto_solver(10000, 1280, np.float64) == "sklearn"


def test_sample_weight_equals_repetition(data4):
    X, y = data4
    w = np.ones(len(y))
    w[:10] = 2.0
    c = SoftmaxRegression(1.0, standardize=False, **TIGHT).fit(X, y, sample_weight=w)
    d = SoftmaxRegression(1.0, standardize=False, **TIGHT).fit(np.r_[X[:10], X], np.r_[y[:10], y])
    np.testing.assert_allclose(c.coef_, d.coef_, rtol=1e-4, atol=1e-6)


def test_class_weight_balanced_raises_minority_recall():
    X, y = make_classification(
        400, 8, n_informative=3, weights=[0.9, 0.1], class_sep=0.5, flip_y=0.0, random_state=3
    )
    plain = SoftmaxRegression(1.0).fit(X, y)
    bal = SoftmaxRegression(1.0, class_weight="balanced").fit(X, y)
    recall = lambda m: np.mean(m.predict(X[y == 1]) == 1)  # noqa: E731
    assert recall(bal) > recall(plain) + 0.1
    assert not np.allclose(bal.coef_, plain.coef_)


def test_constant_and_dead_features_and_warm_start(data4):
    X, y = data4
    dead = 1e-7 * np.random.default_rng(0).normal(size=len(X))  # a channel that is only rounding noise
    X = np.c_[X, np.full(len(X), 5.0), dead]
    m = SoftmaxRegression(1.0, solver="torch").fit(X, y)
    assert np.all(np.isfinite(m.coef_)) and np.all(m.coef_[:, -2] == 0.0)
    assert m.scale_[-1] > 5e-4  # ~1e-3 x the typical std (~1): not blown up to unit variance
    assert np.abs(m.coef_[:, -1]).max() * dead.std() < 1e-2  # so it barely moves the logits
    cold = SoftmaxRegression(1.2, solver="torch").fit(X, y)
    warm = SoftmaxRegression(1.2, solver="torch")
    warm._set_warm_start(m)
    warm.fit(X, y)
    assert warm.n_iter_ < cold.n_iter_
    np.testing.assert_array_equal(warm.predict(X), cold.predict(X))


def test_estimator_contract(data4):
    X, y = data4
    for est in (SoftmaxRegression(0.5, class_weight="balanced"), LinearSVM(0.5)):
        with pytest.raises(NotFittedError):
            est.predict(X)
        assert not hasattr(est, "coef_") and not hasattr(est, "classes_")
        twin = clone(est)
        assert twin.get_params() == est.get_params()
        assert twin.set_params(C=2.0) is twin and twin.C == 2.0 and est.C == 0.5
        assert est.fit(X, y) is est
        assert est.coef_.shape == (4, 40) and est.intercept_.shape == (4,)
        assert 0.0 <= est.score(X, y) <= 1.0
        with pytest.raises(ConfigError, match="40"):
            est.predict(X[:, :5])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", None])
def test_bad_C_names_parameter_and_value(data4, bad):
    X, y = data4
    for est in (SoftmaxRegression(bad), LinearSVM(bad)):
        with pytest.raises(ConfigError, match=r"'C'.*" + ("nan" if bad != bad else repr(bad).replace(".", r"\."))):
            est.fit(X, y)


def test_other_bad_inputs(data4):
    X, y = data4
    with pytest.raises(ConfigError, match="300 rows"):
        SoftmaxRegression().fit(X, y[:-1])
    with pytest.raises(ConfigError, match="solver"):
        SoftmaxRegression(solver="adam").fit(X, y)
    with pytest.raises(ConfigError, match="max_iter"):
        SoftmaxRegression(max_iter=0).fit(X, y)
    with pytest.raises(ConfigError, match="class_weight"):
        SoftmaxRegression(class_weight="auto").fit(X, y)
    with pytest.raises(ConfigError, match="single class"):
        SoftmaxRegression().fit(X, np.zeros(len(X)))
    with pytest.raises(ConfigError, match="NaN"):
        SoftmaxRegression().fit(np.where(X > 2, np.nan, X), y)


def test_linear_svm_probabilities_and_separable():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 6)) + 6.0 * np.eye(3, 6)[y]
    m = LinearSVM(1.0).fit(X, y)
    assert m.score(X, y) == 1.0 and m.calibrated_ and m.calib_a_.shape == (3,)
    p = m.predict_proba(X)
    assert p.shape == (60, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.mean(p.argmax(1) == y) == 1.0
    # Folded coefficients reproduce LinearSVC on standardised data; probabilities its Platt calibration.
    Xs = StandardScaler().fit_transform(X)
    ref = LinearSVC(C=1.0, dual="auto", max_iter=5000, random_state=0).fit(Xs, y)
    np.testing.assert_allclose(m.decision_function(X), ref.decision_function(Xs), atol=1e-6)
    cal = CalibratedClassifierCV(ref, method="sigmoid", cv=3, ensemble=False).fit(Xs, y)
    np.testing.assert_allclose(p, cal.predict_proba(Xs), atol=1e-6)
    # ... and the bundle's numpy-only form gives the same numbers.
    assert m.to_params().proba == "ovr_sigmoid"
    np.testing.assert_allclose(m.to_params().predict_proba(X), p, atol=1e-9)

    tiny = LinearSVM().fit(X[[0, 1, 20, 21]], y[[0, 1, 20, 21]])  # 2 per class: cannot calibrate
    assert not tiny.calibrated_ and tiny.calib_a_ is None and tiny.decision_function(X).shape == (60,)
    np.testing.assert_allclose(tiny.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_allclose(tiny.to_params().predict_proba(X), tiny.predict_proba(X), atol=1e-9)
    binary = LinearSVM().fit(X[y < 2], y[y < 2])
    assert binary.calib_a_.shape == (1,) and binary.predict_proba(X).shape == (60, 2)
    np.testing.assert_allclose(binary.to_params().predict_proba(X), binary.predict_proba(X), atol=1e-9)


def _noisy(n: int, d: int, rng: np.random.Generator, flip: float = 0.0):
    """Weak signal spread over all d features; ``flip`` of each class mislabelled."""
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 0.1 * (2 * y - 1)[:, None]
    noisy = y.copy()
    for c in (0, 1):
        idx = np.flatnonzero(y == c)[: int(flip * n / 2)]
        noisy[idx] = 1 - c
    return X, noisy, y


def test_sweep_prefers_large_C_when_clean_and_small_C_when_noisy():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    Xtr = rng.normal(size=(40, 5)) + 4.0 * (2 * y - 1)[:, None] * np.eye(5)[0]
    Xva = rng.normal(size=(40, 5)) + 4.0 * (2 * y - 1)[:, None] * np.eye(5)[0]
    clean = sweep_C(lambda C: SoftmaxRegression(C), Xtr, y, Xva, y)  # coarse + fine grid
    assert isinstance(clean, SweepResult) and clean.best_score == 1.0 and clean.best_C >= 1.0
    Cs = [row[0] for row in clean.table]
    assert Cs == sorted(Cs) and len(Cs) > 13  # refinement added points
    assert clean.best_estimator.C == clean.best_C

    rng = np.random.default_rng(0)
    Xtr, ytr, _ = _noisy(40, 200, rng, flip=0.3)  # 40 samples, 200 dims, 30% wrong labels
    Xva, _, yva = _noisy(400, 200, rng)
    noisy = sweep_C(lambda C: SoftmaxRegression(C), Xtr, ytr, Xva, yva, Cs=np.logspace(-6, 6, 7))
    assert noisy.best_C <= 1e-2 < clean.best_C
    accs = dict((C, a) for C, a, _ in noisy.table)
    assert accs[noisy.best_C] > accs[1e6] + 0.05  # overfitting the noise costs accuracy


def test_cross_val_sweep_and_its_errors():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    X = rng.normal(size=(30, 4)) + 3.0 * np.eye(3, 4)[y]
    res = cross_val_sweep(lambda C: LinearSVM(C), X, y, n_splits=3, Cs=[0.01, 1.0])
    assert res.best_C in (0.01, 1.0) and res.best_score > 0.8 and res.best_estimator is None
    with pytest.raises(ConfigError, match=r"class 2 has 3 samples, fewer than n_splits=5.*n_splits=3"):
        cross_val_sweep(lambda C: SoftmaxRegression(C), X[:23], y[:23], n_splits=5, Cs=[1.0])
    with pytest.raises(ConfigError, match="n_splits"):
        cross_val_sweep(lambda C: SoftmaxRegression(C), X, y, n_splits=1)
    with pytest.raises(ConfigError, match="Cs"):
        sweep_C(lambda C: SoftmaxRegression(C), X, y, X, y, Cs=[1.0, -1.0])
    with pytest.raises(ConfigError, match="absent from y_train"):
        sweep_C(lambda C: SoftmaxRegression(C), X[y < 2], y[y < 2], X, y, Cs=[1.0])
