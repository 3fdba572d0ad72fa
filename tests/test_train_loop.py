"""The fine-tuning loop on the tiny backbone: freezing, prefix caching, exact resume after SIGKILL, EMA, early
stopping, divergence checks, curves."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from conftest import make_class_folder

from headstart.data import EvalTransform, ImageFolder
from headstart.data.augment import AugmentConfig
from headstart.evaluate.curves import append_curve, diagnose, read_curves, reset_curves
from headstart.models import create_model
from headstart.train import EMA, ImageSet, OptimConfig, ScheduleConfig, TrainingDiverged, load_checkpoint, train
from headstart.train.prefix import PrefixFeatureSet, PrefixRunner, prefix_module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImageSet, ImageSet]:
    root = make_class_folder(tmp_path_factory.mktemp("ft") / "data", n_per_class=10, classes=("a", "b", "c"))
    folder = ImageFolder(root, test_fraction=0.0, val_fraction=0.3)
    return root, ImageSet.from_samples(folder.splits["train"]), ImageSet.from_samples(folder.splits["val"])


@pytest.fixture(autouse=True)
def _engine_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.getbasetemp() / "hs-cache"))


FAST = dict(batch_size=8, backend="torch", device="cpu", workers=2)


def _model(drop_rate: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)  # reset_classifier draws the new head from torch's global RNG
    return create_model("tiny_test", num_classes=3, drop_rate=drop_rate)


def _states(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_stages_do_not_change(data, cache: bool) -> None:
    _, tr, va = data
    model = _model()
    before = _states(model)
    train(model, tr, va, epochs=1, freeze=2, cache=cache, optim_cfg=OptimConfig(lr=1e-2), **FAST)
    after = model.state_dict()
    for name, p in model.named_parameters():
        if name.startswith(("stages.stem", "stages.stage1")):
            assert not p.requires_grad and p.grad is None, name
    for key in before:
        frozen = key.startswith(("stages.stem", "stages.stage1"))
        if frozen or key.endswith("num_batches_tracked"):
            if frozen:
                assert torch.equal(before[key], after[key]), key  # weights *and* BN running stats
        elif "running" in key or key.startswith("classifier"):
            assert not torch.equal(before[key], after[key]), key  # trainable BN stats do update


def test_freeze_bn_keeps_every_bn_statistic(data) -> None:
    _, tr, va = data
    model = _model()
    before = _states(model)
    train(model, tr, va, epochs=1, freeze=1, freeze_bn=True, **FAST)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k)
    assert not torch.equal(before["stages.stage2.1.weight"], after["stages.stage2.1.weight"])  # affine trains


@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-5), (np.float16, 2e-3)])
def test_prefix_cache_matches_online_prefix(data, dtype: type, atol: float) -> None:
    _, tr, va = data
    runs = {}
    for cache in (True, False):
        model = _model(0.3)
        res = train(model, tr, va, epochs=2, freeze=2, cache=cache, cache_dtype=dtype, seed=3, **FAST)
        assert res.feed.startswith("cached" if cache else "online")
        runs[cache] = model.state_dict()
    for k in runs[True]:
        torch.testing.assert_close(runs[True][k], runs[False][k], atol=atol, rtol=0, msg=k)


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_train_loop import run_for_resume
# A slow epoch end, so that the kill lands mid-run; stateless, so the resumed run does without it.
run_for_resume({root!r}, {run!r}, resume=False, on_epoch_end=lambda row: time.sleep(0.4))
"""


def run_for_resume(root: str, run_dir: str, *, resume: bool,
                   on_epoch_end: Callable[[dict], None] | None = None) -> torch.nn.Module:
    """The run the SIGKILL test repeats: augmentation, dropout, EMA, curves, early stopping — all stateful."""
    folder = ImageFolder(root, test_fraction=0.0, val_fraction=0.3)
    tr = ImageSet.from_samples(folder.splits["train"], augment=AugmentConfig(brightness=0.2))
    va = ImageSet.from_samples(folder.splits["val"])
    model = _model(0.3)
    train(model, tr, va, epochs=5, freeze=1, seed=7, run_dir=run_dir, resume=resume, ema=0.8, patience=100,
          optim_cfg=OptimConfig(name="adamw", lr=3e-3), sched_cfg=ScheduleConfig(name="cosine", warmup_epochs=1),
          on_epoch_end=on_epoch_end, **FAST)
    return model


