"""The plan: the quadrant (dataset size x similarity to ImageNet) and what to run, with the evidence in words.

The rule of thumb, made measurable: small + close -> a linear classifier on the top codes; small + far -> a
linear classifier on the earlier stage whose codes are better; large + close -> fine-tune the top stages;
large + far -> the same, but no stage stays frozen past the one whose codes were best, and from 1,000 images
per class BatchNorm statistics follow the new domain. "Close" means the top codes are within one standard error of
the best stage in cross-validation (``probe.one_se_choice``).

Example (``Signals`` as ``run.advise`` measures them; tests/test_advise_plan.py makes them up)::

    make_plan(signals, stages=list(backbone.stages), data="photos/").summary
    # 'small (38 images/class) and far from ImageNet (stage-4 codes beat the top codes by 19 points) -> ...'
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from headstart.config import CV_BELOW_IMAGES
from headstart.models import POOLED

__all__ = ["Plan", "Signals", "finetune_epochs", "make_plan", "tap_words"]

# Median images per class from which fine-tuning is the plan. It was 150 until 2026-12-03 (on a 122/class
# insect set the probe already reached 95%). Lowered to 50 after the validation grid (BENCHMARKS.md §10):
# fine-tuning (LP-FT: it starts from the probe's head, with early stopping and EMA) beat every linear option
# at 100 images/class on all five such rows, tied at 30 and lost at 10. This agrees with VTAB-1k (Zhai et
# al. 2019) and Kornblith et al. (CVPR 2019), where fine-tuning beats linear evaluation from ~1,000 images
# per task. Chosen after seeing those test figures: the grid's 50-per-class rows were added afterwards, as
# the check it was not designed on.
LARGE_PER_CLASS = 50
# From this many images per class, BatchNorm statistics may follow the new domain (the freeze_bn help's
# "large datasets far from ImageNet"); below it, batch statistics are noisy and move the features away from
# those the LP-FT head was fitted on.
BN_UPDATE_PER_CLASS = 1000
# BiT-HyperRule fixes the number of optimiser steps per dataset-size band, so epochs fall as the data grows.
# 40k image views is the band's budget here: brain_mri's measured recipe (2870 images x 16 epochs = 46k)
# and intel_scenes_small's (1800 x 16 = 29k) both converged near it.
VIEWS_PER_RUN = 40_000
EPOCHS_RANGE = (3, 30)
SIZE_CUE_AUGMENT = {"downscale": 0.8, "color_jitter": 0.3}  # measured on brain_mri's source shift
CLASS_WEIGHT_IMBALANCE = 3.0  # largest / smallest class from which rare classes are reweighted
# The second similarity signal: the share of the labels' entropy that ImageNet's predicted class explains
# (normalised NCE). Measured: 0.66 on intel_scenes_small (natural scenes), 0.19 on brain_mri (MRI), whose top
# codes still win the probe, so the first signal alone calls MRI "close". Counted only with >= 5 images per
# predicted ImageNet class: with fewer, the plug-in conditional entropy is biased low and NCE reads high.
NCE_FAR_BELOW = 0.4
NCE_MIN_IMAGES_PER_PREDICTED_CLASS = 5


@dataclass(frozen=True)
class TapSignal:
    tap: str
    accuracy: float
    se: float
    logme: float


@dataclass(frozen=True)
class Signals:
    """What the plan is decided from (``run.advise`` measures it; tests make it up)."""

    per_class_median: float
    per_class_min: int
    images: int
    taps: Sequence[TapSignal]  # input to output order; the last is the top codes
    chosen_tap: str  # the one-standard-error choice
    best_tap: str  # the highest mean CV accuracy
    imbalance: float = 1.0
    size_cue: bool = False
    duplicates_across_splits: int = 0
    duplicates_conflicting: int = 0
    undecodable: int = 0
    model: str = "efficientnet_lite0"
    seed: int = 0
    imagenet: dict[str, Any] = field(default_factory=dict)

    def tap(self, name: str) -> TapSignal:
        return next(t for t in self.taps if t.tap == name)


@dataclass
class Plan:
    quadrant: str  # e.g. "small-far"
    size: str  # small | large
    similarity: str  # close | far
    strategy: str  # linear | finetune
    layer: str | None  # linear: the tap
    freeze: int | None  # finetune: the first K stages frozen
    settings: dict[str, Any]  # the fit options beyond the strategy (lr, epochs, augmentation, BN...), in words
    command: str
    runner_up: dict[str, Any]  # strategy, what (in words), command, config
    summary: str
    evidence: list[str]
    cautions: list[str]
    # The same options as ``command``, as FitConfig values (nested by section): what ``fit --strategy auto``
    # builds its run from (``fit.auto.plan_to_config``), so nothing parses the command's text.
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tap_words(tap: str) -> str:
    """"stage-4 codes", "top codes", "stem codes": how a tap reads in a sentence."""
    if tap in (POOLED, "head"):
        return "top codes"
    return f"stage-{tap[5:]} codes" if tap.startswith("stage") and tap[5:].isdigit() else f"{tap} codes"


def finetune_epochs(train_images: int) -> int:
    """Epochs for ``VIEWS_PER_RUN`` image views, clamped: 1800 images -> 22, 20k -> 3."""
    lo, hi = EPOCHS_RANGE
    return int(min(hi, max(lo, round(VIEWS_PER_RUN / max(train_images, 1)))))


def make_plan(sig: Signals, *, stages: Sequence[str], data: str) -> Plan:
    """The quadrant and the concrete fit options, with the reasons in words."""
    size = "large" if sig.per_class_median >= LARGE_PER_CLASS else "small"
    top, chosen, best = sig.taps[-1], sig.tap(sig.chosen_tap), sig.tap(sig.best_tap)
    codes_close = sig.chosen_tap == top.tap
    head_far = _head_says_far(sig)
    close = codes_close and not head_far
    similarity = "close" if close else "far"
    gap = 100 * (best.accuracy - top.accuracy)

    size_words = (f"{size} ({sig.per_class_median:g} images/class" +
                  (f", smallest class {sig.per_class_min})" if sig.per_class_min < sig.per_class_median else ")"))
    nce = f"ImageNet's classes explain {100 * sig.imagenet.get('nce_normalized', 0.0):.0f}% of the labels"
    if not codes_close:
        sim_short = f"far from ImageNet ({tap_words(best.tap)} beat the top codes by {gap:.0f} points)"
        sim_words = (f"far from ImageNet: {tap_words(best.tap)} score {100 * best.accuracy:.1f}% vs "
                     f"{100 * top.accuracy:.1f}% for the top codes, more than one standard error "
                     f"({100 * best.se:.1f} points) apart")
    elif head_far:
        sim_short = f"far from ImageNet ({nce}, under {100 * NCE_FAR_BELOW:.0f}%)"
        sim_words = (f"far from ImageNet: {nce} (under {100 * NCE_FAR_BELOW:.0f}%), although the top codes are "
                     f"the best stage in cross-validation ({100 * top.accuracy:.1f}%)")
    elif best.tap != top.tap:
        sim_short = "close to ImageNet (the top codes are as good as any earlier stage)"
        sim_words = (f"close to ImageNet: the top codes score {100 * top.accuracy:.1f}% vs {100 * best.accuracy:.1f}% "
                     f"for {tap_words(best.tap)}, within one standard error ({100 * best.se:.1f} points)")
    else:
        sim_short = "close to ImageNet (the top codes are the best)"
        sim_words = f"close to ImageNet: the top codes score best, {100 * top.accuracy:.1f}%"

    linear = _linear(sig, chosen.tap, data)
    finetune = _finetune(sig, stages, data, close)
    main, runner = (finetune, linear) if size == "large" else (linear, finetune)
    summary = f"{size_words} and {sim_short} -> {main['what']}"
    return Plan(quadrant=f"{size}-{similarity}", size=size, similarity=similarity, strategy=main["strategy"],
                layer=main.get("layer"), freeze=main.get("freeze"), settings=main["settings"],
                command=main["command"], runner_up={k: runner[k] for k in ("strategy", "what", "command", "config")},
                summary=summary, evidence=_evidence(sig, size_words, sim_words, chosen, best),
                cautions=_cautions(sig), config=main["config"])


def _head_says_far(sig: Signals) -> bool:
    """ImageNet's predicted classes explain little of the labels, on enough images to trust the estimate."""
    view = sig.imagenet
    if "nce_normalized" not in view or not view.get("predicted_classes"):
        return False
    enough = sig.images / view["predicted_classes"] >= NCE_MIN_IMAGES_PER_PREDICTED_CLASS
    return enough and view["nce_normalized"] < NCE_FAR_BELOW


