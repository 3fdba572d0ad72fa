"""An ensemble of runs: `headstart predict -m RUN -m RUN` and `headstart evaluate RUN RUN`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.bundle import load
from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig, LinearConfig
from headstart.ensemble import evaluate_runs, load_ensemble
from headstart.errors import ConfigError
from headstart.fit import fit

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fine-tuned runs (different frozen depth) and a linear run, all on the same split."""
    root = tmp_path_factory.mktemp("ens")
    data = make_class_folder(root / "data", n_per_class=16, classes=CLASSES)
    engine = EngineConfig(backend="torch", cache_dir=str(root / "cache"), batch_size=8)
    base = FitConfig(model="tiny_test", data=DataConfig(path=str(data)), engine=engine)
    out = {"data": data}
    for name, freeze in (("ft1", 1), ("ft0", 0)):
        out[name] = root / name
        fit(replace(base, out=str(out[name]), strategy="finetune",
                    finetune=FinetuneConfig(epochs=2, freeze=freeze)), progress=False)
    out["lin"] = root / "lin"
    fit(replace(base, out=str(out["lin"]), strategy="linear", linear=LinearConfig(layer="pooled", C=1.0)),
        progress=False)
    return out


def _test_files(run: Path, data: Path) -> tuple[list[Path], np.ndarray]:
    rec = json.loads((run / "splits.json").read_text())["splits"]["test"]
    files = [data / p for p in rec["paths"]]
    return files, np.array([CLASSES.index(f.parent.name) for f in files])


def test_evaluate_runs_reports_each_run_and_their_mean(runs: dict[str, Path]) -> None:
    names = ["ft1", "ft0", "lin"]
    result = evaluate_runs([runs[n] for n in names], backend="torch")
    files, labels = _test_files(runs["ft1"], runs["data"])
    assert result["n"] == len(files) and result["classes"] == list(CLASSES)
    probs = [load(runs[n], backend="torch").predict_proba(files) for n in names]
    for name, member, p in zip(names, result["runs"], probs):
        # Each member's figure is the one its own fit reported on the same test split.
        reported = json.loads((runs[name] / "metrics.json").read_text())["test"]["accuracy"]
        assert member["accuracy"] == pytest.approx(reported)
        assert member["accuracy"] == pytest.approx((p.argmax(1) == labels).mean())
    mean = np.mean(probs, axis=0)
    assert result["ensemble"]["accuracy"] == pytest.approx((mean.argmax(1) == labels).mean())
    assert result["ensemble"]["confusion_matrix"] != [[0] * 3] * 3


def test_ensemble_predictor_averages_probabilities(runs: dict[str, Path], tmp_path: Path) -> None:
    files, _ = _test_files(runs["ft1"], runs["data"])
    files = files + [tmp_path / "broken.jpg"]
    files[-1].write_bytes(b"not a jpeg")
    ens = load_ensemble([runs["ft1"], runs["lin"]], backend="torch")
    with pytest.warns(UserWarning, match="could not be decoded"):
        probs, idx, failures = ens.predict_proba(files)
    assert idx == list(range(len(files) - 1)) and [f.path for f in failures] == [files[-1]]
    single = [load(runs[n], backend="torch").predict_proba(files[:-1]) for n in ("ft1", "lin")]
    np.testing.assert_allclose(probs, (single[0] + single[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_cli_predict_with_several_runs_and_evaluate(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files, _ = _test_files(runs["ft1"], runs["data"])
    code, out, err = run_cli(capsys, monkeypatch, "predict", str(files[0]), "--json", "-k", "3", "--backend", "torch",
                             "-m", str(runs["ft1"]), "-m", str(runs["ft0"]))
    assert code == 0, err
    top = {t["label"]: t["prob"] for t in json.loads(out)["top"]}
    single = [load(runs[n], backend="torch").predict_proba(files[:1])[0] for n in ("ft1", "ft0")]
    expected = (single[0] + single[1]) / 2
    assert top == pytest.approx({c: float(expected[i]) for i, c in enumerate(CLASSES)}, abs=1e-5)

    code, out, err = run_cli(capsys, monkeypatch, "evaluate", str(runs["ft1"]), str(runs["ft0"]), "--tta", "flip",
                             "--backend", "torch")
    assert code == 0, err
    assert "ensemble of 2" in out and "tta flip" in out


def test_ensemble_refuses_mismatched_classes_and_tta_on_linear(runs: dict[str, Path], tmp_path: Path) -> None:
    other = make_class_folder(tmp_path / "other", n_per_class=8, classes=("x", "y"))
    run = tmp_path / "xy"
    fit(FitConfig(out=str(run), model="tiny_test", data=DataConfig(path=str(other)),
                  engine=EngineConfig(backend="torch", cache_dir=str(tmp_path / "cache"), batch_size=8),
                  linear=LinearConfig(layer="pooled", C=1.0)), progress=False)
    with pytest.raises(ConfigError, match="other classes"):
        load_ensemble([runs["lin"], run], backend="torch")
    with pytest.raises(ConfigError, match="fine-tuned runs"):
        evaluate_runs([runs["lin"]], tta="flip", backend="torch")


def test_evaluate_warns_when_runs_used_other_splits(runs: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "ft_other_split"
    fit(FitConfig(out=str(moved), strategy="finetune", model="tiny_test",
                  data=DataConfig(path=str(runs["data"]), seed=1),
                  engine=EngineConfig(backend="torch", cache_dir=str(tmp_path / "cache"), batch_size=8),
                  finetune=FinetuneConfig(epochs=1, freeze=1)), progress=False)
    with pytest.warns(UserWarning, match="another test split"):
        evaluate_runs([runs["ft1"], moved], backend="torch")


def test_evaluate_errors_are_one_line_and_name_the_fix(runs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", str(tmp_path))
    assert code == 2 and "no splits.json" in err
    moved = tmp_path / "moved_run"
    moved.mkdir()
    rec = json.loads((runs["ft1"] / "splits.json").read_text()) | {"root": str(tmp_path / "gone")}
    (moved / "splits.json").write_text(json.dumps(rec))
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", str(moved), "--backend", "torch")
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1
