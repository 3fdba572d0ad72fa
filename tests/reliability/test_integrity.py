"""Edited bundles, hostile shapes and places that cannot hold output (issue 13, items 4-6): one `error:` line or
a named warning, never a traceback, never a wrong label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.bundle import load
from headstart.data import decode_image
from headstart.data.transforms import EvalTransform, center_crop, resize_short_side
from headstart.errors import BundleError, DecodeError
from headstart.models.spec import PreprocessSpec

from .helpers import TINY, make_class_folder, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A three-class linear run: (its folder, the data)."""
    root = tmp_path_factory.mktemp("integrity")
    data = make_class_folder(root / "data", 8, classes=("a", "b", "c"), size=24)
    run("fit", data, "--out", root / "run", "--cache-dir", root / "cache", *TINY).assert_ok()
    return root / "run", data


# -- item 4: a bundle is validated on load ----------------------------------------------------------------------
def _edited_bundle(run_dir: Path, dest: Path, **changes: object) -> Path:
    """A copy of the run's bundle (outside the run, so only the bundle's own checks apply) with edited JSON."""
    bundle = shutil.copytree(run_dir / "bundle", dest)
    meta = json.loads((bundle / "bundle.json").read_text()) | changes
    (bundle / "bundle.json").write_text(json.dumps(meta))
    return bundle


@pytest.mark.parametrize("change,phrase", [
    ({"classes": ["a", "b"]}, "head's weights have shape (3,"),  # fewer labels than outputs (was an IndexError)
    ({"classes": ["a", "b", "c", "d"]}, "4 classes"),  # more labels than outputs (was accepted silently)
    ({"classes": ["a", "a", "c"]}, "twice"),
    ({"classes": "abc"}, "list of at least 2 names"),
    ({"model": "tiny_tset"}, "unknown model"),
    ({"taps": ["stage9"]}, "not taps of"),
    ({"taps": ["stage1"]}, "features"),  # a tap of another width than the head was fitted on
])
def test_edited_bundle_is_one_error_line(trained: tuple[Path, Path], tmp_path: Path, change: dict,
                                         phrase: str) -> None:
    run_dir, data = trained
    bundle = _edited_bundle(run_dir, tmp_path / "bundle", **change)
    with pytest.raises(BundleError, match="re-run `headstart fit`") as e:
        load(bundle, backend="torch")
    assert phrase in str(e.value) and "\n" not in str(e.value)
    image = next((data / "a").glob("*.png"))
    run("predict", image, "-m", bundle, "--top-k", "6", "--backend", "torch").assert_fails(phrase)


def test_edited_bundle_json_inside_a_run_is_refused_as_not_the_runs(trained: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    meta["classes"] = ["c", "b", "a"]  # same count and shapes: only the run's record can tell
    (run_dir / "bundle" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="does not belong to run"):
        load(run_dir, backend="torch")


# -- item 5: thin images -----------------------------------------------------------------------------------------
def test_very_thin_image_is_skipped_with_its_name(tmp_path: Path) -> None:
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 20000), (200, 10, 10)).save(thin)
    assert thin.stat().st_size < 2000  # tiny on disk: the danger is in the resize
    with pytest.raises(DecodeError, match="aspect ratio") as e:
        decode_image(thin)
    assert str(thin) in str(e.value)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (40, 40), (10, 200, 10)).save(ok)
    result = run("predict", thin, ok, "-m", "tiny_test", "--backend", "torch", "--json").assert_ok()
    assert len(result.out.splitlines()) == 1 and any("thin.png" in w and "aspect ratio" in w
                                                     for w in result.warnings())


def test_thin_but_allowed_images_never_build_the_huge_resized_image(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PreprocessSpec(224)  # resize 256
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 3000, 3), dtype=np.uint8))
    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *a: object, **k: object) -> Image.Image:
        sizes.append(tuple(size))
        return real_resize(self, size, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(Image.Image, "resize", spy)
        out = EvalTransform(spec)(img)
    assert out.shape == (3, 224, 224)
    assert max(w * h for w, h in sizes) <= 224 * 224  # not 256 x 76800
    # The same picture as the two-step resize + centre crop, up to resampling at the box edges.
    ref = np.asarray(center_crop(resize_short_side(img, 256), 224), np.float32)
    got = out.transpose(1, 2, 0) * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)
    assert np.abs(ref - got).mean() < 8


def test_ordinary_shapes_are_resized_exactly_as_before() -> None:
    spec = PreprocessSpec(224)  # resize 256
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    ref = center_crop(resize_short_side(img, 256), 224)
    expected = (np.asarray(ref, np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    np.testing.assert_array_equal(EvalTransform(spec)(img), expected.transpose(2, 0, 1))


# -- item 6: places that cannot hold output ----------------------------------------------------------------------
def _bad_places(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    file = tmp_path / "a_file"
    file.write_text("x")
    return {"file": (file, "is a file"), "under_file": (file / "sub", "which is a file"),
            "proc": (Path("/proc/x"), "/proc"), "sys": (Path("/sys/x"), "/sys"),
            "dev_null": (Path("/dev/null"), "/dev")}


PLACES = ["file", "under_file", "proc", "sys", "dev_null"]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("command", ["fit", "extract"])
def test_bad_out_is_one_line_up_front(trained: tuple[Path, Path], tmp_path: Path, place: str, command: str) -> None:
    path, phrase = _bad_places(tmp_path)[place]
    run(command, trained[1], "--out", path, "--cache-dir", tmp_path / "cache", *TINY).assert_fails(
        "--out", phrase)
    assert not (tmp_path / "cache").exists()  # refused before any image was extracted


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("how", ["--cache-dir", "HEADSTART_CACHE"])
def test_bad_cache_is_one_line_before_extraction(trained: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, place: str, how: str) -> None:
    path, phrase = _bad_places(tmp_path)[place]
    if how == "HEADSTART_CACHE":
        monkeypatch.setenv("HEADSTART_CACHE", str(path))
        args: tuple[str | Path, ...] = ()
    else:
        args = ("--cache-dir", path)
    for command in ("fit", "extract"):
        out = tmp_path / f"out-{command}"
        run(command, trained[1], "--out", out, *args, *TINY).assert_fails(how, phrase)
        assert not out.exists()  # nothing was extracted, no run directory was made
