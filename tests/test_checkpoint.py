"""Checkpoints: exact round trip of model, Adam moments, RNG states; atomic commit; no pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from headstart.models import create_model
from headstart.train import OptimConfig, build_optimizer, build_param_groups
from headstart.train.checkpoint import TrainState, capture_rng, decode, encode, load_checkpoint, restore_rng, \
    save_checkpoint


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("tiny_test", num_classes=3)
    opt = build_optimizer(build_param_groups(model, OptimConfig(name="adam"), freeze=1), OptimConfig(name="adam"))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_adam_moments_and_rng_exactly(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    gen = np.random.default_rng(11)
    gen.random(5)
    random.random()
    np.random.seed(3)
    state = TrainState(epoch=2, step=6, model=model.state_dict(), optimizer=opt.state_dict(),
                       rng=capture_rng(gen), freeze={"k": 1, "freeze_bn": False}, config_hash="abc",
                       best_metric=0.5, best_epoch=2, history=[{"epoch": 1, "val_loss": float("inf")}])
    expected = (random.random(), np.random.rand(), torch.rand(3), gen.random())

    save_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path)
    model2, opt2 = _trained_optimizer()
    torch.manual_seed(123)  # scramble everything the checkpoint must restore
    random.seed(5)
    np.random.seed(5)
    gen2 = np.random.default_rng(99)
    model2.load_state_dict(back.model)
    opt2.load_state_dict(back.optimizer)
    restore_rng(back.rng, gen2)

    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2]) and gen2.random() == expected[3]
    ours, theirs = opt.state_dict(), opt2.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for i, s in ours["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s[key], theirs["state"][i][key]), (i, key)
    assert (back.epoch, back.step, back.freeze, back.config_hash) == (2, 6, {"k": 1, "freeze_bn": False}, "abc")
    assert back.history[0]["val_loss"] == float("inf")


def test_commit_marker_and_no_pickle(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    for epoch in (1, 2):
        save_checkpoint(tmp_path, TrainState(epoch=epoch, step=epoch, model=model.state_dict(),
                                             optimizer=opt.state_dict()))
    last = tmp_path / "last"
    assert sorted(p.name for p in last.iterdir()) == ["state.json", "tensors-e0002.safetensors"]
    # A crash after the new tensors file but before state.json: the committed checkpoint still loads.
    (last / "tensors-e0003.safetensors").write_bytes(b"half-written")
    assert load_checkpoint(tmp_path).epoch == 2
    for f in tmp_path.rglob("*"):
        assert f.is_dir() or f.suffix in (".json", ".safetensors")
    json.loads((last / "state.json").read_text())  # plain JSON


def test_encode_decode_is_exact_for_nested_types() -> None:
    obj = {"ints": {0: torch.ones(2), 5: (1, 2.5, None)}, "arr": np.arange(4, dtype=np.uint32).reshape(2, 2),
           "t": ("a", [torch.tensor(3, dtype=torch.int64)]), "nan": float("nan")}
    tensors: dict[str, torch.Tensor] = {}
    back = decode(json.loads(json.dumps(encode(obj, tensors, "x"))), tensors)
    assert set(back["ints"]) == {0, 5} and back["ints"][5] == (1, 2.5, None)
    assert torch.equal(back["ints"][0], torch.ones(2))
    assert back["arr"].dtype == np.uint32 and (back["arr"] == obj["arr"]).all()
    assert back["t"][0] == "a" and back["t"][1][0].item() == 3 and back["nan"] != back["nan"]
