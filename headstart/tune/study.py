"""`headstart tune`: a coarse-to-fine search of the fine-tuning options on Optuna, resumable after a kill.

1. **Coarse** at a deep freeze (all stages but the last two), augmentation off, so the frozen prefix is
   computed once per trial and each epoch is cheap: wide, log-uniform ranges (``space.COARSE``). The first
   trial is the recipe the user's options give (fit's defaults unless changed).
2. **Fine** at the advised depth (``headstart advise``'s fine-tuning option, or ``--freeze``) with its
   augmentation, EMA and TTA: ranges narrowed around the coarse stage's best, which is the first trial.

Each trial is a complete `headstart fit` run in ``RUN/trials/<stage>-<n>/``. Trials are chosen by random
search for their first third, then TPE; successive halving prunes a trial whose validation loss (plain
cross-entropy, comparable across label-smoothing values) trails its peers' at the same epoch. The objective is
the kept weights' validation loss: a proper score, steadier than accuracy on a small split. Test figures are
in each trial's own metrics.json and are never read here.

The study lives in ``RUN/study.db`` (SQLite). Running the same command again continues it: finished trials
(complete or pruned) stay, a trial a kill interrupted is marked failed and its parameters queued again.
``RUN/best.toml`` is the best trial's full configuration: ``headstart fit --config RUN/best.toml`` trains it
again (the same figures: training is seeded). ``RUN/tune.json`` has every trial.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w

from headstart.config import FitConfig, deep_update, from_dict, load_toml, to_dict
from headstart.data.augment import AUGMENT_OFF
from headstart.errors import ConfigError, HeadstartError
from headstart.fit.rundir import RunDir, recorded_config
from headstart.io import atomic_write, lock_dir
from headstart.tune.space import COARSE, Range, apply, narrowed, recipe_params, suggest

__all__ = ["STAGES", "tune"]

STAGES = ("coarse", "fine")
_BASE_FILES = {"coarse": "coarse_base.toml", "fine": "fine_base.toml"}
_MADE = ("study.db", "trials", "tune.toml", "tune.json", "best.toml", *_BASE_FILES.values())


def tune(cfg: FitConfig, *, trials: int | None = None, budget_min: float | None = None, freeze: int | None = None,
         given: dict[str, Any] | None = None, progress: bool = True, overwrite: bool = False,
         say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search in ``cfg.out`` for at most ``trials`` trials (half coarse, half fine) and ``budget_min``
    minutes of this call (neither: ``cfg.auto.budget`` minutes), each bound split half and half between the
    stages; returns what ``RUN/tune.json`` holds. ``given``: the options the user set explicitly (nested, as
    in the TOML), kept over the advised fine-tuning option's."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("headstart tune needs Optuna: pip install 'headstart[tune]'") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = replace(cfg, strategy="finetune").validate()
    if cfg.data.val_fraction == 0:
        raise ConfigError("tune compares trials on the validation split: use a --val-fraction above 0")
    if trials is not None and trials < 2:
        raise ConfigError(f"--trials must be >= 2 (one coarse, one fine); got {trials}")
    budget_s = (budget_min if budget_min is not None else cfg.auto.budget if trials is None else math.inf) * 60
    if budget_s <= 0:
        raise ConfigError("--budget must be above 0 minutes for tune (it bounds the search)")
    say = say or (print if progress else (lambda _: None))
    run = Path(cfg.out)
    t0 = time.perf_counter()
    with lock_dir(run):
        _claim(run, cfg, overwrite)
        bases = _bases(run, cfg, freeze, given or {}, progress)
        storage = f"sqlite:///{run / 'study.db'}"
        want = {"coarse": math.ceil(trials / 2), "fine": trials // 2} if trials else {s: 10**6 for s in STAGES}
        fine_started = _has_study(storage, "fine")
        for i, stage in enumerate(STAGES):
            if stage == "coarse" and fine_started:  # its best already centred the fine ranges: keep them
                continue
            study = optuna.create_study(
                study_name=stage, storage=storage, direction="minimize", load_if_exists=True,
                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, bases[stage].finetune.epochs // 3),
                                                              reduction_factor=3))
            # A resumed study draws on from where it was: a sampler seeded as before would repeat its draws.
            study.sampler = optuna.samplers.TPESampler(n_startup_trials=max(2, min(want[stage], 30) // 3),
                                                       seed=cfg.data.seed + 1000 * i + len(study.trials))
            space = COARSE if stage == "coarse" else narrowed(_best_params(run, storage))
            if not study.trials:  # a new study: the recipe (coarse) or the coarse best (fine) goes first
                study.enqueue_trial(recipe_params(bases[stage]) if stage == "coarse" else _best_params(run, storage))
            _recover(study, say)
            stage_end = t0 + budget_s * (0.5 if stage == "coarse" else 1.0)
            _run_stage(study, stage, bases[stage], space, run, want[stage], stage_end, say)
        result = _summary(run, storage)
        out = RunDir(run)
        out.write_json("tune.json", result)
        if result["best"]:
            out.write_text("best.toml", tomli_w.dumps(result["best"]["config"]))
    return result


def _has_study(storage: str, name: str) -> bool:
    import optuna

    try:
        return bool(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        return False


def _claim(run: Path, cfg: FitConfig, overwrite: bool) -> None:
    """``run`` holds this study (same options: continue it), nothing (start it), or, with ``overwrite``,
    anything (cleared). Anything else is refused, so two searches never mix."""
    # The search's identity: every option but where it is written and how long this call may take.
    mine = tomli_w.dumps({k: v for k, v in recorded_config(cfg).items() if k not in ("out", "auto")})
    stored = run / "tune.toml"
    if overwrite:
        for name in _MADE:
            p = run / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif stored.is_file():
        if stored.read_text() != mine:
            raise ConfigError(f"{run} holds a search with other options (see {stored}); choose another --out, or "
                              "pass --overwrite to discard it")
        return
    elif any(p.name != ".headstart.lock" for p in run.iterdir()):
        raise ConfigError(f"{run} is not empty and holds no search; choose another --out, or pass --overwrite")
    atomic_write(stored, mine.encode())


def _bases(run: Path, cfg: FitConfig, freeze: int | None, given: dict[str, Any],
           progress: bool) -> dict[str, FitConfig]:
    """Each stage's configuration before a trial's parameters: decided once, stored, reused on a resume."""
    if all((run / f).is_file() for f in _BASE_FILES.values()):
        return {s: from_dict(FitConfig, load_toml(run / f)) for s, f in _BASE_FILES.items()}
    from headstart.models import create_model

    stages = len(create_model(cfg.model).stages)
    no_aug = replace(cfg.finetune.augment, **AUGMENT_OFF)
    coarse = replace(cfg, finetune=replace(cfg.finetune, freeze=max(stages - 2, 0), augment=no_aug, tta="none",
                                           snapshots=False))
    if freeze is not None:
        fine = replace(cfg, finetune=replace(cfg.finetune, freeze=freeze))
    else:
        from headstart.advise import advise
        from headstart.fit.auto import plan_to_config

        advice = advise(cfg.data.path, model=cfg.model, seed=cfg.data.seed, cache_dir=cfg.engine.cache_dir or None,
                        batch_size=cfg.engine.batch_size, backend=cfg.engine.backend, progress=progress,
                        test_fraction=cfg.data.test_fraction)
        plan = advice["plan"]
        advised = plan_to_config(plan, cfg, runner_up=plan["strategy"] != "finetune")
        # What the user set explicitly (e.g. --epochs) stays theirs; the plan fills in the rest.
        fine = from_dict(FitConfig, deep_update(to_dict(advised), given) | {"out": cfg.out, "strategy": "finetune"})
    bases = {"coarse": coarse.validate(), "fine": fine.validate()}
    for s, f in _BASE_FILES.items():
        atomic_write(run / f, tomli_w.dumps(recorded_config(bases[s])).encode())
    return bases


def _recover(study: Any, say: Callable[[str], None]) -> None:
    """A trial still marked running was cut short by a kill (this process holds the run's lock): mark it
    failed, and queue its parameters again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        say(f"{study.study_name} trial {t.number} was interrupted: queued again")


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_stage(study: Any, stage: str, base: FitConfig, space: dict[str, Range], run: Path, want: int,
               deadline: float, say: Callable[[str], None]) -> None:
    import optuna

    from headstart.fit import fit

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        out = run / "trials" / f"{stage}-{trial.number:03d}"
        trial.set_user_attr("dir", str(out.relative_to(run)))

        def report(row: dict[str, Any]) -> None:
            trial.report(row["val_loss"], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("epochs", row["epoch"])
                raise optuna.TrialPruned(f"val loss {row['val_loss']:.4f} at epoch {row['epoch']}")

        t = time.perf_counter()
        m = fit(apply(replace(base, out=str(out)), params), progress=False, overwrite=True, on_epoch_end=report,
                report=False)
        trial.set_user_attr("val_accuracy", m["val"]["accuracy"])
        trial.set_user_attr("epochs", m["training"]["epochs_run"])
        trial.set_user_attr("seconds", round(time.perf_counter() - t, 1))
        return float(m["val"]["loss"])

    failed_in_a_row = 0
    while _finished(study) < want and time.perf_counter() < deadline:
        before = len(study.trials)
        study.optimize(objective, n_trials=1, catch=(HeadstartError,))
        t = study.trials[before] if len(study.trials) > before else study.trials[-1]
        failed_in_a_row = failed_in_a_row + 1 if t.state.name == "FAIL" else 0
        say(f"{stage} {_finished(study)}/{want if want < 10**6 else '-'}: " + _trial_line(t))
        if failed_in_a_row >= 3:
            say(f"{stage}: three trials failed in a row; the {stage} stage stops (see the trial folders)")
            break


def _trial_line(t: Any) -> str:
    params = " ".join(f"{k} {v:.3g}" for k, v in t.params.items())
    if t.state.name == "COMPLETE":
        return f"{params} -> val loss {t.value:.4f}, acc {t.user_attrs.get('val_accuracy', float('nan')):.1%}"
    if t.state.name == "PRUNED":
        return f"{params} -> pruned at epoch {t.user_attrs.get('epochs', '?')}"
    return f"{params} -> failed"


def _best_params(run: Path, storage: str) -> dict[str, float]:
    import optuna

    study = optuna.load_study(study_name="coarse", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        return recipe_params(from_dict(FitConfig, load_toml(run / _BASE_FILES["fine"])))
    return dict(min(done, key=lambda t: t.value).params)


def _summary(run: Path, storage: str) -> dict[str, Any]:
    import optuna

    rows, best = [], None
    for stage in STAGES:
        for t in optuna.load_study(study_name=stage, storage=storage).trials:
            row = {"stage": stage, "number": t.number, "state": t.state.name.lower(), "params": t.params,
                   "val_loss": t.value, **{k: t.user_attrs.get(k) for k in ("val_accuracy", "epochs", "seconds",
                                                                              "dir", "retry_of")}}
            rows.append(row)
    # The fine stage's best (the advised depth, with augmentation), else the coarse stage's.
    for stage in reversed(STAGES):
        done = [r for r in rows if r["stage"] == stage and r["state"] == "complete"]
        if done:
            best = min(done, key=lambda r: r["val_loss"])
            break
    if best is not None:
        cfg = from_dict(FitConfig, load_toml(run / best["dir"] / "config.toml"))
        best = best | {"config": recorded_config(replace(cfg, out=str(run / "best")))}
    return {"trials": rows, "best": best}

