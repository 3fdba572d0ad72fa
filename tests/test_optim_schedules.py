"""Parameter groups, optimisers, L1 and LR schedules for fine-tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from headstart.errors import ConfigError
from headstart.models import create_model
from headstart.train.optim import OPTIMIZERS, OptimConfig, build_optimizer, build_param_groups, l1_penalty
from headstart.train.schedules import LRSchedule, ScheduleConfig, lr_sequence


def _ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


# -- parameter groups -----------------------------------------------------------------------------------
def test_groups_lrs_decay_and_coverage_tiny() -> None:
    model = create_model("tiny_test")
    groups = build_param_groups(model, OptimConfig(lr=0.1, weight_decay=1e-4), freeze=0)
    names = [g["name"] for g in groups]
    assert names[-2:] == ["classifier/decay", "classifier/no_decay"] and names[0] == "stem/decay"
    for g in groups:
        backbone = not g["name"].startswith("classifier")
        assert g["lr"] == pytest.approx(0.01 if backbone else 0.1)
        assert g["lr_scale"] == pytest.approx(g["lr"] / 0.1)
        assert all(p.ndim > 1 for p in g["params"]) if g["decay"] else all(p.ndim <= 1 for p in g["params"])
        assert g["weight_decay"] == (1e-4 if g["decay"] else 0.0)
    # Every parameter exactly once; BN weights and all biases are in no_decay groups.
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    no_decay = _ids([p for g in groups if not g["decay"] for p in g["params"]])
    bn = model.stages["stem"][1]
    assert {id(bn.weight), id(bn.bias), id(model.classifier.bias)} <= no_decay


def test_freeze_excludes_leading_stages_and_validates() -> None:
    model = create_model("tiny_test")
    groups = build_param_groups(model, OptimConfig(), freeze=2)
    in_groups = _ids([p for g in groups for p in g["params"]])
    for name in ("stem", "stage1"):
        assert not _ids(list(model.stages[name].parameters())) & in_groups
    assert _ids(list(model.stages["stage2"].parameters())) <= in_groups
    assert {g["name"].split("/")[0] for g in groups} == {"stage2", "head", "classifier"}
    only_head = build_param_groups(model, OptimConfig(), freeze=4)
    assert {g["name"].split("/")[0] for g in only_head} == {"classifier"}
    for bad in (-1, 5, 1.5):
        with pytest.raises(ConfigError, match=r"freeze.*stem, stage1, stage2, head.*got"):
            build_param_groups(model, OptimConfig(), freeze=bad)  # type: ignore[arg-type]


def test_layer_decay_efficientnet() -> None:
    model = create_model("efficientnet_lite0", pretrained=False)
    stages = list(model.stages.keys())
    cfg = OptimConfig(lr=1.0, backbone_lr_mult=0.1, layer_decay=0.5)
    lrs = {g["name"].split("/")[0]: g["lr"] for g in build_param_groups(model, cfg, freeze=3)}
    trainable = stages[3:]
    n = len(trainable)
    for i, name in enumerate(trainable, start=1):
        assert lrs[name] == pytest.approx(0.1 * 0.5 ** (n - i))
    assert lrs["head"] == pytest.approx(0.1) and lrs["classifier"] == 1.0
    assert not set(stages[:3]) & set(lrs)


# -- optimisers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_reduces_a_loss(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 2) + 0.3
    model = nn.Linear(5, 2)
    cfg = OptimConfig(name=name, lr=0.05)
    groups = [{"params": [model.weight], "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "w"},
              {"params": [model.bias], "lr": cfg.lr, "weight_decay": 0.0, "name": "b"}]
    opt = build_optimizer(groups, cfg)
    with torch.no_grad():
        before = float(nn.functional.mse_loss(model(x), y))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert float(nn.functional.mse_loss(model(x), y)) < 0.9 * before
    # Real backbone groups are accepted and keep their names and LRs.
    tiny = build_param_groups(create_model("tiny_test"), cfg, freeze=1)
    built = build_optimizer(tiny, cfg).param_groups
    assert [(g["name"], g["lr"]) for g in built] == [(g["name"], g["lr"]) for g in tiny]


def test_optimizer_specifics_and_unknown_name() -> None:
    p = [{"params": [nn.Parameter(torch.zeros(2, 2))], "lr": 0.1, "weight_decay": 0.0}]
    assert build_optimizer(p, OptimConfig(name="nesterov")).param_groups[0]["nesterov"] is True
    assert build_optimizer(p, OptimConfig(name="sgd")).param_groups[0]["momentum"] == 0.0
    adam = build_optimizer(p, OptimConfig(name="adam"))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert type(build_optimizer(p, OptimConfig(name="AdamW"))) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="'rmsprop', 'adam', 'adamw'; got 'lbfgs'"):
        OptimConfig(name="lbfgs")
    with pytest.raises(ConfigError, match="layer_decay"):
        OptimConfig(layer_decay=1.5)


def test_l1_penalty_over_decay_params_only() -> None:
    model = create_model("tiny_test")
    groups = build_param_groups(model, OptimConfig(l1=1e-3), freeze=3)
    trained = [*model.stages["head"].parameters(), *model.classifier.parameters()]
    expected = sum(float(p.detach().abs().sum()) for p in trained if p.ndim > 1)
    assert l1_penalty(groups).item() == pytest.approx(expected, rel=1e-5)
    assert l1_penalty(model, groups).item() == pytest.approx(expected, rel=1e-5)
    pen = l1_penalty(groups)
    pen.backward()
    assert model.classifier.bias.grad is None and model.classifier.weight.grad is not None


# -- schedules -----------------------------------------------------------------------------------------
def test_step_exponential_inverse_time() -> None:
    step = ScheduleConfig(name="step", step_size=3, gamma=0.5, warmup_epochs=0)
    seq = lr_sequence(step, epochs=10, steps_per_epoch=4)
    assert seq[11] == 1.0 and seq[12] == 0.5 and seq[23] == 0.5 and seq[24] == 0.25 and seq[39] == 0.125
    seq = lr_sequence(ScheduleConfig(name="exponential", gamma=0.9, warmup_epochs=0), epochs=5, steps_per_epoch=4)
    np.testing.assert_allclose(seq[[0, 4, 8, 6]], [1.0, 0.9, 0.81, 0.9 ** 1.5])
    seq = lr_sequence(ScheduleConfig(name="inverse_time", decay=0.5, warmup_epochs=0), epochs=5, steps_per_epoch=2)
    np.testing.assert_allclose(seq[[0, 2, 4, 9]], [1.0, 1 / 1.5, 1 / 2.0, 1 / (1 + 0.5 * 4.5)])


def test_cosine_endpoints_midpoint_and_floor() -> None:
    seq = lr_sequence(ScheduleConfig(name="cosine", warmup_epochs=0), epochs=10, steps_per_epoch=10)
    assert seq[0] == 1.0 and seq[50] == pytest.approx(0.5) and 0 < seq[-1] < 1e-3
    assert np.all(np.diff(seq) < 0)
    seq = lr_sequence(ScheduleConfig(name="cosine", min_lr_ratio=0.1, warmup_epochs=0), epochs=10, steps_per_epoch=10)
    assert seq[50] == pytest.approx(0.55) and seq[-1] == pytest.approx(0.1, abs=1e-3)


def test_sgdr_restarts_and_cycle_ends() -> None:
    cfg = ScheduleConfig(name="sgdr", t0=2, t_mult=2, warmup_epochs=0)
    seq = lr_sequence(cfg, epochs=14, steps_per_epoch=5)
    for restart in (2, 6):  # cycles [0,2) [2,6) [6,14)
        assert seq[restart * 5] == 1.0 and seq[restart * 5 - 1] < 0.1
    assert seq[5] == pytest.approx(0.5) and seq[20] == pytest.approx(0.5)  # cycle midpoints
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert LRSchedule(opt, cfg, epochs=14, steps_per_epoch=5).cycle_ends() == [2, 6, 14]
    assert LRSchedule(opt, cfg, epochs=13, steps_per_epoch=5).cycle_ends() == [2, 6]
    assert LRSchedule(opt, ScheduleConfig(name="sgdr", t0=3), epochs=10, steps_per_epoch=1).cycle_ends() == [3, 6, 9]


def test_linear_warmup_ramp() -> None:
    seq = lr_sequence(ScheduleConfig(name="constant", warmup_epochs=2), epochs=5, steps_per_epoch=4)
    np.testing.assert_allclose(seq[:8], np.arange(1, 9) / 8)
    assert np.all(seq[8:] == 1.0)
    cos = lr_sequence(ScheduleConfig(name="cosine", warmup_epochs=1), epochs=4, steps_per_epoch=4)
    plain = lr_sequence(ScheduleConfig(name="cosine", warmup_epochs=0), epochs=4, steps_per_epoch=4)
    np.testing.assert_allclose(cos[:4], plain[:4] * np.arange(1, 5) / 4)
    np.testing.assert_allclose(cos[4:], plain[4:])


def test_plateau_reduces_after_patience() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = LRSchedule(opt, ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.5),
                       epochs=20, steps_per_epoch=1)
    for loss, lr in ((1.0, 0.1), (0.9, 0.1), (0.95, 0.1), (0.9, 0.1), (float("nan"), 0.05), (0.8, 0.05)):
        sched.step()
        sched.epoch_end(loss)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    sched.epoch_end(None)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_groups_keep_their_ratio_and_state_dict_resumes_exactly() -> None:
    model = create_model("tiny_test")
    ocfg = OptimConfig(name="momentum", lr=0.2)
    for name in ("cosine", "sgdr", "plateau"):
        scfg = ScheduleConfig(name=name, warmup_epochs=1, t0=2)
        opt = build_optimizer(build_param_groups(model, ocfg, freeze=0), ocfg)
        sched = LRSchedule(opt, scfg, epochs=6, steps_per_epoch=3)
        history = []
        for step in range(18):
            if step == 7:
                saved = sched.state_dict()
            sched.step()
            if step % 3 == 2:
                sched.epoch_end(1.0)
            history.append([g["lr"] for g in opt.param_groups])
        assert all(h[-1] == pytest.approx(h[0] * 10) for h in history)  # classifier at 10× the backbone
        opt2 = build_optimizer(build_param_groups(model, ocfg, freeze=0), ocfg)
        resumed = LRSchedule(opt2, scfg, epochs=6, steps_per_epoch=3)
        resumed.load_state_dict(saved)
        for step in range(7, 18):
            resumed.step()
            if step % 3 == 2:
                resumed.epoch_end(1.0)
            assert [g["lr"] for g in opt2.param_groups] == history[step], (name, step)
    with pytest.raises(ConfigError, match="resume"):
        LRSchedule(opt2, ScheduleConfig(name="plateau"), epochs=7, steps_per_epoch=3).load_state_dict(saved)


def test_schedule_config_validation() -> None:
    with pytest.raises(ConfigError, match="schedule.name must be one of .*; got 'linear'"):
        ScheduleConfig(name="linear")
    with pytest.raises(ConfigError, match="t_mult"):
        ScheduleConfig(t_mult=0)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        LRSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                   ScheduleConfig(warmup_epochs=3), epochs=2, steps_per_epoch=1)
    assert math.isclose(lr_sequence(ScheduleConfig(name="constant"), 1, 1)[0], 1.0)
