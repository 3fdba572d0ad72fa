"""Strategy "auto": ``headstart advise``'s plan, run; within the time budget its runner-up too; the better
on validation (or cross-validation) becomes the run. The test split is never looked at to choose.

1. advise reads every non-test image once (its codes of every stage are cached, so what follows reuses them)
   and makes the plan: the quadrant, a strategy with its options, and a runner-up of the other strategy.
2. Each option becomes a concrete ``FitConfig`` (``plan_to_config``: the plan's options on top of the
   user's) and runs as a complete run in ``RUN/candidates/<strategy>/``. The linear candidate runs first: it
   costs about a minute, and a fine-tuning candidate then gets a known remainder of the budget, its epochs
   cut to fit (``auto_cost``). A linear runner-up always runs (unless ``--budget 0``), as the floor of a
   fine-tuning plan; a fine-tuning runner-up only when its estimate fits what is left.
3. ``compare.choose`` keeps the plan unless the runner-up's validation figure is better by more than the
   noise of the two figures; the kept candidate's bundle, splits and curves are copied up, so ``headstart
   evaluate RUN`` and ``predict -m RUN`` work as on any run. metrics.json and summary.txt say why.

    fit(FitConfig(out="runs/a", strategy="auto", data=DataConfig(path="photos")))["auto"]["winner"]  # 'linear'
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from headstart.advise.plan import Plan
from headstart.config import FitConfig, changed_from_defaults, deep_update, from_dict, load_toml, to_dict
from headstart.data.loader import failures_reported_once
from headstart.errors import HeadstartError, TrainingDiverged
from headstart.fit.auto_cost import (
    MIN_EPOCHS,
    BackboneCost,
    Counts,
    epochs_within,
    estimate_seconds,
)
from headstart.fit.compare import Candidate, choose, comparison_record
from headstart.fit.rundir import RunDir, check_run, checked_dataset, open_dataset
from headstart.io import LOCK_NAME, MANIFEST, tmp_path_for

__all__ = ["CANDIDATES", "fit_auto", "kept_over_plan", "plan_to_config"]

CANDIDATES = "candidates"  # RUN/candidates/<strategy>/: one complete run per candidate
# The kept candidate's files that make it the run's own (bundle, split, curves); its config stays with it,
# and RUN/config.toml remains the auto configuration that made the whole run.
_PROMOTED = ("bundle", "splits.json", "curves.jsonl", "test_predictions.json")


def plan_to_config(plan: Plan | Mapping[str, Any], cfg: FitConfig, *, runner_up: bool = False) -> FitConfig:
    """The run of the plan (or of its runner-up): the plan's options (``Plan.config``) on top of the defaults,
    and every option the user set away from its default on top of the plan (``kept_over_plan`` lists those
    that differ from the plan's), writing to ``cfg.out/candidates/<strategy>``.

        plan_to_config(advice["plan"], cfg).finetune.freeze   # e.g. 3
    """
    option = _option(plan, runner_up)
    merged = deep_update(deep_update(to_dict(cfg), option["config"]), _yours(cfg))
    merged["out"] = str(Path(cfg.out) / CANDIDATES / option["strategy"])
    return from_dict(FitConfig, merged).validate()


def kept_over_plan(plan: Plan | Mapping[str, Any], cfg: FitConfig, *, runner_up: bool = False) -> dict[str, Any]:
    """The options where ``cfg``'s own value (set away from its default) overrides the plan's:
    ``{"finetune.freeze": {"yours": 2, "plan": 1}}``. Empty when the user left the plan's options alone."""
    out: dict[str, Any] = {}

    def walk(advised: Mapping[str, Any], yours: Mapping[str, Any], where: str) -> None:
        for k, v in advised.items():
            if k not in yours:
                continue
            if isinstance(v, Mapping) and isinstance(yours[k], Mapping):
                walk(v, yours[k], f"{where}{k}.")
            elif yours[k] != v:
                out[f"{where}{k}"] = {"yours": yours[k], "plan": v}

    walk(_option(plan, runner_up)["config"], _yours(cfg), "")
    return out


def _option(plan: Plan | Mapping[str, Any], runner_up: bool) -> Mapping[str, Any]:
    p = plan.to_dict() if isinstance(plan, Plan) else plan
    option = p["runner_up"] if runner_up else p
    if not option.get("config"):
        raise ValueError("the plan has no config; it was made by an older headstart: advise again")
    return option


def _yours(cfg: FitConfig) -> dict[str, Any]:
    """What the user set (away from the defaults): it wins over the plan, as any flag wins over a default.
    The strategy (auto) and the run directory are the candidates' business."""
    return {k: v for k, v in changed_from_defaults(cfg).items() if k not in ("strategy", "out")}


def fit_auto(cfg: FitConfig, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run the whole auto strategy in ``cfg.out`` (the caller, ``fit``, holds its lock); returns metrics.
    advise and each candidate read the folder: a warning about it (a bad file, copies across splits...) is
    shown once, not once per pass.

    ``resume`` continues a killed auto run: the plan is read back from ``advice.json``, a candidate that
    finished is kept as it is, one that started continues from its last checkpoint with the options it
    started with, and the budget counts again from the resume."""
    with failures_reported_once(), _each_warning_once():
        return _fit_auto(cfg, progress=progress, resume=resume)


@contextmanager
def _each_warning_once() -> Iterator[None]:
    """Within the block a warning whose text was already shown is not shown again."""
    shown: set[str] = set()
    with warnings.catch_warnings():
        show = warnings.showwarning

        def once(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if str(message) not in shown:
                shown.add(str(message))
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = once
        yield


def _fit_auto(cfg: FitConfig, *, progress: bool, resume: bool) -> dict[str, Any]:
    from headstart.advise import advise
    from headstart.models import create_model

    t_start = time.perf_counter()
    say = _Say(progress, t_start)
    for strategy in ("linear", "finetune"):  # refused before advise reads an image, as either strategy would
        checked_dataset(replace(cfg, strategy=strategy))
    run = RunDir(cfg.out)
    advised = run.path / "advice.json"
    if not resume:
        _clear_previous(run.path)
    run.write_config(cfg)
    if resume and advised.is_file():
        advice = json.loads(advised.read_text(encoding="utf-8"))
        say("step 1/3 · resumed: the plan advise made before is read from advice.json")
    else:
        say("step 1/3 · advise: dataset facts, every stage's codes scored, the plan")
        advice = advise(cfg.data.path, model=cfg.model, seed=cfg.data.seed, cache_dir=cfg.engine.cache_dir or None,
                        batch_size=cfg.engine.batch_size, backend=cfg.engine.backend, progress=progress,
                        test_fraction=cfg.data.test_fraction)
        run.write_json("advice.json", advice)
    plan = advice["plan"]
    advise_s = time.perf_counter() - t_start
    say(f"plan: {plan['summary']}")
    yours = {role: kept_over_plan(plan, cfg, runner_up=role == "runner-up") for role in ("plan", "runner-up")}
    for role, kept in yours.items():
        if kept:
            say(f"{role}: your options are kept over the plan's: " + ", ".join(
                f"{k} {v['yours']!r} (plan: {v['plan']!r})" for k, v in kept.items()))

    cost = BackboneCost.of(create_model(cfg.model))
    cands = [Candidate("plan", plan["strategy"], _what(plan), plan_to_config(plan, cfg)),
             Candidate("runner-up", plan["runner_up"]["strategy"], plan["runner_up"]["what"],
                       plan_to_config(plan, cfg, runner_up=True))]
    counts = {c.strategy: _counts(c.cfg) for c in cands}
    budget_s = cfg.auto.budget * 60
    # Linear first: it is cheap, and the fine-tuning candidate then gets a known remainder, cut to fit.
    order = sorted(cands, key=lambda c: c.strategy != "linear")
    deadline = t_start + budget_s if budget_s > 0 else None

    failures: list[TrainingDiverged] = []

    def run_candidate(c: Candidate, resume: bool = False) -> None:
        _run(c, progress=progress, resume=resume,
             on_epoch_end=_within_budget(c, deadline, say.epoch(c) if progress else None))

    for i, c in enumerate(order):
        left = budget_s - (time.perf_counter() - t_start)
        if resume and (started := _started(c.cfg)) is not None:  # as it began before the kill
            c.cfg = started
            c.estimate_s = estimate_seconds(c.cfg, counts[c.strategy], cost)
            if (done := _finished(c.cfg)) is not None:
                c.metrics = done
                say(f"step {2 + i}/3 · candidate {i + 1} of 2 ({c.role}): {c.what} finished before; kept as it is")
                continue
            say(f"step {2 + i}/3 · candidate {i + 1} of 2 ({c.role}): {c.what}, resumed")
            run_candidate(c, resume=True)
            continue
        if c.role == "runner-up":
            if budget_s == 0:
                c.skipped = "--budget 0 runs the plan alone"
                continue
            c.cfg = epochs_within(c.cfg, left, counts[c.strategy], cost)
            c.estimate_s = estimate_seconds(c.cfg, counts[c.strategy], cost)
            # A linear runner-up always runs: it costs about a pass over cached codes, and it is the floor a
            # fine-tuning plan cut to a few epochs by a short budget may not reach (the demo's 2 minutes gave
            # lite0 3 epochs on the digits: 70% on validation, where the linear classifier scores ~95%).
            if c.strategy == "finetune" and c.estimate_s > left:
                c.skipped = (f"estimated {_dur(c.estimate_s)}, more than the {_dur(max(left, 0.0))} the "
                             f"{cfg.auto.budget:g}-minute budget left it")
                say(f"runner-up not run ({c.what}): {c.skipped}")
                continue
        else:
            if budget_s > 0:
                c.cfg = epochs_within(c.cfg, left, counts[c.strategy], cost)
            c.estimate_s = estimate_seconds(c.cfg, counts[c.strategy], cost)
        epochs = ""
        if c.strategy == "finetune":
            cut = c.cfg.finetune.epochs < c.advised_epochs
            epochs = f", {c.cfg.finetune.epochs} epochs" + (f" (cut from {c.advised_epochs} to fit the budget)"
                                                            if cut else "")
        say(f"step {2 + i}/3 · candidate {i + 1} of 2 ({c.role}): {c.what}{epochs} · estimated "
            f"{_dur(c.estimate_s)}, ETA {_clock(c.estimate_s)}")
        try:
            run_candidate(c)
        except TrainingDiverged as exc:  # the other candidate may still give a model
            failures.append(exc)
            c.skipped = f"training diverged ({exc})"
            say(f"{c.role} failed, kept out of the comparison: {c.skipped}")

    if all(c.metrics is None for c in cands) and failures:
        raise failures[0]
    winner, why = choose([c for c in cands if c.metrics is not None])
    say(f"kept {winner.strategy} ({winner.role}): {why}")
    _promote(run.path, Path(winner.cfg.out))
    metrics = dict(winner.metrics or {})
    metrics["auto"] = {"plan": plan, "advise_s": round(advise_s, 2), "budget_min": cfg.auto.budget,
                       "yours_over_plan": {k: v for k, v in yours.items() if v},
                       "candidates": [comparison_record(c, run.path) for c in cands],
                       "winner": winner.strategy, "winner_role": winner.role, "why": why,
                       "total_s": round(time.perf_counter() - t_start, 2)}
    metrics["timing"] = {"advise_s": round(advise_s, 2)} | {
        f"{c.strategy}_s": round(c.cost_s, 2) for c in cands if c.metrics is not None} | {
        "total_s": metrics["auto"]["total_s"]}
    run.write_json("metrics.json", metrics)
    return metrics


def _run(c: Candidate, *, progress: bool, on_epoch_end: Callable[[dict[str, Any]], str | None] | None,
         resume: bool = False) -> None:
    """One candidate as a complete run of its own (locked, summarised and sealed by ``fit``); ``resume``
    continues a fine-tuning candidate from its checkpoint (a linear one is simply run again)."""
    from headstart.fit import fit

    t0 = time.perf_counter()
    resume = resume and c.strategy == "finetune"  # the auto run's report covers its candidates: none of their own
    c.metrics = fit(c.cfg, progress=progress, resume=resume, overwrite=not resume, on_epoch_end=on_epoch_end,
                    report=False)
    c.cost_s = time.perf_counter() - t0


def _within_budget(c: Candidate, deadline: float | None,
                   show: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], str | None]:
    """A fine-tuning candidate's ``on_epoch_end``: shows the epoch, and stops training when another epoch (as
    long as the slowest so far) would end after ``deadline``, the budget's end: estimates cut the epochs
    before the run, this holds the budget when the machine turns out slower. Never before ``MIN_EPOCHS``."""
    slowest = 0.0

    def on_epoch_end(row: dict[str, Any]) -> str | None:
        nonlocal slowest
        if show is not None:
            show(row)
        slowest = max(slowest, float(row["seconds"]))
        if deadline is None or row["epoch"] < MIN_EPOCHS or row["epoch"] >= c.cfg.finetune.epochs:
            return None
        if time.perf_counter() + slowest > deadline:
            return (f"stopped after epoch {row['epoch']} of {c.cfg.finetune.epochs}: another ({slowest:.0f} s) "
                    "would overrun the --budget")
        return None

    return on_epoch_end


def _started(cand: FitConfig) -> FitConfig | None:
    """The candidate's config as it was started (its epochs cut to the budget then), if it was."""
    file = Path(cand.out) / "config.toml"
    # Its folder as this run names it now (the run may be resumed by another spelling of its path).
    return replace(from_dict(FitConfig, load_toml(file)), out=cand.out) if file.is_file() else None


def _finished(cand: FitConfig) -> dict[str, Any] | None:
    """The candidate's metrics if its run is complete (sealed, every file its own), else None."""
    out = Path(cand.out)
    if not (out / MANIFEST).is_file():
        return None
    try:
        check_run(out)
    except HeadstartError:
        return None
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def _what(plan: Mapping[str, Any]) -> str:
    return plan["summary"].rpartition(" -> ")[2]


def _counts(cfg: FitConfig) -> Counts:
    ds = open_dataset(cfg)  # lists the folder; cheap, and the candidate's own val split
    return Counts(*(len(ds.splits.get(k, [])) for k in ("train", "val", "test")))


def _clear_previous(out: Path) -> None:
    """Empty the run folder but its lock (``fit`` has already refused a folder that holds anything but this
    run, unless --overwrite): a rerun restarts its candidates, and none of an earlier attempt's files may
    be promoted or sealed as this run's."""
    for p in out.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _promote(out: Path, cand: Path) -> None:
    """Copy the kept candidate's bundle, split and curves into the run; each lands whole (copied beside,
    then renamed), so a kill never leaves a half-copied bundle under the run's name. What an earlier, killed
    attempt promoted goes first (a resumed run may keep another candidate)."""
    for name in _PROMOTED:
        src, dest = cand / name, out / name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink(missing_ok=True)
        if not src.exists():
            continue
        tmp = tmp_path_for(dest)
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _clock(seconds_from_now: float) -> str:
    return time.strftime("%H:%M", time.localtime(time.time() + seconds_from_now))


class _Say:
    """Progress lines on stderr (stdout stays the summary's): which step runs, its estimate and ETA."""

    def __init__(self, enabled: bool, t0: float) -> None:
        self.enabled, self.t0 = enabled, t0

    def __call__(self, line: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            sys.stderr.write(f"auto [{_dur(elapsed):>8}] {line}\n")
            sys.stderr.flush()

    def epoch(self, c: Candidate) -> Callable[[dict[str, Any]], None]:
        """A fine-tuning candidate's per-epoch line, its ETA from the epochs measured so far."""
        seconds: list[float] = []

        def on_epoch_end(row: dict[str, Any]) -> None:
            seconds.append(float(row["seconds"]))
            rest = (c.cfg.finetune.epochs - row["epoch"]) * sum(seconds) / len(seconds)
            acc = row.get("val_acc")
            val = f"val acc {acc:.1%} · " if acc is not None and not math.isnan(acc) else ""
            self(f"  epoch {row['epoch']}/{c.cfg.finetune.epochs} · {val}{seconds[-1]:.0f} s/epoch · "
                 f"ETA {_clock(rest)} (at most {_dur(rest)} more; early stopping may end it sooner)")

        return on_epoch_end
