"""Class names, files that are not images, advice that works, and paths that survive a move (issue 13, items
10, 11, 14, 15 and 17): one rule for every command, every suggestion tried, every file named."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from headstart.config import load_toml

from .helpers import LINEAR, TINY, Result, make_class_folder, metrics, run

NFC, NFD = "caf\u00e9", "cafe\u0301"  # the same-looking "café": é as one code point, or e + a combining accent


def _fit(data: Path, out: Path, *extra: str | Path) -> Result:
    return run("fit", data, "--out", out, "--cache-dir", out.parent / "cache", *TINY, *extra)


# -- item 10: class folders named in NFC in train/ and NFD in test/ ---------------------------------------------
def test_class_names_in_two_unicode_forms_are_one_class(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", 6, classes=(NFC, "tea"), size=24)
    make_class_folder(data / "test", 3, classes=(NFD, "tea"), size=24, seed=1)
    result = _fit(data, tmp_path / "run").assert_ok()
    assert not result.warnings(), result.err  # no "no folder for class", no "no training images"
    m = metrics(tmp_path / "run")
    assert m["classes"] == [NFC, "tea"] and m["counts"]["test"] == 6
    rec = json.loads((tmp_path / "run" / "splits.json").read_text())
    test_labels = {p.split("/")[1]: y for p, y in zip(rec["splits"]["test"]["paths"], rec["splits"]["test"]["labels"])}
    assert test_labels == {NFD: 0, "tea": 1}  # the NFD folder's images carry the class café
    line = run("predict", next((data / "test" / NFD).iterdir()), "-m", tmp_path / "run", "--backend", "torch",
               "--json").assert_ok().out.splitlines()[0]
    assert json.loads(line)["top"][0]["label"] == NFC


def test_two_folders_of_one_name_in_two_forms_say_what_differs(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 4, classes=(NFC, NFD, "tea"), size=24)
    line = _fit(data, tmp_path / "run").assert_fails("two Unicode forms", "U+00E9", "U+0065 U+0301", "merge")
    assert "Traceback" not in line


def test_names_that_differ_only_in_case_are_named_with_what_differs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", 6, classes=("cat", "dog"), size=24)
    make_class_folder(data / "test", 3, classes=("Cat", "dog"), size=24, seed=1)
    result = _fit(data, tmp_path / "run")
    result.assert_fails("Cat have no folder in train/", "'Cat' (U+0043 U+0061 U+0074) differs from the training "
                        "class 'cat'")
    assert "decodable" not in result.err and "skipped" not in result.err  # the old, false, explanation
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# -- item 11: too few training images for the folds: suggest only what works ------------------------------------
def _suggestions(line: str) -> list[list[str]]:
    """Every `--flag value` the error line suggests, as arguments to add."""
    return [[flag, value] for flag, value in re.findall(r"(--[a-z-]+) ([\w.]+)", line)]


@pytest.mark.parametrize("per_class", [1, 2])
@pytest.mark.parametrize("strategy", ["linear", "finetune"])
def test_too_few_images_for_the_folds_suggests_only_what_works(tmp_path: Path, per_class: int,
                                                              strategy: str) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class, size=24)
    make_class_folder(data / "test", 2, size=24, seed=1)
    base = ["--strategy", strategy, "--val-fraction", "0", "--freeze", "1", "--epochs", "1"]
    line = _fit(data, tmp_path / "run", *base).assert_fails("cross-validation folds", "val/ folder")
    tried = _suggestions(line)
    if per_class == 1:  # neither fewer folds nor a validation share can work with one image per class
        assert "--cv-folds" not in line and "--val-fraction" not in line, line
    else:
        assert ["--cv-folds", "2"] in tried, line
    if strategy == "finetune":
        assert ["--head-init", "random"] in tried, line
    for i, extra in enumerate(tried):  # each suggestion, as given, works
        _fit(data, tmp_path / f"ok{i}", *_merge(base, extra)).assert_ok()
    # The other two ways out work too: a val/ folder, or more images.
    make_class_folder(data / "val", 1, size=24, seed=2)
    _fit(data, tmp_path / "with_val", *base).assert_ok()


def _merge(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with ``extra``'s flag set to its value (replacing the one in ``base``, if any)."""
    args = list(base)
    if extra[0] in args:
        args[args.index(extra[0]) + 1] = extra[1]
    else:
        args += extra
    return args


