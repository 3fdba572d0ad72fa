"""`fit --strategy auto`: the plan becomes a concrete config, runs as a candidate, the runner-up runs within
the budget, the better on validation is kept (never on test), and the kept run is the run's own."""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import make_class_folder
from PIL import Image

from headstart.advise import run as advise_run
from headstart.advise.plan import LARGE_PER_CLASS, Signals, TapSignal, make_plan
from headstart.cli_fit import config_from_argv
from headstart.config import DataConfig, EngineConfig, FitConfig, to_dict
from headstart.ensemble import evaluate_runs
from headstart.fit import fit
from headstart.fit.auto import kept_over_plan, plan_to_config
from headstart.fit.auto_cost import (
    MIN_EPOCHS,
    BackboneCost,
    Counts,
    epochs_within,
    estimate_seconds,
)
from headstart.fit.compare import Candidate, choose

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head"]
TAPS = ["stage3", "stage4", "stage5", "stage6", "stage7", "pooled"]


def _signals(per_class: float, accuracies: list[float], **kw: Any) -> Signals:
    taps = [TapSignal(t, a, 0.01, logme=a) for t, a in zip(TAPS, accuracies)]
    best = TAPS[int(np.argmax(accuracies))]
    return Signals(per_class_median=per_class, per_class_min=int(per_class), images=int(per_class) * 4, taps=taps,
                   chosen_tap=best, best_tap=best, **kw)


@pytest.mark.parametrize(("per_class", "accuracies", "kw"), [
    (38, [0.70, 0.82, 0.78, 0.72, 0.66, 0.63], {"imbalance": 4.0}),  # small, far: linear on stage4, balanced
    (300, [0.70, 0.78, 0.83, 0.86, 0.89, 0.90], {"size_cue": True}),  # large, close: fine-tune, cue augmentation
])
def test_plan_to_config_is_the_config_the_plans_command_builds(per_class: float, accuracies: list[float],
                                                               kw: dict[str, Any]) -> None:
    """For the plan and its runner-up: the config auto runs equals what `headstart fit` builds from the
    command advise prints (one meaning, two spellings), and the user's other options are kept."""
    plan = make_plan(_signals(per_class, accuracies, **kw), stages=STAGES, data="photos")
    user = FitConfig(out="runs/a", strategy="auto", data=DataConfig(path="photos"),
                     engine=EngineConfig(cache_dir="/tmp/c"))
    for runner_up, command in ((False, plan.command), (True, plan.runner_up["command"])):
        built = plan_to_config(plan, user, runner_up=runner_up)
        want = config_from_argv([*shlex.split(command)[2:], "--cache-dir", "/tmp/c"])
        assert built.out == f"runs/a/candidates/{built.strategy}"
        assert to_dict(replace(built, out="")) == to_dict(replace(want, out=""))
    assert plan_to_config(plan, user).strategy == plan.strategy
    ft = plan_to_config(plan, user, runner_up=plan.strategy == "linear")
    assert ft.finetune.tta == "flip" and ft.finetune.ema == 0.999
    if per_class < LARGE_PER_CLASS:
        lin = plan_to_config(plan, user)
        assert (lin.linear.layer, lin.data.val_fraction, lin.linear.class_weight) == ("stage4", 0.15, "balanced")
    else:
        assert (ft.finetune.augment.downscale, ft.finetune.augment.saturation) == (0.8, 0.3)


def test_options_you_set_win_over_the_plan_and_are_listed() -> None:
    """auto is the default strategy, so `headstart fit DATA --freeze 2` must fine-tune with 2 frozen stages
    when auto fine-tunes, and say that it kept yours; an option left at its default is the plan's."""
    plan = make_plan(_signals(300, [0.70, 0.78, 0.83, 0.86, 0.89, 0.90]), stages=STAGES, data="d")
    assert plan.strategy == "finetune" and plan.freeze != 2
    mine = FitConfig(out="r", data=DataConfig(path="d"))
    mine = replace(mine, finetune=replace(mine.finetune, freeze=2), linear=replace(mine.linear, layer="stage4"))
    ft, lin = plan_to_config(plan, mine), plan_to_config(plan, mine, runner_up=True)
    assert (ft.finetune.freeze, ft.finetune.epochs) == (2, plan.settings["epochs"])  # epochs: still the plan's
    assert lin.linear.layer == "stage4"
    assert kept_over_plan(plan, mine) == {"finetune.freeze": {"yours": 2, "plan": plan.freeze}}
    assert kept_over_plan(plan, mine, runner_up=True) == {"linear.layer": {"yours": "stage4", "plan": "pooled"}}
    untouched = FitConfig(out="r", data=DataConfig(path="d"))
    assert plan_to_config(plan, untouched).finetune.freeze == plan.freeze and not kept_over_plan(plan, untouched)


