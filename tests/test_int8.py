"""int8 extraction (OpenVINO + NNCF post-training quantisation), on the tiny backbone: its codes follow fp32's,
are cached under their calibration set, and the quantised model is built once per calibration set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder

from headstart.engine import make_engine
from headstart.engine.codes import CodesModule
from headstart.errors import ConfigError
from headstart.features import FeatureCache, extract_codes
from headstart.models import POOLED, create_model

nncf = pytest.importorskip("nncf")  # the int8 extra (make test installs it)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = make_class_folder(tmp_path_factory.mktemp("int8") / "data", n_per_class=20, size=48)
    return sorted(root.rglob("*.png"))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_codes_follow_fp32_and_are_cached_per_calibration_set(paths: list[Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "engines"))
    model, cache = create_model("tiny_test"), FeatureCache(tmp_path / "codes")
    fp32 = extract_codes(paths, model, [POOLED], cache=cache, progress=False)
    int8 = extract_codes(paths, model, [POOLED], cache=cache, progress=False, precision="int8",
                         calibrate_on=paths[:20])
    assert int8.n_cached == 0 and int8.n_computed == len(paths)  # never served fp32's entries
    assert _cos(fp32.codes[POOLED], int8.codes[POOLED]).mean() > 0.95
    scale = np.abs(fp32.codes[POOLED]).max()
    assert np.abs(fp32.codes[POOLED] - int8.codes[POOLED]).max() > 5e-3 * scale  # really quantised

    calls = []
    real = nncf.quantize
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = extract_codes(paths, model, [POOLED], cache=FeatureCache(tmp_path / "fresh"), progress=False,
                          precision="int8", calibrate_on=paths[:20])
    assert calls == []  # the quantised model of this calibration set is read back, not rebuilt
    np.testing.assert_array_equal(again.codes[POOLED], int8.codes[POOLED])
    hit = extract_codes(paths, model, [POOLED], cache=cache, progress=False, precision="int8",
                        calibrate_on=paths[:20])
    assert hit.n_cached == len(paths)
    other = extract_codes(paths, model, [POOLED], cache=cache, progress=False, precision="int8",
                          calibrate_on=paths[20:])
    assert other.n_cached == 0 and calls == [1]  # another calibration set: other codes, another model


def test_int8_needs_openvino_on_the_cpu() -> None:
    module = CodesModule(create_model("tiny_test"), [POOLED])
    with pytest.raises(ConfigError, match="int8 runs on OpenVINO"):
        make_engine(module, (3, 32, 32), backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        from headstart.engine import TorchEngine

        TorchEngine(module, precision="int8")
