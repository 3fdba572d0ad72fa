"""`predict --reject`: fit calibrates a max-softmax threshold on held-out images of the known classes, and
predict answers "unknown" below it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import fit_tiny, make_class_folder

from headstart.bundle import load
from headstart.fit.reject import FALSE_REJECTION, calibration, out_of_fold_max_proba
from headstart.heads import SoftmaxRegression


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reject")
    data = make_class_folder(root / "data", 12, classes=("circle", "square", "triangle"))
    return {strategy: fit_tiny(root, data, strategy) for strategy in ("linear", "finetune")} | {"data": data}


def test_the_threshold_refuses_the_target_share_of_held_out_known_images() -> None:
    scores = np.linspace(0.2, 1.0, 201)
    c = calibration(scores, "test")
    assert c["score"] == "max_softmax" and c["images"] == 201
    assert abs((scores < c["threshold"]).mean() - FALSE_REJECTION) <= 1 / 201


def test_out_of_fold_scores_come_from_heads_that_did_not_see_the_image() -> None:
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (30, 4)), rng.normal(3, 1, (30, 4))]
    y = np.r_[[0] * 30, [1] * 30]
    X[0] = [3, 3, 3, 3]  # a class-0 image that looks like class 1: only a head that never saw it is unsure of it
    oof = out_of_fold_max_proba(lambda: SoftmaxRegression(1.0), X, y)
    seen = SoftmaxRegression(1.0).fit(X, y).to_params().predict_proba(X).max(axis=1)
    assert oof.shape == (60,) and ((oof > 0.5) & (oof <= 1)).all()
    assert oof.mean() < seen.mean()


@pytest.mark.parametrize("strategy", ["linear", "finetune"])
def test_fit_records_the_threshold_and_predict_applies_it(runs: dict[str, Path], strategy: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = runs[strategy]
    m = json.loads((run / "metrics.json").read_text())
    reject = m["reject"]
    assert 0 < reject["threshold"] <= 1 and reject["images"] == (m["counts"]["val"] if strategy == "finetune"
                                                                   else m["counts"]["train"] + m["counts"]["val"])
    files = sorted(str(p) for p in (runs["data"] / "square").iterdir())[:8]
    top = load(run, backend="torch").predict_proba(files).max(axis=1)
    for flag, t in (("auto", reject["threshold"]), ("0.9", 0.9)):
        code, out, err = run_cli(capsys, monkeypatch, "predict", *files, "-m", str(run), "--json", "--reject", flag,
                                 "--backend", "torch")
        assert code == 0, err
        rows = [json.loads(x) for x in out.splitlines()]
        assert [r["unknown"] for r in rows] == [bool(p < t) for p in top]
    code, out, _ = run_cli(capsys, monkeypatch, "predict", files[0], "-m", str(run), "--reject", "0.999999",
                           "--backend", "torch")
    assert code == 0 and "unknown (top: " in out


@pytest.mark.parametrize(("args", "says"), [
    (["--reject", "2"], "between 0 and 1"),
    (["--reject", "auto", "-m", "efficientnet_lite0"], "pass one run"),
])
def test_reject_usage_errors_are_one_line(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, args: list[str], says: str) -> None:
    photo = next((runs["data"] / "circle").iterdir())
    if "-m" not in args:
        args = [*args, "-m", str(runs["linear"])]
    code, _, err = run_cli(capsys, monkeypatch, "predict", str(photo), *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