def test_budget_cuts_fine_tuning_epochs_to_fit_but_never_below_the_floor() -> None:
    cfg = plan_to_config(make_plan(_signals(300, [0.7, 0.78, 0.83, 0.86, 0.89, 0.9]), stages=STAGES, data="d"),
                         FitConfig(out="r", data=DataConfig(path="d")))
    counts, cost = Counts(train=1530, val=270, test=600), BackboneCost(1.0, 9, {"pooled": 1280})
    full = estimate_seconds(cfg, counts, cost)
    half = epochs_within(cfg, full / 2, counts, cost)
    assert MIN_EPOCHS < half.finetune.epochs < cfg.finetune.epochs
    assert estimate_seconds(half, counts, cost) <= full / 2
    assert epochs_within(cfg, 2 * full, counts, cost).finetune.epochs == cfg.finetune.epochs  # never more
    assert epochs_within(cfg, 0.0, counts, cost).finetune.epochs == MIN_EPOCHS


def _ran(role: str, strategy: str, accuracy: float | None, val: int) -> Candidate:
    c = Candidate(role, strategy, strategy, FitConfig(strategy=strategy))
    c.metrics = {"val": {"accuracy": accuracy, "protocol": "validation split"}, "counts": {"train": 200, "val": val}}
    return c


def test_runner_up_replaces_the_plan_only_when_better_by_more_than_the_noise() -> None:
    plan = _ran("plan", "linear", 0.80, 100)
    assert choose([plan, _ran("runner-up", "finetune", 0.95, 100)])[0].role == "runner-up"
    kept, why = choose([plan, _ran("runner-up", "finetune", 0.83, 100)])  # +3 points, se of the difference 5.5
    assert kept is plan and "within" in why
    assert choose([_ran("plan", "linear", 0.90, 100), _ran("runner-up", "finetune", 0.85, 100)])[0].role == "plan"
    assert choose([plan, _ran("runner-up", "finetune", None, 0)])[0] is plan  # no figure: nothing to compare
    assert choose([plan])[0] is plan


def _cfg(data: Path, out: Path, cache: Path, budget: float = 20.0) -> FitConfig:
    return replace(FitConfig(out=str(out), strategy="auto", model="tiny_test", data=DataConfig(path=str(data)),
                             engine=EngineConfig(backend="torch", cache_dir=str(cache), batch_size=16)),
                   auto=replace(FitConfig().auto, budget=budget))


def _force_plan(monkeypatch: pytest.MonkeyPatch, per_class: float, **finetune: Any) -> None:
    """advise's real signals, with the size read as ``per_class`` (so the plan's strategy is the test's);
    ``finetune``: options set on the fine-tuning option (fewer epochs for speed, or a crippled run)."""
    real = advise_run.make_plan

    def forced(sig: Signals, **kw: Any):
        plan = real(replace(sig, per_class_median=per_class), **kw)
        option = plan.config if plan.strategy == "finetune" else plan.runner_up["config"]
        option["finetune"] |= finetune
        if plan.strategy == "finetune" and "epochs" in finetune:
            plan.settings["epochs"] = finetune["epochs"]
        return plan

    monkeypatch.setattr(advise_run, "make_plan", forced)


