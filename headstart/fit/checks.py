"""Checks on the images a fit actually uses, shared by both strategies: every class trainable, and no
test image that is a byte-identical copy of a training image."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart.errors import DatasetError

__all__ = ["SPLIT_IDS", "count_duplicates_across_splits", "require_training_images"]

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # how a split is stored in per-image arrays
TRAIN, VAL, TEST = SPLIT_IDS["train"], SPLIT_IDS["val"], SPLIT_IDS["test"]


def require_training_images(classes: Sequence[str], labels: np.ndarray, split: np.ndarray) -> None:
    """Refuse a class left without a decodable training image (all its files skipped): the head could not
    learn it, and the metrics code would fail on a class the model never saw."""
    counts = np.bincount(labels[split == TRAIN], minlength=len(classes))
    if empty := [classes[c] for c in np.flatnonzero(counts == 0)]:
        raise DatasetError(f"class(es) {', '.join(empty)} have no decodable training image (their files were "
                           "skipped: see the warnings above); replace those files, or remove the class folder")


def count_duplicates_across_splits(hashes: Sequence[str], split: np.ndarray, paths: Sequence[Path]) -> int:
    """Test images whose bytes equal a train or val image's (SHA-256): warned about once, and counted.

    Such copies make the test figure optimistic: the model was fitted on the very same picture.
    """
    seen: dict[str, Path] = {}
    for h, s, p in zip(hashes, split.tolist(), paths, strict=True):
        if s != TEST:
            seen.setdefault(h, p)
    dups = [(p, seen[h]) for h, s, p in zip(hashes, split.tolist(), paths, strict=True) if s == TEST and h in seen]
    if dups:
        test, train = dups[0]
        warnings.warn(f"{len(dups)} image(s) in test are byte-identical to training images: the test figure is "
                      f"optimistic; e.g. {test} = {train}; remove the copies from one of the splits", stacklevel=3)
    return len(dups)