def _common_flags(sig: Signals) -> list[str]:
    flags = [] if sig.model == "efficientnet_lite0" else ["--model", sig.model]
    return flags + (["--seed", str(sig.seed)] if sig.seed else [])


def _command(data: str, flags: list[str], out: str) -> str:
    return shlex.join(["headstart", "fit", data, *flags, "--out", out])


def _linear(sig: Signals, tap: str, data: str) -> dict[str, Any]:
    # C: fit's own rule (linear.selection auto): repeated cross-validation on train+val below 2,000 images,
    # where one 15% validation split is noise (issue 14), else the validation split.
    settings: dict[str, Any] = {"layer": tap, "C": "chosen by repeated cross-validation on train+val "
                                f"(the validation split from {CV_BELOW_IMAGES:,} images)",
                                "augmentation": "none (codes of the centre crop)"}
    flags = ["--strategy", "linear", "--layer", tap]
    config: dict[str, Any] = {"strategy": "linear", "linear": {"layer": tap}}
    if sig.imbalance >= CLASS_WEIGHT_IMBALANCE:
        flags += ["--class-weight", "balanced"]
        settings["class_weight"] = "balanced"
        config["linear"]["class_weight"] = "balanced"
    return {"strategy": "linear", "layer": tap, "settings": settings, "config": config,
            "what": f"linear classifier on {tap_words(tap)}",
            "command": _command(data, [*flags, *_common_flags(sig)], "runs/advised-linear")}


