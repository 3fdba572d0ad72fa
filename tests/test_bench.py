"""`headstart bench` (the CPU-vs-GPU table) and the bf16 path the GPU rows use, checked on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import make_class_folder

from headstart.bench import run_bench
from headstart.engine import make_engine
from headstart.engine.codes import CodesModule
from headstart.features import FeatureCache, extract_codes
from headstart.features.cache import extractor_id, extractor_meta
from headstart.models import POOLED, create_model


def test_bench_json_has_a_cpu_row_per_model(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    images = make_class_folder(tmp_path / "img", n_per_class=5)
    code, out, err = run_cli(capsys, monkeypatch, "bench", "--models", "tiny_test", "--device", "cpu", "--json",
                             "--warmup", "0", "--iters", "1", "--freeze", "0,2", "--images", str(images))
    assert code == 0, err
    report = json.loads(out)
    (row,) = report["rows"]
    assert row["model"] == "tiny_test" and row["device"] == "cpu" and row["precision"] == "fp32"
    assert row["batch_size"] == 32 and row["speedup"] is None  # no GPU row to compare
    assert set(row["finetune_img_s"]) == {"K=0", "K=2"}
    assert min(row["forward_ms"], row["train_ms"], row["extract_img_s"], *row["finetune_img_s"].values()) > 0
    assert row["end_to_end_img_s"] > 0 and report["iters"] == 1


def test_bench_table_and_refusals(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(capsys, monkeypatch, "bench", "--models", "tiny_test", "--device", "cpu",
                             "--warmup", "0", "--iters", "1")
    assert code == 0, err
    assert "tiny_test" in out and "fp32" in out and "speed-up" in " ".join(out.split())
    code, _, err = run_cli(capsys, monkeypatch, "bench", "--models", "resnet5")
    assert code == 2 and "Known models" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, monkeypatch, "bench", "--device", "cuda")
        assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_frozen_k_is_capped_at_the_number_of_stages() -> None:
    (row,) = run_bench(["tiny_test"], ["cpu"], freeze=(9,), warmup=0, iters=1)
    assert list(row.finetune_img_s) == ["K=4"]  # tiny_test has 4 stages: all frozen, the head trains


def test_bf16_codes_agree_with_fp32_and_are_cached_apart(tmp_path: Path) -> None:
    """The GPU path extracts under bf16 autocast; checked here on CPU (which runs bf16 too): the codes keep a
    cosine similarity >= 0.99 to fp32's, and never share a cache entry with them."""
    model = create_model("efficientnet_lite0")
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    module = CodesModule(model, [POOLED, "stage4"])
    fp32 = make_engine(module, (3, 224, 224), backend="torch")(x)
    bf16 = make_engine(module, (3, 224, 224), backend="torch", precision="bf16")(x)
    for a, b in zip(fp32, bf16, strict=True):
        assert b.dtype == np.float32
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.99
        assert np.abs(a - b).max() > 1e-4  # really computed in another precision
    assert extractor_id(model, POOLED, "bf16") != extractor_id(model, POOLED)
    assert "precision" not in extractor_meta(model, POOLED)  # fp32 keys as before: existing caches stay valid


def test_a_fast_cpu_engine_refuses_bf16() -> None:
    from headstart.errors import ConfigError

    with pytest.raises(ConfigError, match="fp32 only"):
        make_engine(CodesModule(create_model("tiny_test"), [POOLED]), (3, 32, 32), backend="onnxruntime",
                    precision="bf16")


def test_codes_of_another_precision_are_never_served_from_fp32_entries(tmp_path: Path) -> None:
    images = make_class_folder(tmp_path / "img", n_per_class=3)
    paths, cache = sorted(images.rglob("*.png")), FeatureCache(tmp_path / "cache")
    model = create_model("tiny_test", pretrained=False)
    model.weights_id = "fixed-for-the-test"  # cacheable (random weights are not cached)
    fp32 = extract_codes(paths, model, [POOLED], cache=cache, progress=False, backend="torch")
    bf16 = extract_codes(paths, model, [POOLED], cache=cache, progress=False, backend="torch", precision="bf16")
    assert fp32.n_computed == len(paths) and bf16.n_cached == 0 and bf16.n_computed == len(paths)
    again = extract_codes(paths, model, [POOLED], cache=cache, progress=False, backend="torch", precision="bf16")
    assert again.n_cached == len(paths)
    np.testing.assert_array_equal(again.codes[POOLED], bf16.codes[POOLED])