@pytest.mark.parametrize(("per_class", "strategy"), [(12, "linear"), (LARGE_PER_CLASS, "finetune")])
def test_budget_zero_runs_the_plan_alone_as_the_run(split_folder: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, per_class: int,
                                                    strategy: str) -> None:
    _force_plan(monkeypatch, per_class, epochs=4)
    out = tmp_path / "run"
    m = fit(_cfg(split_folder, out, tmp_path / "cache", budget=0), progress=False)
    auto = m["auto"]
    assert (m["strategy"], auto["plan"]["strategy"], auto["winner_role"]) == (strategy, strategy, "plan")
    runner = next(c for c in auto["candidates"] if c["role"] == "runner-up")
    assert not runner["ran"] and "--budget 0" in runner["skipped"]
    assert sorted(p.name for p in (out / "candidates").iterdir()) == [strategy]
    cand = config_from_argv(["--config", str(out / "candidates" / strategy / "config.toml")])
    if strategy == "finetune":  # the plan's options (its epochs: 4 here, not fit's 15) reach the candidate
        settings = auto["plan"]["settings"]
        assert (cand.finetune.freeze, cand.finetune.epochs, cand.finetune.ema, cand.finetune.tta) == \
            (auto["plan"]["freeze"], settings["epochs"], 0.999, "flip")
        assert m["test"]["tta"] == "flip" and (out / "curves.jsonl").is_file()
    else:
        assert (cand.linear.layer, cand.data.val_fraction) == (auto["plan"]["layer"], 0.15)
        assert m["layer"] == auto["plan"]["layer"] and "cross-validation x3 on train+val" in m["val"]["protocol"]
    assert config_from_argv(["--config", str(out / "config.toml")]).strategy == "auto"
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert bundle["kind"] == strategy
    summary = (out / "summary.txt").read_text()
    assert summary.startswith(f"auto: {auto['plan']['summary']}") and "not run, --budget 0" in summary


def test_better_runner_up_is_kept_on_validation_never_on_test(split_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan (fine-tuning) is crippled (a random head that barely moves), so the linear runner-up must win
    on validation; replacing the test split by noise changes the test figure and nothing else; evaluate
    reproduces the kept run's figure."""
    _force_plan(monkeypatch, LARGE_PER_CLASS, epochs=3, head_init="random", optim={"lr": 1e-9})
    m1 = fit(_cfg(split_folder, tmp_path / "r1", tmp_path / "cache"), progress=False)
    auto = m1["auto"]
    assert [c["ran"] for c in auto["candidates"]] == [True, True]
    plan, runner = auto["candidates"]
    assert (plan["strategy"], runner["strategy"]) == ("finetune", "linear")
    assert runner["val_accuracy"] > plan["val_accuracy"] and (auto["winner"], auto["winner_role"]) == \
        ("linear", "runner-up")
    kept = json.loads((tmp_path / "r1" / "candidates" / "linear" / "metrics.json").read_text())
    assert (m1["strategy"], m1["val"], m1["test"], m1["C"]) == ("linear", kept["val"], kept["test"], kept["C"])
    assert json.loads((tmp_path / "r1" / "bundle" / "bundle.json").read_text())["kind"] == "linear"
    again = evaluate_runs([tmp_path / "r1"], backend="torch")["runs"][0]
    assert again["accuracy"] == pytest.approx(m1["test"]["accuracy"])

    poisoned = tmp_path / "poisoned"
    shutil.copytree(split_folder / "train", poisoned / "train")
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (poisoned / "test" / cls).mkdir(parents=True)
        for i in range(6):
            noise = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(noise).save(poisoned / "test" / cls / f"n{i}.png")
    m2 = fit(_cfg(poisoned, tmp_path / "r2", tmp_path / "cache"), progress=False)
    keys = ("strategy", "role", "ran", "val_accuracy", "val_images", "epochs")
    assert [{k: c.get(k) for k in keys} for c in m2["auto"]["candidates"]] == \
        [{k: c.get(k) for k in keys} for c in auto["candidates"]]
    assert (m2["auto"]["winner"], m2["auto"]["why"]) == (auto["winner"], auto["why"])
    assert m2["test"]["accuracy"] != m1["test"]["accuracy"]


def test_auto_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_class_folder(tmp_path / "data", n_per_class=10)
    base = ["fit", str(data), "--out", str(tmp_path / "run"), "--strategy", "auto", "--model", "tiny_test",
            "--cache-dir", str(tmp_path / "cache"), "--backend", "torch", "-q"]
    code, out, err = run_cli(capsys, monkeypatch, *base, "--budget", "0")
    assert code == 0, err
    assert out.startswith("auto: small (8 images/class)") and "kept linear (plan)" in out
    code, _, err = run_cli(capsys, monkeypatch, *base, "--budget", "-1", "--overwrite")
    assert code == 2 and "auto.budget must be >= 0" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, monkeypatch, "fit", "--resume", str(tmp_path / "run"), "-q")
    assert code == 0, err  # a finished auto run resumed: its candidates are kept, the run is sealed again
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["auto"]["winner"] == "linear"