def test_a_validation_share_that_cannot_be_carved_suggests_one_that_can(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", 2, size=24)
    make_class_folder(data / "test", 2, size=24, seed=1)
    line = _fit(data, tmp_path / "run").assert_fails("stratified 15% val split", "--val-fraction")
    [extra] = [s for s in _suggestions(line) if s[0] == "--val-fraction"]
    _fit(data, tmp_path / "ok", *extra).assert_ok()
    line = _fit(data, tmp_path / "run", "--val-fraction", "0").assert_fails("cross-validation")
    for i, extra in enumerate(_suggestions(line)):
        _fit(data, tmp_path / f"ok{i}", *_merge(["--val-fraction", "0"], extra)).assert_ok()


# -- item 14: one rule for files that are not named like images -------------------------------------------------
def _jpeg(path: Path, seed: int) -> Path:
    src = make_class_folder(path.parent / f".src{seed}", 1, classes=("x",), size=24, seed=seed)
    Image.open(next((src / "x").iterdir())).convert("RGB").save(path, format="JPEG")
    shutil.rmtree(src)
    return path


@pytest.fixture
def odd_suffixes(tmp_path: Path) -> Path:
    data = make_class_folder(tmp_path / "data", 8, size=24)
    _jpeg(data / "circle" / "phone.heic", 1)  # a JPEG with the suffix of a format Pillow cannot read
    _jpeg(data / "square" / "scan.jpg_large", 2)  # a browser's download name
    (data / "circle" / "notes.txt").write_text("not an image")
    (data / "square" / "real.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)  # a real HEIC: unreadable
    return data


def test_files_are_read_by_content_alike_in_every_command_and_the_rest_counted(odd_suffixes: Path,
                                                                               tmp_path: Path) -> None:
    data = odd_suffixes
    fit = _fit(data, tmp_path / "run", "--test-fraction", "0.5").assert_ok()
    [warning] = [w for w in fit.warnings() if "not images" in w]
    assert "2 file(s)" in warning and "notes.txt" in warning and "real.heic" in warning
    m = metrics(tmp_path / "run")
    assert sorted(Path(p).name for p in m["left_out_files"]) == ["notes.txt", "real.heic"]
    assert "left out 2 file(s) that are not images" in fit.out
    assert "left out 2 file(s)" in (tmp_path / "run" / "summary.txt").read_text()
    rec = json.loads((tmp_path / "run" / "splits.json").read_text())
    fitted = {p for s in rec["splits"].values() for p in s["paths"]}
    assert {"circle/phone.heic", "square/scan.jpg_large"} <= fitted and len(fitted) == 18

    ext = run("extract", data, "--out", tmp_path / "codes", "--cache-dir", tmp_path / "cache", *TINY).assert_ok()
    assert "18 images" in ext.out and "2 left out (not images)" in ext.out
    index = json.loads((tmp_path / "codes" / "index.json").read_text())
    assert len(index["rows"]) == 18 and any(r["path"].endswith("phone.heic") for r in index["rows"])

    pred = run("predict", data, "-m", tmp_path / "run", "--backend", "torch", "--json").assert_ok()
    predicted = {Path(json.loads(ln)["path"]).relative_to(data).as_posix() for ln in pred.out.splitlines()}
    assert predicted == fitted  # the same files as fit and extract
    assert any("2 file(s)" in w and "not images" in w for w in pred.warnings())
    # Named one by one, the same rule: the JPEG is read, the others left out with their names.
    named = run("predict", data / "circle" / "phone.heic", data / "circle" / "notes.txt", "-m", tmp_path / "run",
                "--backend", "torch").assert_ok()
    assert "phone.heic" in named.out and "notes.txt" not in named.out and "notes.txt" in named.err
    run("predict", data / "square" / "real.heic", "-m", tmp_path / "run", "--backend", "torch").assert_fails(
        "no image files found")


def test_a_class_of_files_that_are_not_images_is_named_as_such(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6, size=24)
    (data / "heic").mkdir()
    (data / "heic" / "a.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    _fit(data, tmp_path / "run").assert_fails("empty class folder", "not images", "a.heic")


# -- item 15: Pillow's decompression-bomb warning names no file: ours does --------------------------------------
def test_large_image_warning_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_class_folder(tmp_path / "data", 6, size=24)
    Image.new("RGB", (48, 48), (200, 10, 10)).save(data / "circle" / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # Pillow warns above 1500 px (48x48), refuses at 3000
    result = _fit(data, tmp_path / "run").assert_ok()
    assert "exceeds limit" not in result.err and "DOS attack" not in result.err, result.err
    [warning] = [w for w in result.warnings() if "decompression-bomb" in w]
    assert str(data / "circle" / "large.png") in warning and "48x48" in warning


# -- item 17: a run's config.toml works from anywhere; a newline in a file name ---------------------------------
def test_config_toml_works_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_class_folder(tmp_path / "a" / "data", 6, size=24)
    monkeypatch.chdir(tmp_path / "a")
    run("fit", "data", "--out", "run", "--cache-dir", "../cache", *LINEAR, *TINY).assert_ok()
    cfg = load_toml(Path("run/config.toml"))
    assert cfg["data"]["path"] == str(tmp_path / "a" / "data")  # absolute
    run("fit", "data", "--out", "run", "--cache-dir", "../cache", *LINEAR, *TINY).assert_ok()  # a rerun
    monkeypatch.chdir(tmp_path / "b")
    run("fit", "--config", tmp_path / "a" / "run" / "config.toml", "--out", "copy", *TINY).assert_ok()
    assert metrics(tmp_path / "b" / "copy")["test"] == metrics(tmp_path / "a" / "run")["test"]
    run("fit", "--resume", tmp_path / "a" / "run", *TINY).assert_ok()  # --resume from elsewhere reads it too


def test_a_run_recorded_with_a_relative_path_is_still_the_same_run(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    make_class_folder(tmp_path / "data", 6, size=24)
    monkeypatch.chdir(tmp_path)
    run("fit", "data", "--out", "run", "--cache-dir", "cache", *TINY).assert_ok()
    old = Path("run/config.toml").read_text().replace(str(tmp_path / "data"), "data")  # as older versions wrote
    Path("run/config.toml").write_text(old)
    run("fit", "data", "--out", "run", "--cache-dir", "cache", *TINY).assert_ok()  # no --overwrite needed


@pytest.mark.skipif(os.name != "posix", reason="a newline in a file name needs a POSIX file system")
def test_plain_predict_output_is_one_line_per_image_whatever_the_names(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6, size=24)
    _fit(data, tmp_path / "run").assert_ok()
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["two\nlines.png", "tab\there.png", "esc\x1b[31mred.png", "plain.png"]
    src = next((data / "circle").iterdir())
    for name in names:
        shutil.copy(src, photos / name)
    out = run("predict", photos, "-m", tmp_path / "run", "--backend", "torch").assert_ok().out
    lines = out.splitlines()
    assert len(lines) == len(names), out
    assert any(ln.startswith(f"{photos}/two\\nlines.png  ") for ln in lines), out
    assert any(ln.startswith(f"{photos}/esc\\x1b[31mred.png  ") for ln in lines), out
    assert "\x1b" not in out and "\t" not in out
    exact = run("predict", photos, "-m", tmp_path / "run", "--backend", "torch", "--json").assert_ok().out
    assert sorted(Path(json.loads(ln)["path"]).name for ln in exact.splitlines()) == sorted(names)
