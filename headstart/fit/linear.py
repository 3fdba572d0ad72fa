"""Strategy "linear": the ConvNet as a fixed feature extractor, a linear classifier on its CNN codes.

Choices (layer, C) are made on a validation split carved from train — or by cross-validation — and
the final head is refit on train+val. The test split is only ever used for the reported figure.
"""

from __future__ import annotations

import time
from typing import Any


from headstart.advise.probe import CV_SEED
from headstart.config import FitConfig
from headstart.evaluate.metrics import classification_metrics
from headstart.evaluate.predictions import write_test_predictions
from headstart.fit.codes import SPLIT_IDS, extract_dataset
from headstart.fit.layers import layer_name, parse_layer
from headstart.fit.probe import make_head, select
from headstart.fit.reject import calibration, out_of_fold_max_proba
from headstart.fit.rundir import start_run
from headstart.models import create_model


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
    sel = select(codes, candidates, cfg, ds.classes)
    layer, C = sel.layer, sel.C
    fit_mask = codes.split != SPLIT_IDS["test"]
    head = make_head(cfg)(C).fit(codes.X(layer, fit_mask), codes.labels[fit_mask])
    fit_s = time.perf_counter() - t0
    pool = codes.canonical(fit_mask)  # content order: the calibration depends on the images alone
    try:
        reject = calibration(out_of_fold_max_proba(lambda: make_head(cfg)(C), codes.X(layer, pool),
                                                   codes.labels[pool], seed=CV_SEED),
                             f"3-fold out-of-fold predictions on train+val ({int(fit_mask.sum())} images)")
    except ValueError:  # a class with a single image: nothing held out to calibrate on
        reject = None

    te = codes.split == SPLIT_IDS["test"]
    params = head.to_params()
    test_probs = params.predict_proba(codes.X(layer, te))
    test_metrics = classification_metrics(codes.labels[te], test_probs, ds.classes)
    write_test_predictions(run.path, [p for p, t in zip(codes.paths, te) if t], codes.labels[te], test_probs,
                           ds.classes)
    from headstart.bundle import save_linear_bundle

    save_linear_bundle(run.bundle, model=backbone.name, weights_id=backbone.weights_id, taps=layer, spec=backbone.spec,
                       classes=ds.classes, head=params)
    metrics = {
        "strategy": "linear", "model": cfg.model, "layer": layer_name(layer), "head": cfg.linear.head, "C": C,
        "classes": ds.classes, "seed": cfg.data.seed,
        "counts": {k: int((codes.split == v).sum()) for k, v in SPLIT_IDS.items()},
        "val": {"accuracy": sel.accuracy, "images": sel.images, "protocol": sel.protocol},
        "test": test_metrics,
        "selection": sel.table,
        "reject": reject,
        "skipped_files": codes.skipped_files(),
        "left_out_files": [str(p) for p in ds.left_out],  # not images: never read
        "duplicates_across_splits": codes.duplicates,
        "near_duplicates_across_splits": codes.near_duplicates,
        "cautions": run.cautions, "batch_size": codes.batch_size,
        "timing": {"extract_s": round(extract_s, 3), "fit_s": round(fit_s, 3)},
    }
    run.write_json("metrics.json", metrics)
    return metrics
