"""Near-copies (the same picture re-encoded or resized) found by the cosine of pooled codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import headstart.fit.checks as checks
from headstart.fit.checks import SPLIT_IDS, count_near_duplicates_across_splits, near_duplicate_pairs

TRAIN, TEST = SPLIT_IDS["train"], SPLIT_IDS["test"]


def _codes() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    a, b = rng.random(64), rng.random(64) - 0.5  # two unrelated pictures' codes (cosine far below 0.99)
    X = np.stack([a, a + rng.normal(0, 0.005, 64), b, a, b * 1.5])
    # row 1: a re-encoded copy of row 0; row 3: a byte-identical copy of row 0; row 4: row 2 rescaled
    return X, ["h0", "h1", "h2", "h0", "h4"]


def test_pairs_are_near_copies_but_not_byte_identical_ones() -> None:
    X, hashes = _codes()
    pairs = near_duplicate_pairs(X, np.array([1, 2, 3]), np.array([0, 4]), hashes)
    assert [(q, r) for q, r, _ in pairs] == [(1, 0), (2, 4)]  # row 3 is an exact copy of row 0: not "near"
    assert all(c >= 0.99 for _, _, c in pairs)
    assert near_duplicate_pairs(X, np.array([0, 2]), np.array([0, 2]), hashes) == []  # never its own neighbour


def test_across_splits_warns_once_and_counts(recwarn: pytest.WarningsRecorder) -> None:
    X, hashes = _codes()
    split = np.array([TRAIN, TEST, TRAIN, TEST, TEST])
    paths = [Path(f"img{i}.jpg") for i in range(5)]
    assert count_near_duplicates_across_splits(X, hashes, split, paths) == 2  # 1 ~ 0 and 4 ~ 2; 3 is exact
    (w,) = recwarn.list
    assert "near-copies of training images" in str(w.message) and "img1.jpg ~ img0.jpg" in str(w.message)


def test_too_many_pairs_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    X, hashes = _codes()
    monkeypatch.setattr(checks, "NEAR_DUPLICATE_MAX_PAIRS", 3)
    split = np.array([TRAIN, TEST, TRAIN, TEST, TEST])
    assert count_near_duplicates_across_splits(X, hashes, split, [Path("x")] * 5) is None


def test_an_exact_copy_is_not_also_counted_near_when_its_closest_is_another_picture() -> None:
    X, hashes = _codes()
    X = np.vstack([X, X[0]])  # row 5: a third file with row 0's codes and a new hash: a near-copy of 0 and 3
    hashes = [*hashes, "h5"]
    # row 3 (hash h0) has its exact copy, row 0, among refs, even though row 5 ties with it for closest
    assert [q for q, _, _ in near_duplicate_pairs(X, np.array([3]), np.array([5, 0]), hashes)] == []
    assert [q for q, _, _ in near_duplicate_pairs(X, np.array([5]), np.array([0, 3]), hashes)] == [5]
