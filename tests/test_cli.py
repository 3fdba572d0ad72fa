from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run_cli

CATS = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE = {"cup", "espresso", "coffee mug"}


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["predict", "--help"], ["extract", "--help"],
                                  ["cache", "--help"], ["demo", "--help"]])
def test_help_is_complete(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "Usage: headstart" in out
    if args == ["--help"]:
        for cmd in ("models", "predict", "fit", "extract", "demo", "cache"):
            assert cmd in out
    if args[0] == "fit":
        for opt in ("--strategy", "--layer", "--freeze", "--config", "--resume", "--tta", "--ema"):
            assert opt in out
        # "[default: x]" is rich markup unless escaped: it vanished from the help once, leaving "text ."
        for default in ("[default: auto]", "[default: efficientnet_lite0]", "[default: 5]"):
            assert default in " ".join(out.replace("│", " ").split()), default


def test_models_lists_zoo_with_weights_status(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_cli(capsys, monkeypatch, "models")
    assert code == 0
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tiny_test"):
        assert name in out
    assert "4.65M" in out and "75.1%" in out and "installed" in out


def test_predict_json_on_real_photos(sample_photos: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = sample_photos["chelsea"].parent
    (folder / "notes.txt").write_text("not an image, ignored when scanning a folder")
    code, out, err = run_cli(capsys, monkeypatch, "predict", str(folder), "--json", "--top-k", "5")
    assert code == 0, err
    rows = {Path(r["path"]).stem: r["top"] for r in map(json.loads, out.strip().splitlines())}
    assert set(rows) == {"chelsea", "coffee"}
    assert rows["chelsea"][0]["label"] in CATS
    assert COFFEE & {t["label"] for t in rows["coffee"]}
    for top in rows.values():  # the five largest of 1000 probabilities: descending, in (0, 1], summing to <= 1
        probs = [x["prob"] for x in top]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1 + 1e-6
    code, out, err = run_cli(capsys, monkeypatch, "predict", str(sample_photos["chelsea"]), "--json", "--top-k", "1000")
    (row,) = map(json.loads, out.strip().splitlines())
    assert code == 0 and len(row["top"]) == 1000  # all of them: a distribution
    assert sum(x["prob"] for x in row["top"]) == pytest.approx(1.0, abs=1e-4)
    assert row["top"][0] == rows["chelsea"][0]


def test_predict_reports_corrupt_file_and_continues(sample_photos: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(sample_photos["chelsea"].read_bytes()[:300])
    code, out, err = run_cli(capsys, monkeypatch, "predict", str(bad), str(sample_photos["coffee"]), "--json",
                             "--backend", "torch")
    assert code == 0
    assert "broken.jpg" in err and "warning" in err
    assert [Path(json.loads(x)["path"]).name for x in out.strip().splitlines()] == ["coffee.jpg"]


def test_unknown_model_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   sample_photos: dict[str, Path]) -> None:
    code, _, err = run_cli(capsys, monkeypatch, "predict", str(sample_photos["coffee"]), "--model", "resnet50")
    assert code == 2 and err.count("\n") == 1 and "efficientnet_lite0" in err


def test_the_cli_and_a_config_load_without_torch_sklearn_or_onnx() -> None:
    """`headstart --help` and reading a configuration stay light (a quarter of a second, not three): the heavy
    libraries load when a command needs them. A module-level import added in the wrong place fails this."""
    import subprocess
    import sys

    code = ("import sys; from headstart.cli import app; from headstart.config import FitConfig; FitConfig(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'onnx', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
