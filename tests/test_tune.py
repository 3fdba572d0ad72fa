"""`headstart tune`: the coarse-to-fine study, its best config reproduced by fit, and resuming after SIGKILL."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.cli_fit import config_from_argv
from headstart.fit import fit
from headstart.tune.space import COARSE, narrowed


def _noisy_folder(root: Path) -> Path:
    """Three learnable classes with a fifth of each class's images in the wrong folder, so validation loss is
    neither zero nor the same for every recipe."""
    make_class_folder(root, n_per_class=20, classes=("a", "b", "c"))
    for i, (src, dst) in enumerate((("a", "b"), ("b", "c"), ("c", "a"))):
        for f in sorted((root / src).glob("*.png"))[:4]:
            f.rename(root / dst / f"moved{i}_{f.name}")
    return root


def _args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["tune", str(data), "--out", str(out), "--model", "tiny_test", "--cache-dir", str(cache), "--epochs", "3",
            "-q", *extra]


def test_tune_coarse_to_fine_and_best_config_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = _noisy_folder(tmp_path / "data"), tmp_path / "run"
    code, stdout, err = run_cli(capsys, monkeypatch, *_args(data, out, tmp_path / "cache", "--trials", "6",
                                                            "--freeze", "2"))
    assert code == 0, err
    result = json.loads((out / "tune.json").read_text())
    rows = result["trials"]
    assert [r["stage"] for r in rows] == ["coarse"] * 3 + ["fine"] * 3
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    # the first coarse trial is the recipe the options give (fit's defaults); the first fine one the coarse best
    assert rows[0]["params"] == {"lr": 1e-3, "backbone_lr_mult": 0.1, "weight_decay": 0.01, "label_smoothing": 0.1,
                                 "dropout": 0.2}
    coarse_best = min((r for r in rows[:3] if r["state"] == "complete"), key=lambda r: r["val_loss"])
    assert rows[3]["params"] == coarse_best["params"]
    space = narrowed(coarse_best["params"])
    for r in rows[3:]:
        for name, value in r["params"].items():
            assert space[name].low - 1e-12 <= value <= space[name].high + 1e-12
            assert COARSE[name].low <= value <= COARSE[name].high
    # coarse trials ran at the deep freeze without augmentation; fine trials at --freeze 2 with it
    coarse_cfg = config_from_argv(["--config", str(out / rows[0]["dir"] / "config.toml")])
    fine_cfg = config_from_argv(["--config", str(out / rows[3]["dir"] / "config.toml")])
    assert (coarse_cfg.finetune.freeze, coarse_cfg.finetune.augment.crop) == (2, "center")  # tiny_test: 4 stages
    assert (fine_cfg.finetune.freeze, fine_cfg.finetune.augment.crop) == (2, "rrc")

    best = result["best"]
    assert best["stage"] == "fine" and best["val_loss"] == min(r["val_loss"] for r in rows[3:]
                                                               if r["state"] == "complete")
    assert "headstart fit --config" in stdout
    again = config_from_argv(["--config", str(out / "best.toml")])
    m = fit(again, progress=False)
    trial_metrics = json.loads((out / best["dir"] / "metrics.json").read_text())
    assert m["val"]["loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    assert (m["val"]["accuracy"], m["test"]["accuracy"]) == (trial_metrics["val"]["accuracy"],
                                                             trial_metrics["test"]["accuracy"])


def test_tune_refuses_another_search_in_the_same_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data, out, cache = _noisy_folder(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    assert run_cli(capsys, monkeypatch, *_args(data, out, cache, "--trials", "2", "--freeze", "2"))[0] == 0
    code, _, err = run_cli(capsys, monkeypatch, *_args(data, out, cache, "--trials", "2", "--freeze", "1"))
    assert code == 2 and "holds a search with other options" in err
    code, _, err = run_cli(capsys, monkeypatch, *_args(data, out, cache, "--trials", "2", "--freeze", "1",
                                                       "--overwrite"))
    assert code == 0, err
    assert len(json.loads((out / "tune.json").read_text())["trials"]) == 2


def test_tune_continues_with_another_budget_and_keeps_explicit_options_over_the_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No --freeze: the fine stage is advise's fine-tuning option, but --epochs (given) stays the user's. A rerun
    with another --budget (or --out spelled otherwise) continues the same search. --weight-decay 0, off the
    log-scale range, is queued clipped instead of crashing Optuna."""
    data, cache = _noisy_folder(tmp_path / "data"), tmp_path / "cache"
    config = tmp_path / "base.toml"
    config.write_text("[finetune]\nfreeze = 2\n")  # tiny_test has 4 stages; a file value, not a flag
    args = ["tune", str(data), "--out", str(tmp_path / "run"), "--model", "tiny_test", "--cache-dir", str(cache),
            "--epochs", "2", "--weight-decay", "0", "--config", str(config), "-q", "--trials", "2"]
    code, _, err = run_cli(capsys, monkeypatch, *args)
    assert code == 0, err
    fine = config_from_argv(["--config", str(tmp_path / "run" / "fine_base.toml")])
    assert fine.finetune.epochs == 2 and fine.finetune.optim.weight_decay == 0.0
    rows = json.loads((tmp_path / "run" / "tune.json").read_text())["trials"]
    assert rows[0]["params"]["weight_decay"] == COARSE["weight_decay"].low
    args[args.index(str(tmp_path / "run"))] = f"{tmp_path}/./run"  # another spelling of the same folder
    code, _, err = run_cli(capsys, monkeypatch, *args, "--budget", "30")
    assert code == 0, err
    assert len(json.loads((tmp_path / "run" / "tune.json").read_text())["trials"]) == 2  # nothing left to run


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_tune_resumes_after_sigkill_without_repeating_finished_trials(tmp_path: Path) -> None:
    import optuna

    data, out, cache = _noisy_folder(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    args = _args(data, out, cache, "--trials", "6", "--freeze", "2", "--epochs", "6")
    child = subprocess.Popen([sys.executable, "-c", "from headstart.cli import main; main()", *args],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    storage = f"sqlite:///{out / 'study.db'}"

    def schema_ready() -> bool:
        """Whether tune has created its tables and a trial: optuna.load_study on a database whose schema is
        still being created creates tables itself, racing tune into "table studies already exists"."""
        if not (out / "study.db").is_file():  # opening the URL would create it, before tune claims the folder
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
                return db.execute("SELECT count(*) FROM trials").fetchone()[0] > 0
        except sqlite3.Error:
            return False

    def trials() -> list[optuna.trial.FrozenTrial]:
        if not schema_ready():
            return []
        try:
            return [t for s in ("coarse", "fine") for t in optuna.load_study(study_name=s, storage=storage).trials]
        except Exception:  # noqa: BLE001 - the database or a study is not created yet
            return []

    def finished() -> list[optuna.trial.FrozenTrial]:
        return [t for t in trials() if t.state.is_finished()]

    def mid_trial() -> bool:
        """Two trials finished, and a third one has trained an epoch."""
        running = [t for t in trials() if t.state.name == "RUNNING" and "dir" in t.user_attrs]
        return len(finished()) >= 2 and any((out / t.user_attrs["dir"] / "curves.jsonl").is_file() for t in running)

    deadline = time.monotonic() + 300
    while not mid_trial():
        if child.poll() is not None:
            pytest.fail(f"tune ended before it could be killed:\n{child.stderr.read()}")
        assert time.monotonic() < deadline, "no trial got that far in time"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stderr.close()
    before = {(t.number, t.state.name): (t.params, t.value) for t in finished()}
    sealed = {d: (out / d / "run.json").stat().st_mtime_ns for d in
              (t.user_attrs["dir"] for t in finished() if t.state.name == "COMPLETE")}

    resumed = subprocess.run([sys.executable, "-c", "from headstart.cli import main; main()", *args],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads((out / "tune.json").read_text())["trials"]
    done = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert len(done) == 6 and [r["stage"] for r in done] == ["coarse"] * 3 + ["fine"] * 3
    for (number, state), (params, value) in before.items():  # what had finished is still there, untouched
        row = next(r for r in rows if r["stage"] == "coarse" and r["number"] == number)
        assert row["state"] == state.lower() and row["params"] == params
        assert row["val_loss"] == value or (value is None and row["val_loss"] is None) or math.isnan(value)
    for d, mtime in sealed.items():
        assert (out / d / "run.json").stat().st_mtime_ns == mtime  # not trained again
    failed = [r for r in rows if r["state"] == "fail"]
    assert len(failed) == 1
    for f in failed:  # a trial the kill cut short: queued again with its parameters
        assert any(r["retry_of"] == f["number"] and r["params"] == f["params"] for r in rows)
