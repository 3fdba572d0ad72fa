"""Codes of a dataset's splits: the step both strategies start with (the linear head's features, the
fine-tuning probe's features and the check that every file decodes).

    codes = extract_dataset(ds, backbone, ["pooled"], cfg)
    codes.X(("pooled",), codes.split == SPLIT_IDS["train"]).shape
(240, 1280)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.advise.probe import content_order
from headstart.config import FitConfig
from headstart.data import ImageFolder
from headstart.features import FeatureCache, default_cache_dir, extract_codes
from headstart.fit.checks import (
    SPLIT_IDS,
    count_duplicates_across_splits,
    count_near_duplicates_across_splits,
    require_training_images,
)
from headstart.fit.layers import Layer
from headstart.models import POOLED, Backbone
from headstart.train.distributed import Dist, barrier

__all__ = ["SPLIT_IDS", "Codes", "extract_dataset"]


@dataclass
class Codes:
    """CNN codes of every decodable image with its label and split."""

    by_tap: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray  # SPLIT_IDS values
    failures: list[Any] = field(default_factory=list)
    duplicates: int = 0  # test images byte-identical to a train/val image (warned about at extraction)
    batch_size: int = 0  # what extraction ran with (the one chosen when engine.batch_size is 0, auto)
    hashes: list[str] = field(default_factory=list)  # each row's image content hash (empty: unknown)
    near_duplicates: int | None = None  # test images that are near-copies of train/val ones (None: not checked)
    paths: list[Path] = field(default_factory=list)  # each row's file (empty: unknown)

    def canonical(self, mask: np.ndarray) -> np.ndarray:
        """Indices of ``mask``'s rows in an order that depends on the images alone (their content hashes), not
        on which split each fell in: cross-validation over train+val then partitions the same images the
        same way however the val split was drawn."""
        idx = np.flatnonzero(mask)
        return idx[content_order(np.asarray(self.hashes)[idx])] if self.hashes else idx

    def X(self, layer: Layer, mask: np.ndarray) -> np.ndarray:
        return np.hstack([self.by_tap[t][mask] for t in layer]).astype(np.float32, copy=False)

    def skipped_files(self) -> list[dict[str, str]]:
        """The undecodable files, as metrics.json lists them."""
        return [{"path": str(f.path), "reason": f.reason} for f in self.failures]


def extract_dataset(ds: ImageFolder, backbone: Backbone, taps: list[str], cfg: FitConfig, *,
                    progress: bool = True, dist: Dist = Dist()) -> Codes:
    """The ``taps`` codes of every split's images (cached), with labels and split ids; undecodable files are
    left out (listed in ``failures``), and a split without training images for some class is an error.
    Under torchrun (``dist``) each process first computes its share into the cache; all then read them all."""
    samples = [(s, SPLIT_IDS[name]) for name, items in ds.splits.items() for s in items]
    cache = FeatureCache(Path(cfg.engine.cache_dir) if cfg.engine.cache_dir else default_cache_dir())
    if dist.enabled:
        with warnings.catch_warnings():  # the full pass below reports skipped files, once
            warnings.simplefilter("ignore")
            extract_codes([s.path for s, _ in samples[dist.rank::dist.world]], backbone, taps, cache=cache,
                          backend=cfg.engine.backend, batch_size=cfg.engine.batch_size, progress=False,
                          device=cfg.engine.device, engine=cfg.engine.extract_engine,
                          address=cfg.engine.ray_address or None)
        barrier(dist)
    res = extract_codes([s.path for s, _ in samples], backbone, taps, cache=cache, backend=cfg.engine.backend,
                        batch_size=cfg.engine.batch_size, progress=progress, device=cfg.engine.device,
                        engine=cfg.engine.extract_engine, address=cfg.engine.ray_address or None)
    labels = np.array([s.label for s, _ in samples])[res.index]
    split = np.array([k for _, k in samples])[res.index]
    require_training_images(ds.classes, labels, split)
    duplicates = count_duplicates_across_splits(res.hashes, split, res.paths)
    near = None  # on the pooled codes, where the backbone's threshold was measured
    if POOLED in res.codes and backbone.near_copy_cosine is not None:
        near = count_near_duplicates_across_splits(res.codes[POOLED], res.hashes, split, res.paths,
                                                   threshold=backbone.near_copy_cosine)
    return Codes(res.codes, labels, split, list(res.failures), duplicates, res.batch_size, list(res.hashes), near,
                 [Path(p) for p in res.paths])
