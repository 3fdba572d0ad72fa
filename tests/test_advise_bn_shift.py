"""BatchNorm input statistics against the stored running statistics: zero where the running statistics are the
data's own, large where the data is shifted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from conftest import make_class_folder
from headstart.advise.bn_shift import bn_shift
from headstart.data.decode import decode_image
from headstart.data.transforms import EvalTransform
from headstart.models import create_model


def test_bn_shift_is_zero_on_the_running_statistics_own_data_and_grows_with_a_shift(tmp_path: Path) -> None:
    paths = sorted(make_class_folder(tmp_path / "data", n_per_class=10, classes=("a", "b")).rglob("*.png"))
    model = create_model("tiny_test")
    # Make the running statistics exactly these images': one train-mode batch, cumulative averages.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    t = EvalTransform(model.spec)
    model.train()
    with torch.no_grad():
        model.forward_features(torch.from_numpy(np.stack([t(decode_image(p)) for p in paths])))
    own = bn_shift(model, paths, batch_size=7)  # batches of any size: the moments add up
    assert [r["stage"] for r in own] == list(model.stages.keys())
    assert sum(r["layers"] for r in own) == len(bns)
    assert max(r["kl"] for r in own) < 1e-3, own

    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for p in paths:
        ImageOps.invert(Image.open(p).convert("RGB")).save(inverted / p.name)
    shifted = bn_shift(model, sorted(inverted.glob("*.png")))
    assert shifted[0]["kl"] > 0.1 and shifted[0]["kl"] > 100 * own[0]["kl"], shifted
    assert model.training  # the mode it was called in is restored
