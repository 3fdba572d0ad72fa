"""Engines: every installed backend computes what the PyTorch module computes, and exports are cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import headstart.engine as engine_mod
from headstart.engine import TorchEngine, available_backends, make_engine
from headstart.engine import onnx_export
from headstart.engine.codes import CodesModule
from headstart.errors import ConfigError
from headstart.models import POOLED, create_model

EXPORTED = [b for b in ("onnxruntime", "openvino") if b in available_backends()]
TINY = (3, 32, 32)


@pytest.fixture(scope="module")
def tiny_codes() -> CodesModule:
    backbone = create_model("tiny_test")
    return CodesModule(backbone, backbone.tap_names)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: each graph is exported once (dynamo takes seconds) and reused."""
    return tmp_path_factory.mktemp("engine-cache")


def _batch(n: int, shape: tuple[int, int, int] = TINY, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _reference(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.inference_mode():
        out = module.eval()(torch.from_numpy(x))
    return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))


def _assert_close(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...], atol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", EXPORTED)
def test_codes_all_taps_match_torch(backend: str, tiny_codes: CodesModule, shared_cache: Path) -> None:
    eng = make_engine(tiny_codes, TINY, backend=backend, cache_dir=shared_cache)
    assert eng.name == backend
    x = _batch(4)
    _assert_close(eng(x), _reference(tiny_codes, x))
    _assert_close(eng(x), TorchEngine(tiny_codes)(x))  # the torch engine (channels_last) agrees too


@pytest.mark.parametrize("backend", EXPORTED)
def test_frozen_prefix_spatial_output(backend: str, shared_cache: Path) -> None:
    stages = create_model("tiny_test").stages
    prefix = nn.Sequential(stages["stem"], stages["stage1"], stages["stage2"])
    eng = make_engine(prefix, TINY, backend=backend, cache_dir=shared_cache)
    x = _batch(2)
    (out,) = eng(x)
    assert out.shape == (2, 32, 4, 4)
    _assert_close((out,), _reference(prefix, x))


@pytest.mark.parametrize("backend", EXPORTED)
def test_dynamic_batch(backend: str, tiny_codes: CodesModule, shared_cache: Path) -> None:
    eng = make_engine(tiny_codes, TINY, backend=backend, cache_dir=shared_cache)
    for n in (3, 5, 1, 0):
        x = _batch(n, seed=n)
        _assert_close(eng(x), _reference(tiny_codes, x))
    with pytest.raises(ValueError, match="compiled for"):
        eng(_batch(2, (3, 40, 40)))


def test_export_cache_hit(tiny_codes: CodesModule, shared_cache: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    if EXPORTED:  # what make_engine exported (default exporter) is found again, not re-exported
        first = make_engine(tiny_codes, TINY, backend=EXPORTED[0], cache_dir=shared_cache).onnx_path
        mtime = first.stat().st_mtime_ns
        calls: list[int] = []
        real = onnx_export._count_outputs  # only reached on a cache miss
        monkeypatch.setattr(onnx_export, "_count_outputs", lambda *a: calls.append(1) or real(*a))
        for backend in EXPORTED:
            assert make_engine(tiny_codes, TINY, backend=backend, cache_dir=shared_cache).onnx_path == first
        assert calls == [] and first.stat().st_mtime_ns == mtime
        assert not list(shared_cache.glob("*.tmp"))
    # A different tap set, input size or weights is a different graph: a new file. (The quick tracer:
    # the keying does not depend on the exporter.)
    def export(module: nn.Module, shape: tuple[int, int, int] = TINY) -> Path:
        return onnx_export.export_onnx(module, shape, cache_dir=tmp_path, exporter="torchscript")

    base = export(tiny_codes)
    assert export(tiny_codes) == base
    assert export(CodesModule(tiny_codes.backbone, [POOLED])) != base
    assert export(tiny_codes, (3, 48, 48)) != base
    reseeded = create_model("tiny_test")
    with torch.no_grad():
        reseeded.stages["stem"][0].weight.add_(1.0)
    assert export(CodesModule(reseeded, reseeded.tap_names)) != base
    assert len(list(tmp_path.glob("*.onnx"))) == 4


def test_export_keeps_training_flag(tmp_path: Path) -> None:
    backbone = create_model("tiny_test").train()
    onnx_export.export_onnx(backbone, TINY, cache_dir=tmp_path, exporter="torchscript")
    assert backbone.training and all(m.training for m in backbone.modules())


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        make_engine(nn.Identity(), TINY, backend="tensorrt")
    for name in ("auto", "openvino", "onnxruntime", "torch"):
        assert name in str(err.value)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine_mod.importlib.util.find_spec
    monkeypatch.setattr(engine_mod.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    assert "openvino" not in available_backends()
    with pytest.raises(ConfigError, match="pip install openvino"):
        make_engine(nn.Identity(), TINY, backend="openvino")


def test_non_cpu_device_rejected_for_exported_backends() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        make_engine(nn.Identity(), TINY, backend="onnxruntime", device="cuda")


def test_auto_falls_back_with_warning(tiny_codes: CodesModule, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    for mod in ("headstart.engine.ort", "headstart.engine.openvino"):
        monkeypatch.setattr(f"{mod}.export_onnx", broken, raising=False)
    if EXPORTED:
        with pytest.warns(RuntimeWarning, match="compiler exploded"):
            eng = make_engine(tiny_codes, TINY, cache_dir=tmp_path)
    else:
        eng = make_engine(tiny_codes, TINY, cache_dir=tmp_path)
    assert eng.name == "torch"
    x = _batch(2)
    _assert_close(eng(x), _reference(tiny_codes, x))


def test_auto_picks_fastest_available(tiny_codes: CodesModule, shared_cache: Path) -> None:
    assert make_engine(tiny_codes, TINY, cache_dir=shared_cache).name == available_backends()[0]


class _PooledAndLogits(nn.Module):
    """One export serving both checks: the pooled CNN code and the ImageNet logits."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone.forward_taps(x, [POOLED])[POOLED]
        return pooled, self.backbone.classifier(pooled)


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="onnxruntime not installed")
def test_efficientnet_lite0_onnxruntime_matches_torch(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from headstart.engine.ort import OnnxRuntimeEngine

    photos = [skdata.chelsea(), skdata.coffee()]
    x = np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.BICUBIC), np.float32) for p in photos])
    x = np.ascontiguousarray(((x - 127.0) / 128.0).transpose(0, 3, 1, 2))
    module = _PooledAndLogits(create_model("efficientnet_lite0")).eval()
    want_pooled, want_logits = _reference(module, x)
    # The legacy exporter: ~3x quicker to export than dynamo, and it runs the same SAME-padding graph.
    pooled, logits = OnnxRuntimeEngine(module, (3, 224, 224), cache_dir=tmp_path, exporter="torchscript")(x)
    assert (logits.argmax(1) == want_logits.argmax(1)).all()
    assert want_logits.argmax(1)[0] in range(281, 286)  # chelsea is a cat: the weights and pixels are right
    assert np.abs(logits - want_logits).max() < 1e-3
    assert np.abs(pooled - want_pooled).max() < 1e-3
