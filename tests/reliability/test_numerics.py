"""NaN/inf in codes, predictions or losses: detected, one line saying what to do, nothing poisoned."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import headstart.features.extract as extract_module
from headstart.bundle import save_linear_bundle
from headstart.heads.params import LinearParams
from headstart.models import create_model
import headstart.train.loop as loop_module
from headstart.train.checkpoint import load_checkpoint

from .helpers import TINY, make_class_folder, run

FINETUNE = ("--strategy", "finetune", "--epochs", "2", "--freeze", "1", "--batch-size", "8")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("numerics") / "data", 8)


def _broken_engine(monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    """The backbone's engine returns ``value`` in one image's codes (a faulty backend or damaged weights)."""
    make = extract_module._make_engine

    def broken(*args: object, **kwargs: object) -> object:
        engine = make(*args, **kwargs)

        def run_batch(batch: np.ndarray) -> tuple[np.ndarray, ...]:
            outs = tuple(o.copy() for o in engine(batch))
            outs[0][-1, 0] = value
            return outs

        run_batch.name = engine.name  # type: ignore[attr-defined]
        return run_batch

    monkeypatch.setattr(extract_module, "_make_engine", broken)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("command", ["extract", "fit", "finetune"])
def test_non_finite_codes_stop_with_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             value: float, command: str) -> None:
    _broken_engine(monkeypatch, value)
    cache = tmp_path / "cache"
    args = ["extract", data] if command == "extract" else ["fit", data]
    extra = FINETUNE if command == "finetune" else ()
    line = run(*args, "--out", tmp_path / "out", "--cache-dir", cache, *extra, *TINY).assert_fails(
        "NaN/inf codes", "--backend torch")
    assert str(data) in line  # names an image of the failing batch
    # Nothing non-finite reached the cache, where it would poison every later run.
    from safetensors.numpy import load_file

    for chunk in cache.rglob("chunk-*.safetensors"):
        assert np.isfinite(load_file(str(chunk))["codes"].astype(np.float32)).all()
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_codes_beyond_float16_but_finite_are_clipped_not_refused(data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_engine(monkeypatch, 1e6)  # finite: the cache's float16 stores it as its largest value
    run("extract", data, "--out", tmp_path / "codes", "--cache-dir", tmp_path / "cache", *TINY).assert_ok()
    codes = np.load(tmp_path / "codes" / "codes_pooled.npy")
    assert np.isfinite(codes).all() and codes.max() == np.finfo(np.float16).max


def test_predict_refuses_nan_probabilities(data: Path, tmp_path: Path) -> None:
    model = create_model("tiny_test")
    head = LinearParams(np.full((2, 64), np.nan), np.zeros(2), "softmax")
    save_linear_bundle(tmp_path / "bundle", model="tiny_test", weights_id=model.weights_id, taps=["pooled"],
                       spec=model.spec, classes=["circle", "square"], head=head)
    r = run("predict", data / "circle", "--model", tmp_path / "bundle", "--backend", "torch")
    r.assert_fails("NaN/inf probabilities", "re-run `headstart fit`")
    assert "nan%" not in r.out.lower()


def test_divergent_learning_rate_stops_with_advice(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = run("fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *FINETUNE, "--lr", "1e6",
               *TINY).assert_fails("lower the learning rate", "diverg")
    assert "last good checkpoint is" in line
    assert not (out / "metrics.json").exists() and not (out / "bundle").exists()  # no garbage model published


@contextlib.contextmanager
def _explode_from_epoch_2(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """From epoch 2 on, blow the classifier up after every step: the weights diverge mid-run."""
    logged, append = [0], loop_module.append_curve

    def count(run_dir, row):  # the loop logs every finished epoch
        append(run_dir, row)
        logged[0] += 1

    def explode(opt, *_):
        if logged[0] >= 1:
            with torch.no_grad():
                for p in opt.param_groups[-1]["params"]:  # the classifier's group comes last
                    p.mul_(1e6)

    mp.setattr(loop_module, "append_curve", count)
    handle = register_optimizer_step_post_hook(explode)
    try:
        yield
    finally:
        handle.remove()


def test_divergence_keeps_the_last_good_checkpoint_usable(data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ("--cache-dir", tmp_path / "cache", *FINETUNE, "--epochs", "3", *TINY)
    with monkeypatch.context() as mp, _explode_from_epoch_2(mp):
        line = run("fit", data, "--out", out, *args).assert_fails("epoch 2", "diverg", "lower the learning rate")
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last'} (epoch 1)" in line
    ck = load_checkpoint(out / "checkpoints")
    assert ck.epoch == 1 and all(torch.isfinite(v.float()).all() for v in ck.model.values())
    # Usable: a resume continues from it (here the cause is gone) and finishes the run.
    run("fit", "--resume", out, "-q").assert_ok()
    curves = [json.loads(x)["epoch"] for x in (out / "curves.jsonl").read_text().splitlines()]
    assert curves == [1, 2, 3] and math.isfinite(json.loads((out / "metrics.json").read_text())["val"]["loss"])
