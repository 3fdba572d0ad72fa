"""Eval transforms (geometry, normalisation) and the threaded BatchLoader."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data.loader import Batch, BatchLoader, DecodeFailure
from headstart.data.transforms import EvalTransform, center_crop, normalize, resize_short_side
from headstart.errors import ConfigError
from headstart.models.spec import PreprocessSpec

SPEC = PreprocessSpec(input_size=16, crop_pct=0.8)  # resize 20, crop 16


# ---------------------------------------------------------------- transforms
@pytest.mark.parametrize(
    ("size", "short", "expected"),
    [((40, 20), 10, (20, 10)), ((20, 40), 10, (10, 20)), ((30, 31), 10, (10, 10)), ((7, 7), 14, (14, 14))],
)
def test_resize_short_side(size: tuple[int, int], short: int, expected: tuple[int, int]) -> None:
    out = resize_short_side(Image.new("RGB", size), short, "bilinear")
    assert out.size == expected


def test_resize_interpolation_names() -> None:
    img = Image.new("RGB", (8, 4))
    for name in ("bicubic", "bilinear", "nearest", "lanczos", "BICUBIC"):
        assert resize_short_side(img, 2, name).size == (4, 2)
    with pytest.raises(ConfigError, match="unknown interpolation 'cubic'; use one of"):
        resize_short_side(img, 2, "cubic")
    with pytest.raises(ConfigError):
        EvalTransform(PreprocessSpec(16, interpolation="area"))


def test_center_crop_non_square() -> None:
    a = np.zeros((10, 30, 3), dtype=np.uint8)  # H=10, W=30
    a[:, 10:20] = 255  # the central third is white
    out = center_crop(Image.fromarray(a), 10)
    assert out.size == (10, 10)
    assert (np.asarray(out) == 255).all()
    tall = center_crop(Image.fromarray(a.transpose(1, 0, 2)), 10)  # H=30, W=10
    assert tall.size == (10, 10) and (np.asarray(tall) == 255).all()


def test_normalize_values_and_layout() -> None:
    spec = PreprocessSpec(2, mean=(0.0, 100.0, 200.0), std=(1.0, 50.0, 100.0))
    img = Image.new("RGB", (3, 2), (10, 200, 0))
    out = normalize(img, spec)
    assert out.dtype == np.float32 and out.shape == (3, 2, 3)  # C, H, W
    np.testing.assert_allclose(out[:, 0, 0], [10.0, 2.0, -2.0])
    assert out.flags.c_contiguous


def test_eval_transform() -> None:
    t = EvalTransform(SPEC)
    assert t.draft_size == SPEC.resize_size == 20
    a = np.full((40, 60, 3), 255, dtype=np.uint8)
    a[:, :6] = 0  # black band on the left edge is cropped away
    out = t(Image.fromarray(a))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, (255 - 127) / 128, atol=1e-6)
    assert t(Image.new("L", (5, 9))).shape == (3, 16, 16)  # non-RGB input still works
    assert "resize=20" in repr(t)


# ---------------------------------------------------------------- loader
def write_images(tmp_path: Path, n: int, bad: set[int] = frozenset()) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:03d}.png"
        if i in bad:
            p.write_bytes(b"corrupt")
        else:
            Image.new("RGB", (24 + i, 20), (i, 0, 0)).save(p)  # red channel encodes the index
        paths.append(p)
    return paths


def ids(batch: Batch) -> list[int]:
    """Recover each image's index from its (un-normalised) red channel."""
    return [int(round(v * 128 + 127)) for v in batch.images[:, 0, 0, 0]]


def test_loader_order_and_shapes(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 10)
    loader = BatchLoader(paths, EvalTransform(SPEC), batch_size=4, workers=3, draft_size=SPEC.resize_size)
    assert len(loader) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        filters = list(warnings.filters)
        batches = list(loader)
        assert warnings.filters == filters  # decoding threads leave the global filters alone
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.images.shape for b in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)]
    assert all(b.images.dtype == np.float32 for b in batches)
    assert sum((ids(b) for b in batches), []) == list(range(10))
    assert loader.failures == []


def test_loader_failures_collected_and_warned_once(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 9, bad={1, 4, 5})
    paths.append(tmp_path / "gone.png")  # index 9: missing file
    loader = BatchLoader(paths, EvalTransform(SPEC), batch_size=3, workers=2)
    with pytest.warns(UserWarning) as record:
        batches = list(loader)
    assert len(record) == 1
    msg = str(record[0].message)
    assert msg.startswith("4 of 10 image(s) could not be decoded")
    assert "001.png" in msg and "gone.png" in msg and "\n" in msg
    assert [b.indices for b in batches] == [[0, 2], [3], [6, 7, 8]]  # batch [9] only failed: skipped
    for b in batches:
        assert ids(b) == b.indices  # indices point at the right images
    assert [f.path.name for f in loader.failures] == ["001.png", "004.png", "005.png", "gone.png"]
    assert all(isinstance(f, DecodeFailure) and f.reason and "001.png:" not in f.reason for f in loader.failures)


def test_loader_warning_truncates_long_lists(tmp_path: Path) -> None:
    paths = [tmp_path / f"missing{i}.jpg" for i in range(25)]
    with pytest.warns(UserWarning, match=r"\.\.\. and 5 more"):
        assert list(BatchLoader(paths, EvalTransform(SPEC), batch_size=8)) == []


def test_loader_prefetch_is_bounded(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 24)
    calls = 0
    lock = threading.Lock()
    transform = EvalTransform(SPEC)

    def counting(img: Image.Image) -> np.ndarray:
        nonlocal calls
        with lock:
            calls += 1
        return transform(img)

    loader = BatchLoader(paths, counting, batch_size=2, workers=4, prefetch=2)
    for k, _ in enumerate(loader):
        # while the consumer holds batch k, at most `prefetch` later batches have been started
        assert calls <= (k + 1 + 2) * 2
    assert calls == 24


def test_loader_early_break_and_reuse(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 12)
    loader = BatchLoader(paths, EvalTransform(SPEC), batch_size=2)
    for b in loader:
        break
    assert b.indices == [0, 1]
    assert sum(len(b.indices) for b in loader) == 12  # a second full pass works


def test_loader_transform_errors_propagate(tmp_path: Path) -> None:
    def broken(img: Image.Image) -> np.ndarray:
        raise RuntimeError("bug in transform")

    with pytest.raises(RuntimeError, match="bug in transform"):
        list(BatchLoader(write_images(tmp_path, 3), broken, batch_size=2))


def test_loader_validation_and_empty() -> None:
    t = EvalTransform(SPEC)
    assert len(BatchLoader([], t)) == 0 and list(BatchLoader([], t)) == []
    assert BatchLoader([], t).workers >= 1
    for kwargs in ({"batch_size": 0}, {"workers": 0}, {"prefetch": 0}):
        with pytest.raises(ConfigError, match="invalid"):
            BatchLoader([], t, **kwargs)


def test_normalise_is_bit_for_bit_the_reference_formula() -> None:
    """The in-place CHW normalise must give the very floats of (pixel - mean) / std on HWC then transposed:
    cached codes and bundles fitted before it stay valid."""
    from headstart.data.transforms import _normalize

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for mean, std in [((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)), ((127.0,) * 3, (128.0,) * 3)]:
        m, inv = np.asarray(mean, np.float32), 1.0 / np.asarray(std, np.float32)
        reference = np.ascontiguousarray(((np.asarray(img, np.float32) - m) * inv).transpose(2, 0, 1))
        out = _normalize(img, m, inv)
        assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and np.array_equal(out, reference)
