"""Streaming extraction: failures, duplicates, codes directories, and resuming after a SIGKILL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.errors import ConfigError, UnknownTapError
from headstart.features import ExtractResult, FeatureCache, extract_codes, load_codes, write_codes
from headstart.models import create_model


def make_images(folder: Path, n: int, *, start: int = 0, size: int = 36) -> list[Path]:
    """``n`` distinct small images (PNG and JPEG alternating), named by their number."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        arr = np.random.default_rng(i).integers(0, 256, (size, size + i % 7, 3), dtype=np.uint8)
        p = folder / f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def extract(paths: list[Path], **kwargs: object) -> ExtractResult:
    kwargs.setdefault("cache", None)
    return extract_codes(paths, create_model("tiny_test"), kwargs.pop("taps", ["pooled"]), backend="torch",
                         batch_size=8, chunk_size=8, progress=False, workers=2, **kwargs)


def test_codes_match_the_backbone(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 5)
    r = extract(paths, taps=["stage1", "pooled"])
    assert r.codes["stage1"].shape == (5, 16) and r.codes["pooled"].shape == (5, 64)
    assert r.paths == paths and r.index.tolist() == list(range(5)) and r.n_inputs == 5
    assert len(set(r.hashes)) == 5 and r.seconds > 0
    assert (r.codes["stage1"] >= 0).all()  # ReLU-then-average codes


def test_default_engine_agrees_with_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "caches"))  # exported engines go there, not to ~
    paths = make_images(tmp_path / "img", 6)
    fast = extract_codes(paths, create_model("tiny_test"), ["stage1", "pooled"], cache=None, progress=False)
    ref = extract(paths, taps=["stage1", "pooled"])
    for tap in ("stage1", "pooled"):
        np.testing.assert_allclose(fast.codes[tap], ref.codes[tap], rtol=1e-2, atol=1e-3)


def test_undecodable_and_unreadable_files_are_reported_and_skipped(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 6)
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not an image")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    inputs = [paths[0], fake, *paths[1:4], folder, *paths[4:]]
    with pytest.warns(UserWarning):
        r = extract(inputs, cache=FeatureCache(tmp_path / "cache"))
    assert [f.path for f in r.failures] == [fake, folder]
    assert all(f.reason for f in r.failures)
    assert r.paths == paths and r.index.tolist() == [0, 2, 3, 4, 6, 7]
    assert r.codes["pooled"].shape == (6, 64) and r.n_computed == 6
    np.testing.assert_array_equal(r.codes["pooled"], extract(paths).codes["pooled"])


def test_duplicate_files_are_decoded_once_and_fill_every_row(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 4)
    copy = tmp_path / "copy_of_0.jpg"
    shutil.copy(paths[0], copy)
    r = extract([*paths, copy], cache=FeatureCache(tmp_path / "cache"))
    assert r.n_computed == 5 and r.hashes[0] == r.hashes[4]
    np.testing.assert_array_equal(r.codes["pooled"][0], r.codes["pooled"][4])


def test_empty_input_and_bad_settings(tmp_path: Path) -> None:
    r = extract([], cache=FeatureCache(tmp_path))
    assert r.codes["pooled"].shape == (0, 64) and r.paths == [] and r.failures == []
    r = extract([], out_dir=tmp_path / "out")
    assert r.codes["pooled"].shape == (0, 64)
    with pytest.raises(ConfigError, match="batch_size=-1"):  # 0 means auto (see tests/reliability)
        extract_codes([], create_model("tiny_test"), ["pooled"], cache=None, batch_size=-1)
    with pytest.raises(UnknownTapError, match="choose from"):
        extract([], taps=["nope"])


def test_progress_bar_off_a_terminal_is_harmless(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 3)
    r = extract_codes(paths, create_model("tiny_test"), ["pooled"], cache=None, backend="torch", progress=True)
    assert r.n_computed == 3


