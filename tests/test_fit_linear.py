from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.bundle import load
from headstart.config import DataConfig, EngineConfig, FitConfig, LinearConfig
from headstart.fit import fit


def _cfg(data: Path, out: Path, cache: Path, **linear: object) -> FitConfig:
    return FitConfig(out=str(out), strategy="linear", model="tiny_test", data=DataConfig(path=str(data)),
                     engine=EngineConfig(backend="torch", cache_dir=str(cache)), linear=LinearConfig(**linear))


def test_metrics_contract_and_bundle_round_trip(split_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    m = fit(_cfg(split_folder, out, tmp_path / "cache", layer="auto"), progress=False)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for key in ("strategy", "model", "layer", "classes", "val", "test", "timing"):
        assert key in on_disk
    assert on_disk["classes"] == ["a", "b", "c"]
    for key in ("accuracy", "balanced_accuracy", "per_class", "confusion_matrix"):
        assert key in on_disk["test"]
    assert set(on_disk["timing"]) >= {"extract_s", "fit_s"}
    assert on_disk["near_duplicates_across_splits"] is None  # tiny_test: no calibrated threshold, not checked
    assert np.asarray(on_disk["test"]["confusion_matrix"]).sum() == 18 == on_disk["counts"]["test"]
    assert on_disk["test"]["accuracy"] > 0.8  # the classes are easy: a broken pipeline would be near 1/3

    model = load(out, backend="torch")
    test_files = sorted((split_folder / "test").rglob("*.png"))
    probs = model.predict_proba(test_files)
    assert probs.shape == (18, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    labels = np.array([["a", "b", "c"].index(p.parent.name) for p in test_files])
    assert (probs.argmax(1) == labels).mean() == pytest.approx(on_disk["test"]["accuracy"])
    top = model.predict([test_files[0]], top_k=2).predictions[0].top
    assert top[0][0] == "a" and len(top) == 2


def test_config_file_reproduces_and_flags_override(split_folder: Path, tmp_path: Path) -> None:
    first = fit(_cfg(split_folder, tmp_path / "r1", tmp_path / "cache", layer="stage2"), progress=False)
    from headstart.cli_fit import fit_config

    cfg = fit_config(tmp_path / "r1" / "config.toml", {"out": str(tmp_path / "r2")})
    assert cfg.linear.layer == "stage2" and cfg.model == "tiny_test"
    second = fit(cfg, progress=False)
    first.pop("timing"), second.pop("timing")
    assert first == second
    assert fit_config(tmp_path / "r1" / "config.toml", {"linear": {"layer": "pooled"}}).linear.layer == "pooled"


def test_reported_split_never_influences_choices(split_folder: Path, tmp_path: Path) -> None:
    """Replace the test split by different images with scrambled labels: every choice must stay the same."""
    m1 = fit(_cfg(split_folder, tmp_path / "r1", tmp_path / "cache", layer="auto"), progress=False)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(split_folder / "train", poisoned / "train")
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        d = poisoned / "test" / cls
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"noise{i}.png")
    m2 = fit(_cfg(poisoned, tmp_path / "r2", tmp_path / "cache", layer="auto"), progress=False)
    assert (m1["layer"], m1["C"], m1["selection"], m1["val"]) == (m2["layer"], m2["C"], m2["selection"], m2["val"])
    assert m1["test"]["accuracy"] != m2["test"]["accuracy"]


def test_cross_validation_when_no_val(image_folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(image_folder, tmp_path / "run", tmp_path / "cache", layer="pooled", cv_folds=3)
    cfg = FitConfig(**{**cfg.__dict__, "data": DataConfig(path=str(image_folder), val_fraction=0.0)})
    m = fit(cfg, progress=False)
    assert "3-fold cross-validation" in m["val"]["protocol"] and m["counts"]["val"] == 0


@pytest.mark.parametrize("case", ["empty_class", "single_class", "too_few_for_folds", "missing", "unknown_tap",
                                  "unknown_model"])
def test_bad_input_is_one_actionable_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_class_folder(tmp_path / "data", n_per_class=8)
    args = ["fit", str(data), "--out", str(tmp_path / "run"), "--model", "tiny_test", "-q",
            "--cache-dir", str(tmp_path / "cache")]
    expect = {"empty_class": "empty", "single_class": "2 classes", "too_few_for_folds": "fold",
              "missing": "does not exist", "unknown_tap": "linear.layer must be auto or taps of tiny_test",
              "unknown_model": "Known models"}[case]
    if case == "empty_class":
        (data / "empty").mkdir()
    elif case == "single_class":
        shutil.rmtree(data / "square")
    elif case == "too_few_for_folds":
        args += ["--val-fraction", "0", "--cv-folds", "10"]
    elif case == "missing":
        args[1] = str(tmp_path / "nope")
    elif case == "unknown_tap":
        args += ["--layer", "stage9"]
    elif case == "unknown_model":
        args[args.index("tiny_test")] = "resnet50"
    code, _, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect.lower() in err.lower(), err


def test_bundle_keeps_fortran_ordered_coefficients(tmp_path: Path) -> None:
    """safetensors writes raw buffers: a Fortran-ordered coef_ (as sklearn can return) must survive."""
    from headstart.bundle import HEAD, save_linear_bundle
    from headstart.heads.params import LinearParams
    from headstart.models import PreprocessSpec
    from safetensors.numpy import load_file

    coef = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    save_linear_bundle(tmp_path, model="tiny_test", weights_id="tiny-seed0", taps=["pooled"],
                       spec=PreprocessSpec(32), classes=["a", "b", "c"], head=LinearParams(coef, np.zeros(3)))
    assert np.array_equal(load_file(str(tmp_path / HEAD))["coef"], coef)
