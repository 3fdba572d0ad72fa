from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.bundle import load
from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig
from headstart.fit import fit


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data", n_per_class=16, classes=("a", "b", "c"))


def _cfg(data: Path, out: Path, cache: Path, **ft: object) -> FitConfig:
    return FitConfig(out=str(out), strategy="finetune", model="tiny_test", data=DataConfig(path=str(data)),
                     engine=EngineConfig(backend="torch", cache_dir=str(cache), batch_size=8),
                     finetune=replace(FinetuneConfig(epochs=2, freeze=1), **ft))


def test_finetune_writes_run_and_loadable_bundle(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    m = fit(_cfg(data, out, tmp_path / "cache", ema=0.9, tta="flip"), progress=False)
    assert m["strategy"] == "finetune" and m["freeze"] == 1 and m["test"]["tta"] == "flip"
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == m["test"]["accuracy"]
    curves = [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curves] == [1, 2] and (out / "curves.svg").read_text().startswith("<svg")
    assert m["training"]["diagnosis"]
    # The bundle reproduces the reported test predictions (TTA off both sides to compare like with like).
    m2 = fit(_cfg(data, tmp_path / "run2", tmp_path / "cache"), progress=False)
    model = load(tmp_path / "run2", backend="torch")
    files = [data / r for r, split in _split_files(tmp_path / "run2") if split == "test"]
    probs = model.predict_proba(files)
    labels = np.array([["a", "b", "c"].index(f.parent.name) for f in files])
    assert (probs.argmax(1) == labels).mean() == pytest.approx(m2["test"]["accuracy"])


def _split_files(run: Path) -> list[tuple[str, str]]:
    rec = json.loads((run / "splits.json").read_text())
    return [(path, split) for split, rows in rec["splits"].items() for path in rows["paths"]]


def test_same_seed_same_metrics(data: Path, tmp_path: Path) -> None:
    a = fit(_cfg(data, tmp_path / "a", tmp_path / "cache"), progress=False)
    b = fit(_cfg(data, tmp_path / "b", tmp_path / "cache"), progress=False)
    for m in (a, b):
        m.pop("timing")
    assert a == b


def test_resume_flag_continues_a_run(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["fit", str(data), "--strategy", "finetune", "--model", "tiny_test", "--epochs", "2", "--freeze", "1",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--backend", "torch", "-q"]
    code, stdout, err = run_cli(capsys, monkeypatch, *args)
    assert code == 0, err
    code, stdout, err = run_cli(capsys, monkeypatch, "fit", "--resume", str(out), "-q")
    assert code == 0, err
    assert len((out / "curves.jsonl").read_text().splitlines()) == 2  # nothing re-trained, nothing duplicated
