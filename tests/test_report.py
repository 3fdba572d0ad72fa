"""report.html, rendered in a real browser (Debian's chromium, driven by Playwright): no console errors, every
image loads, the page is not blank, and its numbers are the run's."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import make_class_folder
from PIL import Image

from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig
from headstart.fit import fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    data = make_class_folder(root / "data", 10, classes=("circle", "square", "triangle"))
    (data / "circle" / "broken.jpg").write_bytes(b"not an image")  # listed under Data
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_REPORT", "1")  # conftest turns it off for the other tests
        for strategy in ("linear", "finetune", "auto"):
            out[strategy] = _fit(root, data, strategy)
    return out


def _fit(root: Path, data: Path, strategy: str) -> Path:
    cfg = FitConfig(out=str(root / strategy), strategy=strategy, model="tiny_test", data=DataConfig(path=str(data)),
                    engine=EngineConfig(backend="torch", cache_dir=str(root / "cache"), batch_size=8),
                    finetune=FinetuneConfig(epochs=2, freeze=1))
    with pytest.warns(UserWarning, match="could not be decoded"):
        fit(cfg, progress=False)
    return root / strategy


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.parametrize("strategy", ["linear", "finetune", "auto"])
def test_report_renders_in_a_browser_with_the_runs_numbers(runs: dict[str, Path], browser, strategy: str) -> None:  # noqa: ANN001
    run = runs[strategy]
    metrics = json.loads((run / "metrics.json").read_text())
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network: {r.url}") if not r.url.startswith(("file:", "data:"))
            else None)
    page.goto((run / "report.html").as_uri())
    assert errors == []
    images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert images and all(images)
    # every class's thumbnails, the confusion matrix cells and the charts are there
    confusion = page.evaluate("Array.from(document.querySelectorAll('#confusion tr')).slice(1).map("
                              "r => Array.from(r.querySelectorAll('td')).slice(1).map(c => Number(c.innerText)))")
    assert confusion == metrics["test"]["confusion_matrix"]
    counts = page.evaluate("Array.from(document.querySelectorAll('#counts tr')).slice(1).map("
                           "r => Array.from(r.querySelectorAll('td')).slice(1).map(c => Number(c.innerText)))")
    assert dict(zip(("train", "val", "test"), np.asarray(counts).sum(axis=0).tolist())) == metrics["counts"]
    text = page.inner_text("body")
    assert f"{100 * metrics['test']['accuracy']:.1f}%" in text and "broken.jpg" in text
    assert ("How it was chosen" in text) == (strategy == "auto")
    assert ("Learning curves" in text) == (metrics["strategy"] == "finetune")
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    assert len(shot.getcolors(maxcolors=1 << 20) or []) > 200  # charts and photos, not a blank page
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the phone
    page.close()


def test_no_report_when_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_class_folder(tmp_path / "data", 8)
    monkeypatch.setenv("HEADSTART_REPORT", "0")
    cfg = FitConfig(out=str(tmp_path / "run"), strategy="linear", model="tiny_test", data=DataConfig(path=str(data)),
                    engine=EngineConfig(backend="torch", cache_dir=str(tmp_path / "cache")))
    fit(cfg, progress=False)
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / "report.html").exists()
    assert "report.html" not in (tmp_path / "run" / "summary.txt").read_text()  # it names only what is there


def test_headstart_report_draws_it_again(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    page = runs["linear"] / "report.html"
    assert f"report: {page}" in (runs["linear"] / "summary.txt").read_text()
    before = page.read_text()
    page.unlink()
    code, out, err = run_cli(capsys, monkeypatch, "report", str(runs["linear"]))
    assert code == 0, err
    assert page.read_text() == before  # the same run, the same page
    code, _, err = run_cli(capsys, monkeypatch, "report", str(runs["linear"] / "bundle"))
    assert code == 2 and err.startswith("error:")


def test_a_candidate_cut_by_the_budget_says_so_in_the_summary_and_the_page(tmp_path: Path) -> None:
    from headstart.evaluate.html_report import _choice
    from headstart.evaluate.report import _auto_lines

    plan = {"summary": "large and far -> fine-tune", "evidence": ["size: large"]}
    cut = {"role": "plan", "what": "fine-tune with the first 3 of 9 stages frozen", "ran": True, "dir": "candidates/ft",
           "epochs": {"run_with": 3, "advised": 28}, "val_accuracy": 0.69, "val_se": 0.03, "val_protocol": "split",
           "val_images": 216, "cost_s": 139.0, "estimated_s": 170.0}
    whole = dict(cut, role="runner-up", epochs={"run_with": 28, "advised": 28}, dir="candidates/ft2")
    auto = {"plan": plan, "candidates": [cut, whole], "winner": "finetune", "winner_role": "runner-up", "why": "-"}
    for text in ("\n".join(_auto_lines(auto, tmp_path)), _choice(tmp_path, {"auto": auto})):
        assert text.count("3 epochs (of 28 advised, cut to fit the budget)") == 1
        assert text.count("(of 28 advised") == 1 and "frozen, 28 epochs" in text  # the whole one is not "cut"
