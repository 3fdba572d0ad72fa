"""What `headstart tune` searches: the fine-tuning options that matter most, on the scales they act on.

The coarse stage draws from wide ranges (learning rates and weight decay log-uniform, as Bergstra & Bengio
advise); the fine stage narrows every range around the coarse stage's best: a quarter of a log range's
decades, or a quarter of a linear range's width, either side, clipped to the coarse range.

>>> narrowed({"lr": 1e-3, "dropout": 0.2})["lr"]
Range(low=0.00031622776601683794, high=0.0031622776601683794, log=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from headstart.config import FitConfig

__all__ = ["COARSE", "Range", "apply", "narrowed", "recipe_params", "suggest"]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False


COARSE: dict[str, Range] = {
    "lr": Range(1e-4, 1e-2, log=True),  # the new head's; the pretrained stages get lr x backbone_lr_mult
    "backbone_lr_mult": Range(0.01, 1.0, log=True),
    "weight_decay": Range(1e-5, 1e-1, log=True),
    "label_smoothing": Range(0.0, 0.2),
    "dropout": Range(0.0, 0.5),
}
_OPTIM = ("lr", "backbone_lr_mult", "weight_decay")  # fields of finetune.optim; the others of finetune


def narrowed(center: dict[str, float], coarse: dict[str, Range] = COARSE) -> dict[str, Range]:
    """Ranges a quarter of the coarse span either side of ``center`` (in decades for log ranges)."""
    out = {}
    for name, r in coarse.items():
        c = min(max(float(center.get(name, r.low)), r.low), r.high)
        if r.log:
            half = (math.log10(r.high) - math.log10(r.low)) / 4
            out[name] = Range(max(r.low, c / 10**half), min(r.high, c * 10**half), log=True)
        else:
            half = (r.high - r.low) / 4
            out[name] = Range(max(r.low, c - half), min(r.high, c + half))
    return out


def suggest(trial: Any, space: dict[str, Range]) -> dict[str, float]:
    """One draw from ``space`` through an Optuna trial (enqueued values come back as they were queued)."""
    return {name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in space.items()}


def recipe_params(cfg: FitConfig) -> dict[str, float]:
    """The values ``cfg`` trains with, as a trial's parameters (the default recipe is the first trial),
    each clipped into its coarse range (a weight decay of 0 has no place on a log scale: 1e-5 stands in).

    >>> ft = FitConfig().finetune
    >>> no_decay = replace(FitConfig(), finetune=replace(ft, optim=replace(ft.optim, weight_decay=0.0)))
    >>> recipe_params(no_decay)["weight_decay"]
    1e-05
    """
    ft = cfg.finetune
    values = {name: float(getattr(ft.optim if name in _OPTIM else ft, name)) for name in COARSE}
    return {name: min(max(v, COARSE[name].low), COARSE[name].high) for name, v in values.items()}


def apply(cfg: FitConfig, params: dict[str, float]) -> FitConfig:
    """``cfg`` training with ``params``."""
    ft = cfg.finetune
    optim = replace(ft.optim, **{k: v for k, v in params.items() if k in _OPTIM})
    other = {k: v for k, v in params.items() if k not in _OPTIM}
    return replace(cfg, finetune=replace(ft, optim=optim, **other))