def test_resume_after_sigkill_matches_uninterrupted(data, tmp_path: Path) -> None:
    root = str(data[0])
    killed = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), root=root, run=str(killed))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    marker, deadline = killed / "checkpoints" / "last" / "state.json", time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if marker.exists() and json.loads(marker.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert 1 <= load_checkpoint(killed / "checkpoints").epoch < 5  # really interrupted mid-run

    resumed = run_for_resume(root, str(killed), resume=True)
    reference = run_for_resume(root, str(tmp_path / "straight"), resume=False)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)
    curves = [json.loads(x) for x in (killed / "curves.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curves] == [1, 2, 3, 4, 5]  # no epoch logged twice
    straight = [json.loads(x) for x in (tmp_path / "straight" / "curves.jsonl").read_text().splitlines()]
    assert [c["val_loss"] for c in curves] == pytest.approx([c["val_loss"] for c in straight], abs=1e-6)


@contextmanager
def corrupt(model: torch.nn.Module, start: int, value: float | None = None) -> Iterator[Callable[[dict], None]]:
    """From 0-based epoch ``start`` on, wreck the classifier after every optimiser step (validation loss then
    gets worse); yields the ``on_epoch_end`` that counts the epochs."""
    done = [0]

    def after_step(*_: object) -> None:
        if done[0] >= start:
            with torch.no_grad():
                w = model.classifier.weight
                w.fill_(value) if value is not None else w.add_(torch.randn_like(w) * 20)

    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield lambda row: done.__setitem__(0, row["epoch"])
    finally:
        handle.remove()


def test_early_stopping_restores_best_weights(data, tmp_path: Path) -> None:
    _, tr, va = data
    model = _model()
    kw = dict(freeze=2, optim_cfg=OptimConfig(lr=1e-2), sched_cfg=ScheduleConfig(name="constant"), **FAST)
    with corrupt(model, 2) as count_epochs:
        res = train(model, tr, va, epochs=10, run_dir=tmp_path, patience=2, on_epoch_end=count_epochs, **kw)
    assert res.stop_reason.startswith("early stopping") and len(res.history) == 2 + 2
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == res.kept_epoch == 1 + int(np.argmin(losses)) <= 2
    ck = load_checkpoint(tmp_path / "checkpoints")
    assert ck.best_epoch == res.best_epoch and ck.epoch == 4
    # The weights after exactly best_epoch epochs (same seed and batches; nothing corrupted yet), trained anew.
    best = _model()
    train(best, tr, va, epochs=res.best_epoch, **kw)
    for k, v in best.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
        assert torch.equal(ck.best_state[k], v), k


def test_on_epoch_end_can_stop_training_with_a_reason(data, tmp_path: Path) -> None:
    _, tr, va = data
    res = train(_model(), tr, va, epochs=5, freeze=1, run_dir=tmp_path,
                on_epoch_end=lambda row: "out of time" if row["epoch"] == 2 else None, **FAST)
    assert len(res.history) == 2 and res.stop_reason == "out of time"
    assert load_checkpoint(tmp_path / "checkpoints").epoch == 2


def test_nan_loss_stops_with_message_and_last_checkpoint_is_usable(data, tmp_path: Path) -> None:
    _, tr, va = data
    model = _model()
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2 step \d+; lower the learning rate"):
        with corrupt(model, 1, math.nan) as count_epochs:
            train(model, tr, va, epochs=4, freeze=1, run_dir=tmp_path, on_epoch_end=count_epochs, **FAST)
    ck = load_checkpoint(tmp_path / "checkpoints")
    assert ck.epoch == 1 and all(torch.isfinite(v.float()).all() for v in ck.model.values())
    fresh = create_model("tiny_test", num_classes=3)
    fresh.load_state_dict(ck.model)
    assert torch.isfinite(fresh(torch.randn(2, 3, 32, 32))).all()


def test_ema_math() -> None:
    lin = torch.nn.Linear(2, 1)
    ema = EMA(0.9, warmup=False)
    ema.init(lin)
    for _ in range(5):  # constant weights: the average is those weights
        ema.update(lin)
    assert torch.equal(ema.shadow["weight"], lin.weight)
    with torch.no_grad():
        lin.weight.zero_()
    ema.init(lin)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)
    ema.update(lin)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.19))  # 0.1, then 0.9*0.1 + 0.1
    bn, bn_ema = torch.nn.BatchNorm1d(2), EMA(0.9)
    bn_ema.init(bn)
    bn(torch.randn(8, 2) + 3)
    bn_ema.update(bn)
    assert torch.equal(bn_ema.shadow["running_mean"], bn.running_mean)  # buffers are copied, not averaged
    live = lin.weight.detach().clone()
    with ema.swap(lin):
        torch.testing.assert_close(lin.weight, torch.full((1, 2), 0.19))
    assert torch.equal(lin.weight, live)


