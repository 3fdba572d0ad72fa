"""`headstart export`: the run as ONNX that predicts with ONNX Runtime alone, as `headstart predict` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import fit_tiny, make_class_folder

from headstart.bundle import load


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    data = make_class_folder(root / "data", 10, classes=("circle", "square", "triangle"))
    return {strategy: fit_tiny(root, data, strategy) for strategy in ("linear", "finetune")}


@pytest.mark.parametrize("strategy", ["linear", "finetune"])
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_predicts_as_headstart_does_in_a_process_without_it(runs: dict[str, Path], tmp_path: Path,
                                                                   sample_photos: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   strategy: str, fmt: str) -> None:
    out = tmp_path / "exported"
    code, stdout, err = run_cli(capsys, monkeypatch, "export", str(runs[strategy]), "--out", str(out), "--format",
                                fmt)
    assert code == 0, err
    photos = [str(p) for p in sample_photos.values()]
    expected = load(runs[strategy], backend="torch").predict_proba(photos)
    labels = json.loads((out / "labels.json").read_text())

    # The README's example, as a user runs it.
    shown = subprocess.run([sys.executable, str(out / "predict.py"), *photos], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [line.rsplit(" ", 2)[1] for line in shown] == [labels[i] for i in expected.argmax(1)]

    # The graph alone, in a process that imports onnxruntime and numpy only, on the images predict.py prepares.
    spec = f"import importlib.util as u; s = u.spec_from_file_location('p', {str(out / 'predict.py')!r})"
    images = tmp_path / "images.npy"
    subprocess.run([sys.executable, "-c", "import sys, numpy as np; sys.argv = ['p']; " + spec +
                    "; m = u.module_from_spec(s); s.loader.exec_module(m); "
                    f"np.save({str(images)!r}, np.stack([m.prepare(p) for p in {photos!r}]))"], check=True)
    run_graph = (f"import onnxruntime as ort; p = ort.InferenceSession({str(out / 'model.onnx')!r}).run(None, "
                 "{'images': x})[0]" if fmt == "onnx" else
                 f"import openvino as ov; p = ov.Core().compile_model({str(out / 'model.xml')!r}, 'CPU', "
                 "{'INFERENCE_PRECISION_HINT': 'f32'})([x])[0]")
    probe = (f"import sys, numpy as np; x = np.load({str(images)!r}); {run_graph}; "
             "assert not {'torch', 'headstart', 'PIL'} & set(sys.modules), sorted(sys.modules); "
             "np.save(sys.argv[1], p)")
    got = tmp_path / "probs.npy"
    subprocess.run([sys.executable, "-c", probe, str(got)], check=True)
    probs = np.load(got)
    assert probs.shape == expected.shape
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_export_refuses_a_folder_that_holds_something(runs: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, monkeypatch, "export", str(runs["linear"]), "--out", str(tmp_path / "x"))
    assert code == 2 and "not empty" in err and (tmp_path / "x" / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, monkeypatch, "export", str(runs["linear"]), "--out", str(tmp_path / "x"),
                           "--overwrite")
    assert code == 2 and "not an export" in err and (tmp_path / "x" / "keep.txt").read_text() == "mine"
    for inside in (runs["linear"], runs["linear"].parent):
        code, _, err = run_cli(capsys, monkeypatch, "export", str(runs["linear"]), "--out", str(inside), "--overwrite")
        assert code == 2 and "the run being exported" in err and (runs["linear"] / "metrics.json").is_file()
    code, _, err = run_cli(capsys, monkeypatch, "export", str(tmp_path / "x"), "--out", str(tmp_path / "y"))
    assert code == 2 and "holds no trained model" in err and not (tmp_path / "y").exists()
