"""Resource bounds: --batch-size auto backs off on out-of-memory instead of dying, and records what it used."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import headstart.features.extract as extract_module
from headstart.engine.base import AUTO_BATCH_START, AutoBatchEngine, is_out_of_memory

from .helpers import LINEAR, TINY, make_class_folder, metrics, run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("resources") / "data", 40)  # 80 images: > AUTO_BATCH_START


def _memory_limited(monkeypatch: pytest.MonkeyPatch, limit: int, error: BaseException) -> list[int]:
    """The engine fails with ``error`` on batches larger than ``limit`` images; returns the sizes it was given."""
    make, sizes = extract_module._make_engine, []

    def limited(*args: object, **kwargs: object) -> object:
        engine = make(*args, **kwargs)

        def run_batch(batch: np.ndarray) -> tuple[np.ndarray, ...]:
            sizes.append(len(batch))
            if len(batch) > limit:
                raise error
            return engine(batch)

        run_batch.name = engine.name  # type: ignore[attr-defined]
        return run_batch

    monkeypatch.setattr(extract_module, "_make_engine", limited)
    return sizes


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                                "tried to allocate 123456789 bytes"),
                                   RuntimeError("std::bad_alloc")], ids=["MemoryError", "torch", "openvino"])
def test_auto_batch_size_backs_off_and_is_recorded(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   error: BaseException) -> None:
    ref = run("extract", data, "--out", tmp_path / "ref", "--cache-dir", tmp_path / "c0", "--batch-size", "8", *TINY)
    ref.assert_ok()
    sizes = _memory_limited(monkeypatch, 20, error)
    r = run("extract", data, "--out", tmp_path / "codes", "--cache-dir", tmp_path / "c1", "--batch-size", "auto",
            *TINY).assert_ok()
    assert sizes[:3] == [AUTO_BATCH_START, 32, 16] and set(sizes[3:]) <= {16}  # halved until it fits, then kept
    assert "batch size 16 (auto)" in r.out
    assert any("out of memory at batch size 32" in w and "continuing with 16" in w for w in r.warnings())
    codes, expected = (np.load(tmp_path / d / "codes_pooled.npy") for d in ("codes", "ref"))
    np.testing.assert_array_equal(codes, expected)  # slicing a batch never changes a code
    if not isinstance(error, MemoryError):
        return  # the fit below goes through the same extraction: once is enough

    out = tmp_path / "run"
    run("fit", data, "--out", out, "--cache-dir", tmp_path / "c2", "--batch-size", "auto", *LINEAR, *TINY).assert_ok()
    assert metrics(out)["batch_size"] == 16
    assert tomllib.loads((out / "config.toml").read_text())["engine"]["batch_size"] == 0  # "auto", reproducibly


def test_finetune_auto_keeps_its_training_batch_size(data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowering the training batch would change the optimisation: only inference backs off."""
    _memory_limited(monkeypatch, 20, MemoryError())
    out = tmp_path / "ft"
    run("fit", data, "--out", out, "--cache-dir", tmp_path / "c", "--strategy", "finetune", "--epochs", "1",
        "--freeze", "1", "--batch-size", "auto", *TINY).assert_ok()
    assert metrics(out)["batch_size"] == 32


def test_out_of_memory_even_at_batch_size_one_is_one_line(data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _memory_limited(monkeypatch, 0, MemoryError())
    for size in ("auto", "8"):
        run("extract", data, "--out", tmp_path / size, "--cache-dir", tmp_path / "c", "--batch-size", size,
            *TINY).assert_fails("out of memory", "--batch-size")


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5"])
def test_bad_batch_size_is_one_line(data: Path, tmp_path: Path, value: str) -> None:
    for cmd in ("extract", "fit"):
        run(cmd, data, "--out", tmp_path / cmd, "--batch-size", value, *TINY).assert_fails(
            "--batch-size must be a positive integer or auto")


def test_auto_batch_engine_only_retries_allocation_failures() -> None:
    calls: list[int] = []

    def engine(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        calls.append(len(batch))
        raise ValueError("a bug, not a lack of memory")

    engine.name = "fake"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="a bug"):
        AutoBatchEngine(engine)(np.zeros((64, 3, 2, 2), np.float32))  # type: ignore[arg-type]
    assert calls == [64]
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# Documented in RELIABILITY.md ("Resource bounds"): efficientnet_lite0, default engine, batch 32.
RSS_FIXED_MB, RSS_PER_IMAGE_KB = 1000, 5


def _bench(n: int, images: Path) -> dict:
    import json
    import subprocess

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_memory.py"
    done = subprocess.run([sys.executable, str(bench), "--n", str(n), "--images", str(images)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[0])


@pytest.mark.slow
def test_extract_memory_is_bounded_and_does_not_grow_with_the_folder(tmp_path: Path) -> None:
    """Peak RSS of `headstart extract` on 300 and 3000 real-size JPEGs (about 2-3 minutes on 2 cores).

    20,000 images take too long for a test: `python benchmarks/bench_memory.py` measures that; here the
    bound is checked at 3000 and the growth per image, which is what the bound at 20,000 rests on.
    """
    small, large = _bench(300, tmp_path / "jpegs"), _bench(3000, tmp_path / "jpegs")
    for r in (small, large):
        assert r["peak_rss_mb"] <= RSS_FIXED_MB + RSS_PER_IMAGE_KB * r["n"] / 1024, r
    growth_kb = (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 / (large["n"] - small["n"])
    assert growth_kb < RSS_PER_IMAGE_KB, (small, large)
