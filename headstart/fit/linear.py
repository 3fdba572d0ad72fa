"""Strategy "linear": the ConvNet as a fixed feature extractor, a linear classifier on its CNN codes.

Choices (layer, C) are made on a validation split carved from train — or by cross-validation — and
the final head is refit on train+val. The test split is only ever used for the reported figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.config import FitConfig
from headstart.data import ImageFolder
from headstart.errors import ConfigError
from headstart.evaluate.metrics import classification_metrics
from headstart.features import FeatureCache, default_cache_dir, extract_codes
from headstart.fit.checks import SPLIT_IDS, count_duplicates_across_splits, require_training_images
from headstart.fit.layers import Layer, layer_name, parse_layer
from headstart.fit.rundir import start_run
from headstart.heads import LinearSVM, SoftmaxRegression, cross_val_sweep, sweep_C
from headstart.heads.params import LinearParams
from headstart.models import Backbone, create_model


@dataclass
class Codes:
    """CNN codes of every decodable image with its label and split."""

    by_tap: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray  # SPLIT_IDS values
    failures: list[Any] = field(default_factory=list)
    duplicates: int = 0  # test images byte-identical to a train/val image (warned about at extraction)
    batch_size: int = 0  # what extraction ran with (the one chosen when engine.batch_size is 0, auto)

    def X(self, layer: Layer, mask: np.ndarray) -> np.ndarray:
        return np.hstack([self.by_tap[t][mask] for t in layer]).astype(np.float32, copy=False)

    def skipped_files(self) -> list[dict[str, str]]:
        """The undecodable files, as metrics.json lists them."""
        return [{"path": str(f.path), "reason": f.reason} for f in self.failures]


def extract_dataset(ds: ImageFolder, backbone: Backbone, taps: list[str], cfg: FitConfig, *,
                    progress: bool = True) -> Codes:
    samples = [(s, SPLIT_IDS[name]) for name, items in ds.splits.items() for s in items]
    cache = FeatureCache(Path(cfg.engine.cache_dir) if cfg.engine.cache_dir else default_cache_dir())
    res = extract_codes([s.path for s, _ in samples], backbone, taps, cache=cache, backend=cfg.engine.backend,
                        batch_size=cfg.engine.batch_size, progress=progress)
    labels = np.array([s.label for s, _ in samples])[res.index]
    split = np.array([k for _, k in samples])[res.index]
    require_training_images(ds.classes, labels, split)
    duplicates = count_duplicates_across_splits(res.hashes, split, res.paths)
    return Codes(res.codes, labels, split, list(res.failures), duplicates, res.batch_size)


def make_head(cfg: FitConfig):  # noqa: ANN201
    lin = cfg.linear
    cw = lin.class_weight or None
    if lin.head == "svm":
        return lambda C: LinearSVM(C=C, standardize=lin.standardize, class_weight=cw)
    return lambda C: SoftmaxRegression(C=C, standardize=lin.standardize, class_weight=cw)


def select(codes: Codes, candidates: list[Layer], cfg: FitConfig, classes: list[str]) -> tuple[Layer, float, list[dict[str, Any]]]:
    """Pick (layer, C) using train and val only — never the test split."""
    make = make_head(cfg)
    Cs = [cfg.linear.C] if cfg.linear.C > 0 else None
    tr, va = codes.split == SPLIT_IDS["train"], codes.split == SPLIT_IDS["val"]
    if not va.any():
        _check_folds(codes.labels[tr], classes, cfg.linear.cv_folds)
    table = []
    for layer in candidates:
        if va.any():
            r = sweep_C(make, codes.X(layer, tr), codes.labels[tr], codes.X(layer, va), codes.labels[va], Cs=Cs)
        else:
            r = cross_val_sweep(make, codes.X(layer, tr), codes.labels[tr], n_splits=cfg.linear.cv_folds,
                                Cs=Cs, seed=cfg.data.seed)
        logloss = next((row[2] for row in r.table if row[0] == r.best_C), float("nan"))
        table.append({"layer": layer_name(layer), "C": float(r.best_C), "val_accuracy": float(r.best_score),
                      "val_log_loss": float(logloss)})
    # Highest validation accuracy; ties (common on small val sets) go to the lower validation log-loss.
    def rank(i: int) -> tuple[float, float]:
        ll = table[i]["val_log_loss"]
        return table[i]["val_accuracy"], -(ll if np.isfinite(ll) else np.inf)

    best = max(range(len(candidates)), key=rank)
    return candidates[best], table[best]["C"], table


def _check_folds(labels: np.ndarray, classes: list[str], folds: int) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    if folds < 2:
        raise ConfigError(f"linear.cv_folds must be >= 2; got {folds}")
    if counts.min() < folds:
        c = int(counts.argmin())
        raise ConfigError(f"class {classes[c]!r} has only {counts[c]} training images, fewer than the {folds} "
                          f"cross-validation folds; use --cv-folds {max(2, counts[c])} or fewer, or --val-fraction 0.15")


def to_params(head: Any) -> LinearParams:
    if isinstance(head, LinearSVM):
        return head.to_params()
    return LinearParams(np.asarray(head.coef_), np.asarray(head.intercept_), "softmax")


def fit_linear(cfg: FitConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole linear strategy; writes RUN_DIR and returns the metrics dict."""
    cfg = cfg.validate()
    run, ds = start_run(cfg)
    backbone = create_model(cfg.model)
    candidates = parse_layer(backbone, cfg.linear.layer)
    taps = [t for t in backbone.tap_names if any(t in c for c in candidates)]

    t0 = time.perf_counter()
    codes = extract_dataset(ds, backbone, taps, cfg, progress=progress)
    extract_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    layer, C, table = select(codes, candidates, cfg, ds.classes)
    fit_mask = codes.split != SPLIT_IDS["test"]
    head = make_head(cfg)(C).fit(codes.X(layer, fit_mask), codes.labels[fit_mask])
    fit_s = time.perf_counter() - t0

    te = codes.split == SPLIT_IDS["test"]
    params = to_params(head)
    test_metrics = classification_metrics(codes.labels[te], params.predict_proba(codes.X(layer, te)), ds.classes)
    from headstart.bundle import save_linear_bundle

    save_linear_bundle(run.bundle, model=cfg.model, weights_id=backbone.weights_id, taps=layer, spec=backbone.spec,
                       classes=ds.classes, head=params)
    chosen = next(r for r in table if r["layer"] == layer_name(layer))
    metrics = {
        "strategy": "linear", "model": cfg.model, "layer": layer_name(layer), "head": cfg.linear.head, "C": C,
        "classes": ds.classes, "seed": cfg.data.seed,
        "counts": {k: int((codes.split == v).sum()) for k, v in SPLIT_IDS.items()},
        "val": {"accuracy": chosen["val_accuracy"],
                "protocol": "validation split" if (codes.split == SPLIT_IDS["val"]).any()
                else f"{cfg.linear.cv_folds}-fold cross-validation on train"},
        "test": test_metrics,
        "selection": table,
        "skipped_files": codes.skipped_files(),
        "duplicates_across_splits": codes.duplicates, "cautions": run.cautions, "batch_size": codes.batch_size,
        "timing": {"extract_s": round(extract_s, 3), "fit_s": round(fit_s, 3)},
    }
    run.write_json("metrics.json", metrics)
    return metrics
