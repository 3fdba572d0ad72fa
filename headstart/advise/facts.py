"""Dataset facts a practitioner checks before choosing anything: images per class and balance, image sizes,
undecodable files, byte-identical copies within and across splits, and the size/source shortcut.

Example (on a folder; ``run.advise`` builds the rows)::

    facts = dataset_facts(ds, FitRows(paths, labels, hashes), failures=[], seed=0)
    facts.per_class_min, facts.duplicates_across_splits   # (38, 0)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.data import ImageFolder
from headstart.data.folder import Sample
from headstart.features.cache import hash_file
from headstart.fit.checks import (
    NEAR_DUPLICATE_MAX_PAIRS,
    SPLIT_IDS,
    count_duplicates_across_splits,
    near_duplicate_pairs,
    size_cue,
)

__all__ = ["Facts", "FitRows", "dataset_facts"]

_MAX_HEADERS = 2000  # image headers read for the size statistics: enough for percentiles, cheap on 100k images


@dataclass(frozen=True)
class FitRows:
    """The images advise scores (every split but test, decoded): their paths, labels and file hashes."""

    paths: list[Path]
    labels: np.ndarray
    hashes: list[str]


@dataclass
class Facts:
    classes: list[str]
    layout: str
    test_source: str  # "folder", or how the test split was carved
    images: int  # decodable images advise read (all splits but test)
    test_images: int
    per_class: dict[str, int]
    per_class_min: int
    per_class_median: float
    imbalance: float  # largest class / smallest class
    image_size: dict[str, Any]
    undecodable: list[dict[str, str]] = field(default_factory=list)
    duplicates_within: int = 0  # extra copies among the images read (same bytes twice counts once)
    duplicates_conflicting: int = 0  # groups of identical files filed under different classes
    duplicates_across_splits: int = 0  # test images byte-identical to a training image
    near_duplicates_within: int | None = 0  # pairs of near-copies among them (None: not checked)
    near_duplicates_conflicting: int = 0  # of those pairs, filed under different classes
    size_cue: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_facts(ds: ImageFolder, rows: FitRows, *, failures: Sequence[Any], seed: int,
                  pooled: np.ndarray | None = None, near_copy_cosine: float | None = None) -> Facts:
    """The facts of ``ds`` from the decoded non-test images ``rows`` (what the scores use; ``pooled``: their
    pooled codes, for near-copies) and the listed test images (hashed for copies, never decoded: nothing
    advise does looks at test content, so near-copies across splits are fit's to report)."""
    counts = np.bincount(rows.labels, minlength=len(ds.classes))
    test = ds.splits.get("test", [])
    within, conflicting = _within_duplicates(rows)
    near, near_conflicting = (_near_within(rows, pooled, near_copy_cosine)
                              if pooled is not None and near_copy_cosine is not None
                              and len(rows.hashes) ** 2 <= NEAR_DUPLICATE_MAX_PAIRS else (None, 0))
    return Facts(
        classes=list(ds.classes), layout=ds.layout, test_source=ds.split_source.get("test", "none"),
        images=len(rows.paths), test_images=len(test),
        per_class={c: int(n) for c, n in zip(ds.classes, counts)},
        per_class_min=int(counts.min()), per_class_median=float(np.median(counts)),
        imbalance=float(counts.max() / max(counts.min(), 1)),
        image_size=_size_stats([*rows.paths, *(s.path for s in test)], seed),
        undecodable=[{"path": str(f.path), "reason": f.reason} for f in failures],
        duplicates_within=within, duplicates_conflicting=conflicting,
        duplicates_across_splits=_across_splits(rows, test),
        near_duplicates_within=near, near_duplicates_conflicting=near_conflicting,
        size_cue=_size_cue(ds, rows, seed),
    )


def _within_duplicates(rows: FitRows) -> tuple[int, int]:
    """Extra copies among the training images, and groups of copies that carry different labels (a labelling
    error, or one picture that really belongs to two classes: either way the head sees a contradiction)."""
    groups: dict[str, set[int]] = {}
    for h, y in zip(rows.hashes, rows.labels.tolist(), strict=True):
        groups.setdefault(h, set()).add(y)
    return len(rows.hashes) - len(groups), sum(len(ys) > 1 for ys in groups.values())


def _near_within(rows: FitRows, pooled: np.ndarray, threshold: float) -> tuple[int, int]:
    """Pairs of near-copies among the images read, and how many of them carry different labels."""
    every = np.arange(len(rows.hashes))
    found = near_duplicate_pairs(pooled, every, every, list(rows.hashes), threshold=threshold)
    pairs = {(min(q, r), max(q, r)) for q, r, _ in found}
    return len(pairs), int(sum(rows.labels[q] != rows.labels[r] for q, r in pairs))


def _across_splits(rows: FitRows, test: Sequence[Sample]) -> int:
    """Test images that are byte-identical copies of training images (``fit`` warns about the same)."""
    hashes, paths = list(rows.hashes), list(rows.paths)
    for s in test:
        try:
            hashes.append(hash_file(s.path))
            paths.append(s.path)
        except OSError:
            continue  # an unreadable test file has no bytes to compare; fit reports it when it reads test
    split = np.array([SPLIT_IDS["train"]] * len(rows.hashes) + [SPLIT_IDS["test"]] * (len(paths) - len(rows.hashes)))
    return count_duplicates_across_splits(hashes, split, paths)


def _size_cue(ds: ImageFolder, rows: FitRows, seed: int) -> str | None:
    """fit's shortcut check, on the images advise read; its warning is the message, kept (not printed twice)."""
    samples = [Sample(p, int(y)) for p, y in zip(rows.paths, rows.labels.tolist())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return size_cue(samples, ds.classes, seed=seed)


def _size_stats(paths: Sequence[Path], seed: int) -> dict[str, Any]:
    """Width/height percentiles and the most common size, from the headers of a seeded sample."""
    rng = np.random.default_rng(seed)
    picked = [paths[i] for i in sorted(rng.permutation(len(paths))[:_MAX_HEADERS])]
    sizes = []
    for p in picked:
        try:
            with Image.open(p) as im:  # the header only
                sizes.append(im.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sizes:
        return {"sampled": 0}
    wh = np.array(sizes)
    common, n_common = Counter(sizes).most_common(1)[0]
    short = wh.min(1)
    return {"sampled": len(sizes), "median_width": int(np.median(wh[:, 0])), "median_height": int(np.median(wh[:, 1])),
            "short_side_min": int(short.min()), "short_side_p5": int(np.percentile(short, 5)),
            "most_common": f"{common[0]}x{common[1]}", "most_common_share": round(n_common / len(sizes), 3),
            "distinct": len(set(sizes))}
