"""The content-addressed feature cache: hits, misses, separate namespaces, crash safety, housekeeping."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.features import (ExtractResult, FeatureCache, default_cache_dir, extract_codes, extractor_id,
                                 extractor_meta, hash_file)
from headstart.models import Backbone, create_model
from headstart.models.tiny import TinyNet


def make_images(folder: Path, n: int, *, start: int = 0, size: int = 36) -> list[Path]:
    """``n`` distinct small images (PNG and JPEG alternating), named by their number."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 256, (size, size + i % 7, 3), dtype=np.uint8)
        p = folder / f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def run(paths: list[Path], cache: FeatureCache | None, taps: tuple[str, ...] = ("pooled",),
        model: Backbone | None = None) -> ExtractResult:
    model = model if model is not None else create_model("tiny_test")
    return extract_codes(paths, model, list(taps), cache=cache, backend="torch", batch_size=8, chunk_size=8,
                         progress=False, workers=2)


@pytest.fixture
def tiny() -> Backbone:
    return create_model("tiny_test")


def test_second_run_is_all_hits_and_identical(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 20)
    cache = FeatureCache(tmp_path / "cache")
    first = run(paths, cache, ("pooled", "stage1"))
    assert (first.n_cached, first.n_computed) == (0, 20)
    second = run(paths, FeatureCache(tmp_path / "cache"), ("pooled", "stage1"))  # a fresh process's view
    assert (second.n_cached, second.n_computed) == (20, 0)
    for tap in ("pooled", "stage1"):
        assert second.codes[tap].dtype == np.float32
        np.testing.assert_array_equal(second.codes[tap], first.codes[tap])


def test_no_cache_and_empty_cache_compute_everything(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 6)
    uncached = run(paths, None)
    fresh = run(paths, FeatureCache(tmp_path / "cache"))
    assert uncached.n_computed == fresh.n_computed == 6
    # Codes are float16-rounded whether or not a cache is used, so the two agree exactly.
    np.testing.assert_array_equal(uncached.codes["pooled"], fresh.codes["pooled"])


def test_partial_hit_computes_only_new_images(tmp_path: Path) -> None:
    old = make_images(tmp_path / "img", 10)
    cache = FeatureCache(tmp_path / "cache")
    run(old, cache)
    new = make_images(tmp_path / "img", 3, start=10)
    mixed = [*old[:5], new[0], *old[5:], new[1], new[2]]
    r = run(mixed, FeatureCache(tmp_path / "cache"))
    assert (r.n_cached, r.n_computed) == (10, 3)
    np.testing.assert_array_equal(r.codes["pooled"], run(mixed, None).codes["pooled"])


def test_moved_or_renamed_files_still_hit(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "a", 4)
    cache = FeatureCache(tmp_path / "cache")
    run(paths, cache)
    moved = []
    for p in paths:
        q = tmp_path / "b" / f"renamed_{p.name}"
        q.parent.mkdir(exist_ok=True)
        p.rename(q)
        moved.append(q)
    assert run(moved, cache).n_cached == 4


def test_taps_models_and_weights_have_separate_ids(tmp_path: Path, tiny: Backbone) -> None:
    other_weights = TinyNet(seed=1)
    ids = {extractor_id(tiny, "pooled"), extractor_id(tiny, "stage1"), extractor_id(other_weights, "pooled")}
    assert len(ids) == 3
    assert extractor_id(tiny, "pooled") == extractor_id(create_model("tiny_test"), "pooled")  # stable

    paths = make_images(tmp_path / "img", 5)
    cache = FeatureCache(tmp_path / "cache")
    run(paths, cache, ("pooled",))
    assert run(paths, cache, ("stage1",)).n_computed == 5
    assert run(paths, cache, ("pooled",), model=other_weights).n_computed == 5
    # An image is cached only when every requested tap has it.
    assert run(paths, cache, ("pooled", "stem")).n_computed == 5
    assert run(paths, cache, ("pooled", "stem", "stage1")).n_cached == 5


def test_random_weights_are_never_cached(tmp_path: Path, tiny: Backbone) -> None:
    tiny.weights_id = "random"
    paths = make_images(tmp_path / "img", 3)
    with pytest.warns(UserWarning, match="random weights"):
        run(paths, FeatureCache(tmp_path / "cache"), model=tiny)
    assert not (tmp_path / "cache").exists()