def test_budget_stops_fine_tuning_when_the_machine_is_slower_than_estimated(split_folder: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Estimates say 8 epochs fit (here: they say everything is free); the clock says otherwise: training
    stops after the fewest epochs allowed, with the reason in metrics.json."""
    import headstart.fit.auto as auto_mod

    _force_plan(monkeypatch, LARGE_PER_CLASS, epochs=8)
    monkeypatch.setattr(auto_mod, "estimate_seconds", lambda *a, **k: 0.0)
    monkeypatch.setattr(auto_mod, "epochs_within", lambda cfg, *a, **k: cfg)
    m = fit(_cfg(split_folder, tmp_path / "run", tmp_path / "cache", budget=0.001), progress=False)
    assert m["strategy"] == "finetune" and m["training"]["epochs_run"] == MIN_EPOCHS
    assert "would overrun the --budget" in m["training"]["stop_reason"]


@pytest.mark.parametrize(("per_class", "runner_up_runs"), [(LARGE_PER_CLASS, True), (12, False)])
def test_a_short_budget_still_runs_a_linear_runner_up_but_not_a_fine_tuning_one(
        split_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_class: int,
        runner_up_runs: bool) -> None:
    """The linear candidate is the floor of a fine-tuning plan that a short budget cuts to a few epochs, so it
    runs even when the budget is spent; a fine-tuning runner-up that does not fit is skipped."""
    _force_plan(monkeypatch, per_class, epochs=3)
    m = fit(_cfg(split_folder, tmp_path / "run", tmp_path / "cache", budget=0.001), progress=False)
    plan, runner = m["auto"]["candidates"]
    assert plan["ran"] and runner["ran"] == runner_up_runs
    assert runner["strategy"] == ("linear" if runner_up_runs else "finetune")
    if not runner_up_runs:
        assert "budget left it" in runner["skipped"]


def test_within_budget_stops_when_another_epoch_as_slow_as_the_slowest_would_overrun() -> None:
    import time

    from headstart.fit.auto import _within_budget

    c = Candidate("plan", "finetune", "fine-tune", replace(FitConfig(), finetune=replace(FitConfig().finetune,
                                                                                        epochs=10)))
    deadline = time.perf_counter() + 500.0
    stop = _within_budget(c, deadline, None)
    assert stop({"epoch": 1, "seconds": 600.0}) is None  # never before MIN_EPOCHS, however slow
    assert stop({"epoch": MIN_EPOCHS, "seconds": 100.0}) is not None  # the slowest so far (600 s) would overrun
    fresh = _within_budget(c, deadline, None)
    assert [fresh({"epoch": e, "seconds": 100.0}) for e in range(1, 5)] == [None] * 4  # 100 s more fits
    assert _within_budget(c, None, None)({"epoch": 5, "seconds": 1e6}) is None  # no budget: no stop


def test_fit_with_only_the_data_folder_chooses_and_writes_a_new_run(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`headstart fit my_images/`: auto, and a new run directory under ./runs each time (a second try never
    meets "holds another run")."""
    data = make_class_folder(tmp_path / "my_images", n_per_class=8)
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "my_images/", "--model", "tiny_test", "--backend", "torch", "--budget", "0",
            "--cache-dir", str(tmp_path / "cache")]
    code, out, err = run_cli(capsys, monkeypatch, *argv)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("my_images-") and f"run directory: {Path('runs') / run.name}" in err
    m = json.loads((run / "metrics.json").read_text())
    assert "auto" in m and m["auto"]["plan"]["strategy"] == m["strategy"]
    monkeypatch.setattr("headstart.cli_fit.time.localtime", lambda *_: (2030, 1, 1, 0, 0, 0, 0, 1, 0))
    code, _, err = run_cli(capsys, monkeypatch, *argv, "--seed", "1")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([run.name, "my_images-20300101-000000"])
    assert data.is_dir()