def test_ema_warmup_forgets_the_first_weights() -> None:
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.zero_()
    ema = EMA(0.999)
    ema.init(lin)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # decay min(0.999, 1/10): 0.9 of the new weights
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(lin)  # decay 2/11
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 1 - 0.1 * 2 / 11))
    for _ in range(500):
        ema.update(lin)
    # Without warm-up 502 updates at 0.999 would still hold 0.999**502 = 60% of the initial zeros.
    assert ema.shadow["weight"].min() > 0.99
    ema.updates = 20_000  # late in a long run the configured decay applies
    with torch.no_grad():
        lin.weight.fill_(2.0)
    before = ema.shadow["weight"].clone()
    ema.update(lin)
    torch.testing.assert_close(ema.shadow["weight"], before * 0.999 + 2.0 * 0.001)


def test_diagnose_three_cases() -> None:
    def curves(train_acc, val_acc, val_loss):
        return [{"epoch": i + 1, "train_acc": a, "val_acc": b, "val_loss": c}
                for i, (a, b, c) in enumerate(zip(train_acc, val_acc, val_loss))]

    over = diagnose(curves([0.8, 0.95, 0.99, 1.0, 1.0], [0.7, 0.75, 0.74, 0.72, 0.7], [0.6, 0.5, 0.55, 0.65, 0.8]))
    assert over.startswith("over-fitting") and "0.5000" in over and "0.8000" in over
    still = diagnose(curves([0.6, 0.7, 0.8], [0.6, 0.68, 0.75], [0.9, 0.7, 0.6]))
    assert still.startswith("still improving") and "0.9000" in still and "0.6000" in still
    under = diagnose(curves([0.55, 0.6, 0.61, 0.6], [0.54, 0.58, 0.6, 0.59], [1.0, 0.95, 0.95, 0.96]))
    assert under.startswith("under-fitting") and "0.600" in under and "0.590" in under


def test_big_prefix_cache_is_a_memmap_reused_on_resume(data, tmp_path: Path) -> None:
    _, tr, _ = data
    model = _model()
    runner = PrefixRunner(prefix_module(model, 2), (3, 32, 32), backend="torch")
    kw = dict(batch_size=8, device=torch.device("cpu"), store_dir=tmp_path, memory_limit=0)
    first = PrefixFeatureSet(tr, runner, EvalTransform(model.spec), **kw)
    assert isinstance(first.features, np.memmap) and len(list(tmp_path.glob("train-*.npy"))) == 2

    def boom(batch: np.ndarray) -> np.ndarray:
        raise AssertionError("recomputed")

    runner.engine = boom  # a second build (a resumed run) must read the stored file instead
    again = PrefixFeatureSet(tr, runner, EvalTransform(model.spec), **kw)
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))
    x, y = next(again.batches(np.arange(len(tr))[::-1], 4))
    assert x.shape == (4, 16, 8, 8) and y.tolist() == tr.labels[::-1][:4].tolist()


def test_curves_are_strict_json_without_a_val_split(tmp_path: Path) -> None:
    """No val split (or a diverged loss) is written as null, not NaN, which jq / JS / pandas' strict readers refuse."""
    reset_curves(tmp_path, 0)
    for epoch, train_loss in enumerate((0.5, math.inf)):
        append_curve(tmp_path, {"epoch": epoch + 1, "lr": 0.1, "train_loss": train_loss, "train_acc": 0.5,
                                "seconds": 1.0})

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "curves.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows] == [None, None] and rows[1]["train_loss"] is None
    assert rows[0]["train_loss"] == 0.5
    back = read_curves(tmp_path)  # read back as NaN, so the plot and the diagnosis see "no value"
    assert math.isnan(back[0]["val_acc"]) and math.isnan(back[1]["train_loss"])