def test_writer_lookup_roundtrip_and_chunking(tmp_path: Path, tiny: Backbone) -> None:
    cache = FeatureCache(tmp_path)
    eid = extractor_id(tiny, "pooled")
    codes = np.random.default_rng(0).random((20, 64)).astype(np.float32)
    hashes = [f"{i:064x}" for i in range(20)]
    with cache.writer(eid, extractor_meta(tiny, "pooled"), chunk_size=8) as w:
        w.add(hashes, codes)
        w.add(hashes[:3], codes[:3])  # duplicates are not stored twice
    assert len(list((tmp_path / eid).glob("chunk-*.safetensors"))) == 3  # 8 + 8 + 4
    meta = json.loads((tmp_path / eid / "meta.json").read_text())
    assert meta["tap"] == "pooled" and meta["model"] == "tiny_test" and meta["codes"] == "relu-avgpool-v1"

    found = FeatureCache(tmp_path).lookup(eid, [hashes[5], "f" * 64, hashes[19]])
    assert set(found) == {hashes[5], hashes[19]}
    np.testing.assert_allclose(found[hashes[5]], codes[5], rtol=1e-3)
    assert found[hashes[5]].dtype == np.float32
    with pytest.raises(ValueError, match="meta does not hash"):
        cache.writer(eid, extractor_meta(tiny, "stage1"))


def test_corrupt_chunk_is_ignored_with_a_warning(tmp_path: Path, tiny: Backbone) -> None:
    paths = make_images(tmp_path / "img", 12)
    run(paths, FeatureCache(tmp_path / "cache"))
    d = tmp_path / "cache" / extractor_id(tiny, "pooled")
    chunks = sorted(d.glob("chunk-*.safetensors"))
    assert len(chunks) == 2  # 8 + 4
    lost = len(json.loads(_header(chunks[0])["__metadata__"]["hashes"]))
    chunks[0].write_bytes(chunks[0].read_bytes()[:-10])  # truncated
    (d / "chunk-garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="ignoring corrupt chunk"):
        r = run(paths, FeatureCache(tmp_path / "cache"))
    assert (r.n_cached, r.n_computed) == (12 - lost, lost)
    np.testing.assert_array_equal(r.codes["pooled"], run(paths, None).codes["pooled"])


def _header(p: Path) -> dict:
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def test_leftover_temp_files_of_dead_writers_are_cleaned(tmp_path: Path, tiny: Backbone) -> None:
    paths = make_images(tmp_path / "img", 3)
    cache = FeatureCache(tmp_path / "cache")
    run(paths, cache)
    d = tmp_path / "cache" / extractor_id(tiny, "pooled")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _host_tag(d)
    stale = d / f".tmp-{int(dead.stdout)}-{host}-0000aaaa-chunk-x.safetensors"
    live = d / f".tmp-{os.getpid()}-{host}-0000bbbb-chunk-y.safetensors"
    stale.write_bytes(b"half a chunk")
    live.write_bytes(b"being written right now")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # temp files are not chunks: no warning about them
        r = run(paths, FeatureCache(tmp_path / "cache"))
    assert r.n_cached == 3
    assert not stale.exists() and live.exists()


def _host_tag(d: Path) -> str:
    from headstart.io import tmp_path_for

    return tmp_path_for(d / "x").name.split("-")[2]


def test_info_and_clear(tmp_path: Path, tiny: Backbone) -> None:
    paths = make_images(tmp_path / "img", 5)
    cache = FeatureCache(tmp_path / "cache")
    assert cache.info() == []
    run(paths, cache, ("pooled", "stage1"))
    (tmp_path / "cache" / "not-ours").mkdir()  # never touched by clear
    info = {row["tap"]: row for row in cache.info()}
    assert set(info) == {"pooled", "stage1"}
    assert info["pooled"]["entries"] == 5 and info["pooled"]["model"] == "tiny_test"
    assert info["pooled"]["extractor"] == extractor_id(tiny, "pooled") and info["pooled"]["bytes"] > 5 * 64 * 2
    assert cache.clear(extractor_id(tiny, "stage1")) > 0
    assert [row["tap"] for row in cache.info()] == ["pooled"]
    cache.clear()
    assert cache.info() == [] and (tmp_path / "cache" / "not-ours").is_dir()
    assert run(paths, cache).n_computed == 5


def test_hash_file_and_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB blocks
    p.write_bytes(data)
    assert hash_file(p) == hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "features"
    monkeypatch.delenv("HEADSTART_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "headstart" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "headstart" / "features"