def _finetune(sig: Signals, stages: Sequence[str], data: str, close: bool) -> dict[str, Any]:
    n = len(stages)
    # Close: fit's measured fine-tuning defaults (BENCHMARKS.md §7: the first 3 of lite0's 9 stages frozen;
    # the plan froze 5, the defaults before §7, until 2026-12-03). Far: the same, and never a stage frozen
    # after the one whose codes were best, so the layers that stopped fitting the data adapt.
    freeze = max(0, n - 6)
    if not close:
        at = stages.index(sig.chosen_tap) if sig.chosen_tap in stages else n
        freeze = min(freeze, at)
    epochs = finetune_epochs(sig.images)
    update_bn = not close and sig.per_class_median >= BN_UPDATE_PER_CLASS
    settings: dict[str, Any] = {
        "freeze": freeze, "epochs": epochs, "optimizer": "adamw", "lr": 1e-3, "backbone_lr_mult": 0.1,
        "schedule": "cosine, 1 warm-up epoch", "ema": 0.999, "tta": "flip", "freeze_bn": not update_bn,
        "augmentation": "flips, random resized crops"}
    flags = ["--strategy", "finetune", "--freeze", str(freeze), "--epochs", str(epochs), "--ema", "0.999",
             "--tta", "flip"]
    # Flips and random resized crops are fit's defaults (so not in the command), but set here: auto applies
    # this on top of the user's options, and the plan's words must stay true there.
    augment: dict[str, Any] = {"hflip": True, "crop": "rrc"}
    config = {"strategy": "finetune", "finetune": {"freeze": freeze, "epochs": epochs, "ema": 0.999, "tta": "flip",
                                                   "freeze_bn": not update_bn, "augment": augment}}
    if update_bn:
        flags.append("--no-freeze-bn")
    if sig.size_cue:
        flags += ["--downscale", str(SIZE_CUE_AUGMENT["downscale"]),
                  "--color-jitter", str(SIZE_CUE_AUGMENT["color_jitter"])]
        augment["downscale"] = SIZE_CUE_AUGMENT["downscale"]
        augment |= dict.fromkeys(("brightness", "contrast", "saturation"), SIZE_CUE_AUGMENT["color_jitter"])
        settings["augmentation"] += (f", resolution drops (p={SIZE_CUE_AUGMENT['downscale']}) and colour jitter "
                                     f"{SIZE_CUE_AUGMENT['color_jitter']}, to hide the source cue")
    return {"strategy": "finetune", "freeze": freeze, "settings": settings, "config": config,
            "what": f"fine-tune with the first {freeze} of {n} stages frozen",
            "command": _command(data, [*flags, *_common_flags(sig)], "runs/advised-finetune")}


def _evidence(sig: Signals, size_words: str, sim_words: str, chosen: TapSignal, best: TapSignal) -> list[str]:
    lines = [f"size: {size_words}; fine-tuning is advised from {LARGE_PER_CLASS} images/class",
             f"similarity: {sim_words}"]
    if chosen.tap != best.tap:
        lines.append(f"{tap_words(chosen.tap)} are chosen over {tap_words(best.tap)}: within one standard error "
                     f"({100 * best.se:.1f} points) of the best, and deeper")
    by_logme = max(sig.taps, key=lambda t: t.logme)
    lines.append(f"LogME agrees: {tap_words(by_logme.tap)} have the highest evidence ({by_logme.logme:.3f})"
                 if by_logme.tap == chosen.tap else
                 f"LogME ranks {tap_words(by_logme.tap)} first ({by_logme.logme:.3f} vs {chosen.logme:.3f} for "
                 f"{tap_words(chosen.tap)}); the cross-validated probe decides")
    if sig.imagenet:
        lines.append(f"ImageNet's head: mean confidence {sig.imagenet['mean_max_softmax']:.2f}; its top-1 class "
                     f"explains {100 * sig.imagenet['nce_normalized']:.0f}% of the labels' entropy")
    return lines


def _cautions(sig: Signals) -> list[str]:
    out = []
    if sig.per_class_min < 10:
        out.append(f"the smallest class has {sig.per_class_min} images: every estimate here is noisy; more "
                   "images of it will help more than any setting")
    if sig.imbalance >= CLASS_WEIGHT_IMBALANCE:
        out.append(f"classes are imbalanced ({sig.imbalance:.1f}x): rare classes are reweighted; judge the "
                   "result by balanced accuracy")
    if sig.size_cue:
        out.append("image size tells the class: augmentation that hides the source is part of the plan")
    if sig.duplicates_across_splits:
        out.append(f"{sig.duplicates_across_splits} test image(s) are byte-identical to training images: the "
                   "test figure will be optimistic; remove the copies from one split")
    if sig.duplicates_conflicting:
        out.append(f"{sig.duplicates_conflicting} identical picture(s) are filed under different classes: "
                   "fix their labels")
    if sig.undecodable:
        out.append(f"{sig.undecodable} file(s) could not be decoded and were left out")
    return out
