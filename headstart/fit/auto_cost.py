"""What a candidate run of ``fit --strategy auto`` will cost, in seconds, before it runs: the budget decides
with it whether the runner-up runs and how many epochs a fine-tuning candidate gets.

A prior from measurements, not a promise: seconds per image on the 2-core development machine under the
load of its other jobs (BENCHMARKS.md §5-6), for EfficientNet-Lite0 at 224 px, scaled to other backbones by
parameters x pixels. A fine-tuning candidate's epochs then report their own measured time (the ETA).

    estimate_seconds(cfg, Counts(train=1530, val=270, test=600), BackboneCost.of(backbone))  # ~1150 (16 epochs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from headstart.advise.probe import cv_repeats
from headstart.config import CV_BELOW_IMAGES, FitConfig
from headstart.models import Backbone

__all__ = ["MIN_EPOCHS", "BackboneCost", "Counts", "epochs_within", "estimate_seconds"]

# Seconds per training view (decode, augment, forward, backward, step) of lite0 by frozen stages out of its 9
# (stem, stage1-7, head). Measured under load: full fine-tuning 10-14 img/s; freeze 3: 1049 s for 16 epochs of
# 1800 intel images; freeze 5: 478 s for 6 epochs of 1530 (+ val); freeze 6/7 from the online-prefix speeds of
# BENCHMARKS §5 (59.5 and 99.2 img/s on a quiet machine), halved for the load.
_FROZEN_SHARE = (0.0, 3 / 9, 5 / 9, 6 / 9, 7 / 9, 8 / 9, 1.0)
_S_PER_VIEW = (0.080, 0.040, 0.045, 0.025, 0.015, 0.008, 0.006)
_S_PER_FORWARD = 0.012  # one image through the whole network (validation, test, codes): ~85 img/s under load
_S_PER_CODE_FEATURE = 1e-5  # the linear head's C sweep: ~20 s for 1530 codes of 1280 features, per fit
_S_OVERHEAD = 5.0  # building the model and the engine, writing the bundle
_TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10, "multiscale": 3}
_LITE0 = (4.65e6, 224)  # parameters and input size the figures above were measured with

# The fewest epochs a fine-tuning candidate is given: the cosine schedule's warm-up and a few epochs after it.
MIN_EPOCHS = 3


@dataclass(frozen=True)
class Counts:
    """Images per split of a candidate's run (its val split depends on its own ``val_fraction``)."""

    train: int
    val: int
    test: int


@dataclass(frozen=True)
class BackboneCost:
    """What the estimate needs to know of a backbone."""

    scale: float  # one image's cost relative to lite0 at 224 px (parameters x pixels; lite1 ~1.5)
    stages: int
    widths: dict[str, int]  # code width per tap

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneCost:
        params = sum(p.numel() for p in backbone.parameters())
        return cls(params / _LITE0[0] * (backbone.spec.input_size / _LITE0[1]) ** 2, len(backbone.stages),
                   dict(backbone.num_features))


def estimate_seconds(cfg: FitConfig, counts: Counts, cost: BackboneCost) -> float:
    """The expected wall time of the run ``cfg``; codes of the non-test images are taken to be cached
    (advise made them), the test images' are not (advise never reads test)."""
    scale = cost.scale
    test_codes = counts.test * _S_PER_FORWARD * scale
    if cfg.strategy == "linear":
        dims = sum(cost.widths.get(t.strip(), 0) for t in cfg.linear.layer.split(","))
        n = counts.train + counts.val
        cv = cfg.linear.selection == "cv" or (cfg.linear.selection == "auto" and n < CV_BELOW_IMAGES)
        # C by repeated k-fold on small data (fit.probe), k-fold without a val split, then the refit
        fits = 1 + (cfg.linear.cv_folds * cv_repeats(n) if cv else 0 if counts.val else cfg.linear.cv_folds)
        return _S_OVERHEAD + test_codes + _S_PER_CODE_FEATURE * (counts.train + counts.val) * dims * fits
    ft = cfg.finetune
    share = min(ft.freeze / max(cost.stages, 1), 1.0)
    per_view = float(np.interp(share, _FROZEN_SHARE, _S_PER_VIEW)) * scale
    per_epoch = counts.train * per_view + counts.val * _S_PER_FORWARD * scale
    test = counts.test * _TTA_VIEWS.get(ft.tta, 1) * _S_PER_FORWARD * scale
    return _S_OVERHEAD + test_codes + ft.epochs * per_epoch + test


def epochs_within(cfg: FitConfig, seconds: float, counts: Counts, cost: BackboneCost) -> FitConfig:
    """``cfg`` with its fine-tuning epochs cut so the run's estimate fits ``seconds`` (never more than it
    asks for, never fewer than ``MIN_EPOCHS`` or its warm-up); other configs unchanged."""
    ft = cfg.finetune
    if cfg.strategy != "finetune":
        return cfg
    floor = min(ft.epochs, max(MIN_EPOCHS, math.ceil(ft.schedule.warmup_epochs)))
    one = estimate_seconds(replace(cfg, finetune=replace(ft, epochs=1)), counts, cost)
    per_epoch = estimate_seconds(replace(cfg, finetune=replace(ft, epochs=2)), counts, cost) - one
    fit_in = floor if per_epoch <= 0 else int((seconds - (one - per_epoch)) // per_epoch)
    return replace(cfg, finetune=replace(ft, epochs=int(min(ft.epochs, max(floor, fit_in)))))
