"""Two classes: a binary probe (one logit row) must become a two-row softmax head that predicts the same."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from conftest import make_class_folder
from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig, LinearConfig
from headstart.fit import fit
from headstart.heads.params import LinearParams


def test_binary_logistic_head_as_softmax_layer_gives_the_same_probabilities() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 2, 60)
    lr = LogisticRegression().fit(X, y)
    assert lr.coef_.shape == (1, 5)
    W, b = LinearParams(lr.coef_, lr.intercept_).softmax_layer()
    probs = torch.softmax(torch.as_tensor(X @ W.T + b), dim=1).numpy()
    np.testing.assert_allclose(probs, lr.predict_proba(X), atol=1e-12)
    three = LinearParams(rng.normal(size=(3, 5)), rng.normal(size=3))
    assert three.softmax_layer()[0] is not None and three.softmax_layer()[0].shape == (3, 5)


def test_two_class_lp_ft_start_scores_like_the_probe(tmp_path: Path) -> None:
    # Harder than separable: many images, noisy, so that a useless head (0.5 everywhere) cannot pass.
    data = make_class_folder(tmp_path / "data", n_per_class=40, classes=("circle", "square"))
    common = dict(model="tiny_test", data=DataConfig(path=str(data)),
                  engine=EngineConfig(backend="torch", cache_dir=str(tmp_path / "cache"), batch_size=8))
    probe = fit(FitConfig(out=str(tmp_path / "probe"), strategy="linear",
                          linear=LinearConfig(layer="pooled", head="softmax"), **common), progress=False)
    # WiSE-FT with alpha 0 keeps exactly the LP-FT start: the pretrained network + the probe as its head.
    start = fit(FitConfig(out=str(tmp_path / "start"), strategy="finetune",
                          finetune=replace(FinetuneConfig(), freeze=1, epochs=1, wise_ft=0.0), **common),
                progress=False)
    assert start["probe_C"] == probe["C"]
    n_val = start["counts"]["val"]
    assert abs(start["val"]["accuracy"] - probe["val"]["accuracy"]) * n_val <= 1 + 1e-9
    assert start["val"]["accuracy"] > 0.75  # the useless head scored 0.5