def test_out_dir_streams_codes_and_write_codes_completes_the_directory(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 10)
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = [*paths[:3], bad, *paths[3:]]
    labels = [i % 2 for i in range(len(inputs))]
    splits = ["train"] * 7 + ["test"] * 4
    out = tmp_path / "codes"
    with pytest.warns(UserWarning, match="could not be decoded"):
        in_memory = extract(inputs, taps=["stage1", "pooled"])
    with pytest.warns(UserWarning, match="could not be decoded"):
        r = extract(inputs, taps=["stage1", "pooled"], out_dir=out)
    assert isinstance(r.codes["pooled"], np.memmap) and r.codes["pooled"].dtype == np.float16
    assert not (out / "index.json").exists()  # only write_codes completes the directory
    assert sorted(p.name for p in out.iterdir()) == ["codes_pooled.npy", "codes_stage1.npy"]  # no scratch left
    for tap in ("stage1", "pooled"):
        np.testing.assert_array_equal(r.codes[tap], in_memory.codes[tap].astype(np.float16))

    write_codes(out, r, backbone=create_model("tiny_test"), labels=labels, splits=splits, classes=["a", "b"])
    index, codes = load_codes(out)
    assert index["model"] == "tiny_test" and index["weights_id"] == "tiny-seed0"
    assert index["taps"] == ["stage1", "pooled"] and index["num_features"] == {"stage1": 16, "pooled": 64}
    assert index["preprocess"]["input_size"] == 32 and index["classes"] == ["a", "b"]
    assert [row["path"] for row in index["rows"]] == [str(p) for p in paths]
    assert [row["label"] for row in index["rows"]] == [labels[i] for i in r.index]
    assert [row["split"] for row in index["rows"]] == [splits[i] for i in r.index]
    assert index["failures"] == [{"path": str(bad), "reason": r.failures[0].reason}]
    assert codes["pooled"].shape == (10, 64) and codes["stage1"].dtype == np.float16
    np.testing.assert_array_equal(codes["pooled"], r.codes["pooled"])

    # An in-memory result written to a new directory reads back the same.
    write_codes(tmp_path / "codes2", in_memory, backbone=create_model("tiny_test"))
    index2, codes2 = load_codes(tmp_path / "codes2")
    assert index2["rows"][0]["label"] is None and index2["classes"] is None
    np.testing.assert_array_equal(codes2["pooled"], codes["pooled"])
    with pytest.raises(ValueError, match="labels must have one entry per input"):
        write_codes(tmp_path / "codes3", r, backbone=create_model("tiny_test"), labels=labels[:-1])


def test_rerunning_into_an_out_dir_replaces_it_and_uses_the_cache(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "cache")
    out = tmp_path / "codes"
    write_codes(out, extract(paths, cache=cache, out_dir=out), backbone=create_model("tiny_test"))
    r = extract(paths[:4], cache=cache, out_dir=out)
    assert r.n_cached == 4 and not (out / "index.json").exists()  # the old index no longer matches
    write_codes(out, r, backbone=create_model("tiny_test"))
    assert load_codes(out)[1]["pooled"].shape == (4, 64)


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import headstart.features.extract as ex
    from headstart.features import FeatureCache, extract_codes
    from headstart.models import create_model

    make_engine = ex._make_engine
    def slow_engine(*args):
        engine = make_engine(*args)
        def run(batch):
            time.sleep(0.05)  # slow enough for the parent to kill us mid-run
            return engine(batch)
        return run
    ex._make_engine = slow_engine

    paths = Path(sys.argv[1]).read_text().splitlines()
    extract_codes(paths, create_model("tiny_test"), ["pooled"], cache=FeatureCache(sys.argv[2]),
                  backend="torch", batch_size=4, chunk_size=8, progress=False, workers=1)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_resume_after_sigkill_keeps_committed_chunks(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 400, size=16)
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(map(str, paths)))
    root = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(listing), str(root)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(root.glob("*/chunk-*.safetensors"))) < 3:
        if child.poll() is not None:
            pytest.fail(f"the extraction ended before it could be killed:\n{child.stderr.read()}")
        assert time.monotonic() < deadline, "no chunk was committed in time"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stderr.close()

    committed = FeatureCache(root).info()[0]["entries"]
    assert 0 < committed < 400
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no corrupt chunk, nothing to warn about
        resumed = extract_codes(paths, create_model("tiny_test"), ["pooled"], cache=FeatureCache(root),
                                backend="torch", batch_size=32, progress=False)
    assert (resumed.n_cached, resumed.n_computed) == (committed, 400 - committed)
    assert not list(root.rglob(".tmp-*"))  # a write cut off by the kill leaves nothing behind
    reference = extract_codes(paths, create_model("tiny_test"), ["pooled"], cache=None, backend="torch",
                              batch_size=32, progress=False)
    np.testing.assert_allclose(resumed.codes["pooled"], reference.codes["pooled"], rtol=1e-3, atol=1e-3)
    assert json.loads(next(root.glob("*/meta.json")).read_text())["tap"] == "pooled"
