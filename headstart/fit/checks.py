"""Checks on the images a fit actually uses, shared by both strategies: every class trainable, no test
image that is a byte-identical copy of a training image, and no class told apart by its images' size."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart.data.decode import header_size
from headstart.data.folder import Sample
from headstart.data.scan import workable_fraction
from headstart.errors import ConfigError, DatasetError

__all__ = ["SPLIT_IDS", "check_cv_folds", "count_duplicates_across_splits", "require_training_images", "size_cue"]

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # how a split is stored in per-image arrays
TRAIN, VAL, TEST = SPLIT_IDS["train"], SPLIT_IDS["val"], SPLIT_IDS["test"]


def require_training_images(classes: Sequence[str], labels: np.ndarray, split: np.ndarray) -> None:
    """Refuse a class left without a decodable training image (all its files skipped): the head could not
    learn it, and the metrics code would fail on a class the model never saw."""
    counts = np.bincount(labels[split == TRAIN], minlength=len(classes))
    if empty := [classes[c] for c in np.flatnonzero(counts == 0)]:
        raise DatasetError(f"class(es) {', '.join(empty)} have no decodable training image (their files were "
                           "skipped: see the warnings above); replace those files, or remove the class folder")


def check_cv_folds(labels: np.ndarray, classes: Sequence[str], folds: int, *, seed: int | None = None,
                   finetune: bool = False, selection_cv: bool = False) -> None:
    """Stratified k-fold cross-validation needs every class in every fold: at least ``folds`` training images
    per class. Checked on the listed files before any is read, and again on the decoded ones.

    The message suggests only what works: fewer folds when every class has 2+ images; a validation share
    when ``seed`` is given (``labels`` are then the train split a val split would be carved from, so the very
    split is tried); for fine-tuning, a random head, which needs no probe; and always more images or a val/
    folder.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    if counts.min() >= folds:
        return
    c = int(counts.argmin())
    n = int(counts[c])
    fixes = []
    if n >= 2:
        fixes.append(f"use --cv-folds {n}")
    if seed is not None and (fraction := workable_fraction(np.asarray(labels).tolist(), seed)) is not None:
        fixes.append(f"use --val-fraction {fraction:g} (choices on a validation split instead)")
    if finetune:
        fixes.append("use --head-init random (no linear probe, so no cross-validation)")
    if selection_cv:
        fixes.append("use --selection val (choices on the validation split)")
    few = [classes[i] for i in np.flatnonzero(counts < folds)]
    fixes.append(f"add images ({folds} per class for {folds} folds)")
    if not selection_cv:
        fixes.append("provide a val/ folder")
    when = "(--selection cv)" if selection_cv else "when there is no validation split"
    names = ", ".join(repr(x) for x in few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")
    raise ConfigError(f"class {classes[c]!r} has only {n} training image{'s' if n != 1 else ''}, fewer than the "
                      f"{folds} cross-validation folds (linear.cv_folds) that choose C and the layer {when} "
                      f"(too few: {names}); {', or '.join(fixes)}")


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


# Cosine similarity of pooled codes from which two images count as near-duplicates (the same picture
# re-encoded, resized or lightly edited); each backbone says its own (``Backbone.near_copy_cosine``).
# Measured with lite0: the closest test/train pair of different pictures in intel_scenes_small is at 0.94;
# 185 of brain_mri's 394 test images have a training image at 0.995-1.0 that is not byte-identical.
NEAR_DUPLICATE_COSINE = 0.99
# All pairs are compared: up to this many (about 3 s of matrix products on 2 cores at 1,280 dimensions),
# beyond it the check is skipped and reported as not done (None) rather than slowing a large run.
NEAR_DUPLICATE_MAX_PAIRS = 50_000_000


def near_duplicate_pairs(X: np.ndarray, queries: np.ndarray, refs: np.ndarray, hashes: Sequence[str], *,
                         threshold: float = NEAR_DUPLICATE_COSINE,
                         chunk: int = 1024) -> list[tuple[int, int, float]]:
    """``(query row, closest ref row, cosine)`` for every query row whose closest ``refs`` row is at least
    ``threshold``-similar in ``X``, leaving out queries with a byte-identical copy among ``refs`` (other than
    themselves): those are exact copies, counted as such. ``queries`` and ``refs`` are row indices; a row is
    never its own neighbour."""
    X = np.asarray(X, dtype=np.float32)
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    R = Z[refs]
    ref_rows: dict[str, set[int]] = {}
    for r in refs.tolist():
        ref_rows.setdefault(hashes[r], set()).add(r)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        S = Z[q] @ R.T
        S[q[:, None] == refs[None, :]] = -np.inf
        best = S.argmax(1)
        for i, j in enumerate(best):
            cos = float(S[i, j])
            qi, rj = int(q[i]), int(refs[j])
            if cos >= threshold and not ref_rows.get(hashes[qi], set()) - {qi}:
                out.append((qi, rj, cos))
    return out


def count_near_duplicates_across_splits(X: np.ndarray, hashes: Sequence[str], split: np.ndarray,
                                        paths: Sequence[Path], *,
                                        threshold: float = NEAR_DUPLICATE_COSINE) -> int | None:
    """Test images that are near-copies of a train or val image (pooled codes' cosine >= the threshold, not
    byte-identical): warned about once, and counted; like exact copies, they make the test figure optimistic.
    None when there are too many pairs to compare (``NEAR_DUPLICATE_MAX_PAIRS``)."""
    test, rest = np.flatnonzero(split == TEST), np.flatnonzero(split != TEST)
    if not len(test) or not len(rest):
        return 0
    if len(test) * len(rest) > NEAR_DUPLICATE_MAX_PAIRS:
        return None
    pairs = near_duplicate_pairs(X, test, rest, hashes, threshold=threshold)
    if pairs:
        q, r, cos = pairs[0]
        warnings.warn(f"{len(pairs)} image(s) in test are near-copies of training images (same picture "
                      f"re-encoded or resized; CNN codes {threshold:g}+ similar): the test figure is "
                      f"optimistic; e.g. {paths[q]} ~ {paths[r]} ({cos:.4f})", stacklevel=3)
    return len(pairs)


def size_cue(samples: Sequence[Sample], classes: Sequence[str], *, max_images: int = 2000, seed: int = 0,
             threshold: float = 0.4) -> str | None:
    """A warning when image size tells the class in the training data, else None.

    Images of one class that all come from one source (a scanner, a website) often share a size, and
    resizing leaves traces of it (sharpness, interpolation noise) that a network learns instead of the
    content; new images from elsewhere are then misclassified. Reads the headers of up to ``max_images``
    training images; warns when the share of the most common size differs by ``threshold`` or more between
    the whole set and one class (with 10+ sampled images).
    """
    rng = np.random.default_rng(seed)
    picked = [samples[i] for i in sorted(rng.permutation(len(samples))[:max_images])]
    sizes: list[tuple[tuple[int, int], int]] = []
    for s in picked:
        # The header only; a file that cannot be opened is reported by the decoder, which names it (Pillow's
        # decompression-bomb warning would not).
        if (size := header_size(s.path)) is not None:
            sizes.append((size, s.label))
    if len(sizes) < 20:
        return None
    (w, h), _ = Counter(size for size, _ in sizes).most_common(1)[0]
    overall = np.mean([size == (w, h) for size, _ in sizes])
    share = {}
    for c in range(len(classes)):
        at = [size == (w, h) for size, y in sizes if y == c]
        if len(at) >= 10:
            share[classes[c]] = float(np.mean(at))
    if not share:
        return None
    lo, hi = min(share, key=share.__getitem__), max(share, key=share.__getitem__)
    if max(overall - share[lo], share[hi] - overall) < threshold:
        return None
    message = (f"image size tells the class in the training data: {w}x{h} is {overall:.0%} of the training "
               f"images but {share[lo]:.0%} of {lo} and {share[hi]:.0%} of {hi}. A model can learn where images "
               "come from instead of what they show: check that new images come from the same sources, or "
               "fine-tune with augmentation that hides the source: --downscale 0.8 --color-jitter 0.3")
    warnings.warn(message, stacklevel=3)
    return message
