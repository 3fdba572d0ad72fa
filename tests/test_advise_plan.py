"""The plan's quadrant logic on made-up signals, and the one-standard-error choice on synthetic codes."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from headstart.advise.plan import LARGE_PER_CLASS, Signals, TapSignal, finetune_epochs, make_plan
from headstart.advise.probe import ProbeScore, one_se_choice, probe_accuracy
from headstart.cli_fit import config_from_argv
from headstart.config import FinetuneConfig

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head"]
TAPS = ["stage3", "stage4", "stage5", "stage6", "stage7", "pooled"]


def _signals(per_class: float, accuracies: list[float], se: float = 0.01, **kw: object) -> Signals:
    taps = [TapSignal(t, a, se, logme=a) for t, a in zip(TAPS, accuracies)]
    scores = [ProbeScore((a - se, a + se), 2, 1.0) for a in accuracies]
    chosen, best = one_se_choice(TAPS, scores)
    return Signals(per_class_median=per_class, per_class_min=int(per_class), images=int(per_class) * 4, taps=taps,
                   chosen_tap=chosen, best_tap=best, **kw)  # type: ignore[arg-type]


CLOSE = [0.70, 0.78, 0.83, 0.86, 0.89, 0.90]  # the top codes are the best
FAR = [0.70, 0.82, 0.78, 0.72, 0.66, 0.63]  # stage 4 beats them by 19 points


def test_small_and_far_is_a_linear_classifier_on_the_better_earlier_stage() -> None:
    plan = make_plan(_signals(38, FAR), stages=STAGES, data="my images/")
    assert (plan.quadrant, plan.strategy, plan.layer, plan.freeze) == ("small-far", "linear", "stage4", None)
    assert plan.summary == ("small (38 images/class) and far from ImageNet (stage-4 codes beat the top codes by "
                            "19 points) -> linear classifier on stage-4 codes")
    assert plan.runner_up["strategy"] == "finetune"
    cfg = config_from_argv(shlex.split(plan.command)[2:])  # the command is quoted for a shell
    assert (cfg.strategy, cfg.linear.layer, cfg.data.val_fraction, cfg.data.path) == ("linear", "stage4", 0.15,
                                                                                    "my images")


def test_small_and_close_is_a_linear_classifier_on_the_top_codes() -> None:
    plan = make_plan(_signals(40, CLOSE), stages=STAGES, data="d")
    assert (plan.quadrant, plan.strategy, plan.layer) == ("small-close", "linear", "pooled")
    assert "close to ImageNet" in plan.summary and plan.summary.endswith("linear classifier on top codes")


def test_large_fine_tunes_with_the_defaults_and_far_never_freezes_past_the_best_codes() -> None:
    close = make_plan(_signals(300, CLOSE), stages=STAGES, data="d")
    far = make_plan(_signals(700, FAR), stages=STAGES, data="d")
    assert (close.quadrant, close.strategy) == ("large-close", "finetune")
    assert (far.quadrant, far.strategy) == ("large-far", "finetune")
    assert close.freeze == far.freeze == FinetuneConfig().freeze  # fit's measured defaults (3 of 9)
    # Far, with stage-2 codes the best: stage 2 and what follows it adapt.
    early = Signals(per_class_median=700, per_class_min=700, images=2800, chosen_tap="stage2", best_tap="stage2",
                    taps=[TapSignal("stage2", 0.9, 0.01, 0.0), TapSignal("pooled", 0.6, 0.01, 0.0)])
    assert make_plan(early, stages=STAGES, data="d").freeze == 2
    assert close.runner_up["strategy"] == far.runner_up["strategy"] == "linear"
    for plan in (close, far):
        cfg = config_from_argv(shlex.split(plan.command)[2:])
        assert (cfg.strategy, cfg.finetune.freeze, cfg.finetune.epochs) == \
            ("finetune", plan.freeze, plan.settings["epochs"])
        assert cfg.finetune.freeze_bn  # under 1000 images/class, BN statistics stay fixed


def test_the_size_threshold_and_a_source_cue_change_the_plan() -> None:
    assert make_plan(_signals(LARGE_PER_CLASS - 1, CLOSE), stages=STAGES, data="d").strategy == "linear"
    plan = make_plan(_signals(LARGE_PER_CLASS, CLOSE, size_cue=True, imbalance=4.0), stages=STAGES, data="d")
    cfg = config_from_argv(shlex.split(plan.command)[2:])
    assert (cfg.finetune.augment.downscale, cfg.finetune.augment.brightness) == (0.8, 0.3)
    assert any("image size tells the class" in c for c in plan.cautions)
    linear = config_from_argv(shlex.split(plan.runner_up["command"])[2:])
    assert linear.linear.class_weight == "balanced"  # 4x imbalance: rare classes reweighted


def test_epochs_fall_as_the_data_grows() -> None:
    epochs = [finetune_epochs(n) for n in (100, 1800, 2870, 20_000, 1_000_000)]
    assert epochs == sorted(epochs, reverse=True)
    assert (epochs[0], epochs[-1]) == (30, 3)
    assert finetune_epochs(2870) == 14  # ~ the measured brain_mri recipe's 16


def test_one_se_rule_keeps_the_top_codes_unless_an_earlier_stage_is_clearly_better() -> None:
    def score(mean: float, spread: float) -> ProbeScore:
        return ProbeScore((mean - spread, mean + spread, mean - spread, mean + spread), 4, 1.0)

    taps = ["stage4", "pooled"]
    # stage4 is ahead by 1 point, its standard error is ~1.15: noise, the top codes stay.
    assert one_se_choice(taps, [score(0.81, 0.02), score(0.80, 0.02)]) == ("pooled", "stage4")
    # ahead by 5 points: chosen.
    assert one_se_choice(taps, [score(0.85, 0.02), score(0.80, 0.02)]) == ("stage4", "stage4")


def test_tap_choice_is_stable_where_the_argmax_flips() -> None:
    """Two taps of about the same quality (the top one a noisier copy of the other): as a few images move in
    or out and the folds change, the raw argmax flips; the one-standard-error choice stays."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    mid = np.eye(3)[y] * 0.9 + rng.normal(size=(120, 3))
    top = mid + 0.5 * rng.normal(size=(120, 3))
    choices, argmaxes = set(), set()
    for seed in range(6):
        rows = np.random.default_rng(seed).permutation(120)[:110]  # a few images in or out, as a new split does
        scores = [probe_accuracy(X[rows], y[rows], seed=seed) for X in (mid, top)]
        chosen, best = one_se_choice(["stage4", "pooled"], scores)
        choices.add(chosen)
        argmaxes.add(best)
    assert choices == {"pooled"}
    assert argmaxes == {"stage4", "pooled"}  # the case the rule is for


def test_probe_accuracy_tracks_separability() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 50)
    good = np.c_[y * 3.0, np.zeros(100)] + rng.normal(size=(100, 2))
    bad = rng.normal(size=(100, 2))
    assert probe_accuracy(good, y, seed=0).mean > 0.9
    assert probe_accuracy(bad, y, seed=0).mean < 0.7


@pytest.mark.parametrize("d", [3, 300])  # primal (more images than channels) and dual ridge
def test_probe_handles_both_shapes(d: int) -> None:
    rng = np.random.default_rng(d)
    y = np.repeat([0, 1, 2], 20)
    X = np.eye(3)[y] @ rng.normal(size=(3, d)) * 2 + rng.normal(size=(60, d))
    s = probe_accuracy(X, y, seed=0, folds=3, repeats=2)
    assert len(s.fold_accuracies) == 6 and s.mean > 0.8 and s.se >= 0


def test_imagenet_head_calls_a_domain_far_when_the_top_codes_still_win() -> None:
    """brain_mri's case: the top codes are the best stage, but ImageNet's classes explain 19% of the labels;
    far, so more of the network is fine-tuned (its measured recipe froze 3 stages), unless too few images per
    predicted class make that estimate unreliable."""
    view = {"nce_normalized": 0.19, "mean_max_softmax": 0.2, "predicted_classes": 200}
    plan = make_plan(_signals(700, CLOSE, imagenet=view), stages=STAGES, data="d")
    assert (plan.quadrant, plan.freeze) == ("large-far", 3)
    assert "ImageNet's classes explain 19% of the labels" in plan.summary
    unreliable = make_plan(_signals(700, CLOSE, imagenet={**view, "predicted_classes": 1000}), stages=STAGES,
                           data="d")
    assert unreliable.quadrant == "large-close"
    assert make_plan(_signals(700, CLOSE, imagenet={**view, "nce_normalized": 0.66}), stages=STAGES,
                     data="d").quadrant == "large-close"
