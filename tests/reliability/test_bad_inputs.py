"""Every bad input of the corpus through the real CLI: extract, fit (linear and finetune), predict.

Each command must either succeed with a warning naming the file, or fail with exactly one actionable
``error:`` line; never a traceback, never a hang, never a wrong label. The file-level items share one
dataset (built once, each command run once on it); folder-level situations get their own small datasets.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from headstart.data.decode import decode_image

from .corpus import (
    FILE_ITEMS,
    build_corpus_folder,
    class_image,
    make_ycck_jpeg,
    write_non_utf8,
    ycck_expected_rgb,
)
from .helpers import TINY, Result, make_class_folder, metrics, real_class, run

CLASSES = ["circle", "square"]
FINETUNE = ("--strategy", "finetune", "--epochs", "2", "--freeze", "1", "--batch-size", "8")


def deny_reads(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make the OS refuse to open ``path``, as chmod 0 does for a non-root user (root reads anything)."""
    locked, real_open = os.path.realpath(path), builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


class CorpusRuns:
    """The corpus dataset and what each command made of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.placed = build_corpus_folder(self.data)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HEADSTART_REPORT", "1")  # report.html too must survive every odd file (names included)
            deny_reads(mp, self.placed["unreadable_file"][0])
            self.extract = run("extract", self.data, "--out", root / "codes", "--cache-dir", root / "c1", *TINY)
            self.linear = run("fit", self.data, "--out", root / "linear", "--cache-dir", root / "c2",
                              "--strategy", "linear", *TINY)
            # The default strategy reads the folder three times (advise, then each candidate): still one
            # warning per bad file.
            self.auto = run("fit", self.data, "--out", root / "auto", "--cache-dir", root / "c4", "--epochs", "2",
                            "--batch-size", "8", *TINY)
            self.finetune = run("fit", self.data, "--out", root / "ft", "--cache-dir", root / "c3", *FINETUNE,
                                *TINY)
            self.predict = run("predict", self.data, "--model", root / "linear", "--json", "--backend", "torch")
        self.index = json.loads((root / "codes" / "index.json").read_text())
        self.reports = [root / d / "report.html" for d in ("linear", "ft", "auto")]
        self.metrics = {"linear": metrics(root / "linear"), "finetune": metrics(root / "ft"),
                        "auto": metrics(root / "auto")}
        self.splits = {k: json.loads((root / k / "splits.json").read_text()) for k in ("linear", "ft")}
        self.predictions = {os.path.realpath(d["path"]): d for d in map(json.loads, self.predict.out.splitlines())}

    def commands(self) -> dict[str, Result]:
        return {"extract": self.extract, "fit linear": self.linear, "fit finetune": self.finetune,
                "fit auto": self.auto, "predict": self.predict}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusRuns:
    return CorpusRuns(tmp_path_factory.mktemp("corpus"))


def test_every_command_succeeds_on_the_corpus(corpus: CorpusRuns) -> None:
    for name, result in corpus.commands().items():
        result.assert_ok()
        # One warning listing every skipped file, not one per file, per split or per epoch; auto reads the
        # non-test images first (advise) and the test images later: one warning for each, no file twice.
        blocks = result.warnings()
        assert len(blocks) == (2 if name == "fit auto" else 1), (name, blocks)
        named = [ln.split(": ")[0].strip() for b in blocks for ln in b.splitlines()[1:]]
        assert len(named) == len(set(named)) == sum(item.expect == "skip" for item in FILE_ITEMS), (name, named)


def test_each_run_has_its_report(corpus: CorpusRuns) -> None:
    for page in corpus.reports:
        text = page.read_text(encoding="utf-8")
        assert "Confusion matrix" in text and "could not be decoded" in text, page


def test_counts_exclude_skipped_files(corpus: CorpusRuns) -> None:
    n_skip = sum(item.expect == "skip" for item in FILE_ITEMS)
    n_files = 2 * 10 + len(FILE_ITEMS)
    assert len(corpus.index["rows"]) == n_files - n_skip and len(corpus.index["failures"]) == n_skip
    for strategy, m in corpus.metrics.items():
        assert sum(m["counts"].values()) == n_files - n_skip, strategy
        assert len(m["skipped_files"]) == n_skip, strategy
        assert np.asarray(m["test"]["confusion_matrix"]).sum() == m["counts"]["test"], strategy
    assert len(corpus.predictions) == n_files - n_skip


def _mentions(text: str, path: Path) -> bool:
    return str(path) in text or os.path.realpath(path) in text


@pytest.mark.parametrize("item", FILE_ITEMS, ids=[i.name for i in FILE_ITEMS])
def test_file_item(corpus: CorpusRuns, item: Any) -> None:
    path, cls = corpus.placed[item.name]
    real = os.path.realpath(path)
    rows = {os.path.realpath(r["path"]): r for r in corpus.index["rows"]}
    failures = {os.path.realpath(f["path"]): f["reason"] for f in corpus.index["failures"]}
    for strategy, m in corpus.metrics.items():
        skipped = {os.path.realpath(f["path"]): f["reason"] for f in m["skipped_files"]}
        assert (real in skipped) == (item.expect == "skip"), (strategy, skipped.get(real))
    if item.expect == "skip":
        # Named, with the reason, in exactly one warning of every command, and in every record of skips.
        for name, result in corpus.commands().items():
            naming = [w for w in result.warnings() if _mentions(w, path)]
            assert len(naming) == 1, (name, result.err)
            line = next(ln for ln in naming[0].splitlines() if _mentions(ln, path))
            assert item.reason in line.lower(), (name, line)
        assert real not in rows and item.reason in failures[real].lower()
        assert real not in corpus.predictions
        for strategy, m in corpus.metrics.items():
            reason = next(f["reason"] for f in m["skipped_files"] if os.path.realpath(f["path"]) == real)
            assert item.reason in reason.lower(), strategy
    else:
        # Decoded, and labelled by the folder it is in: in the codes' index and in both runs' splits.
        for name, result in corpus.commands().items():
            assert not any(_mentions(w, path) for w in result.warnings()), (name, result.err)
        assert real not in failures and corpus.index["classes"][rows[real]["label"]] == cls
        for run_name, rec in corpus.splits.items():
            labelled = {os.path.realpath(corpus.data / p): rec["classes"][y] for s in rec["splits"].values()
                        for p, y in zip(s["paths"], s["labels"])}
            assert labelled[real] == cls, run_name
        probs = [t["prob"] for t in corpus.predictions[real]["top"]]
        assert corpus.predictions[real]["top"][0]["label"] in CLASSES and abs(sum(probs) - 1) < 1e-4


@pytest.mark.parametrize("item", [i for i in FILE_ITEMS if i.expect == "skip"],
                         ids=[i.name for i in FILE_ITEMS if i.expect == "skip"])
def test_predict_on_only_a_bad_file_is_one_error(corpus: CorpusRuns, item: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = corpus.placed[item.name][0]
    if item.name == "unreadable_file":
        deny_reads(monkeypatch, path)
    r = run("predict", path, "--model", corpus.root / "linear", "--backend", "torch")
    r.assert_fails("no image could be decoded")
    assert any(str(path) in w for w in r.warnings())


def test_ycck_decodes_to_the_colour_libjpeg_defines(tmp_path: Path) -> None:
    """The YCCK file really is YCCK (Adobe transform 2), and decodes to the colour its samples mean."""
    p = make_ycck_jpeg(tmp_path / "ycck.jpg", cmyk=(0, 255, 255, 0))
    with Image.open(p) as im:
        assert im.mode == "CMYK" and im.info.get("adobe_transform") == 2
    rgb = np.asarray(decode_image(p), dtype=np.float32)
    assert rgb.std(axis=(0, 1)).max() < 3  # a flat colour, not noise
    np.testing.assert_allclose(rgb.mean(axis=(0, 1)), ycck_expected_rgb((0, 255, 255, 0)), atol=4)


# -- folder-level situations ----------------------------------------------------------------------------------
def _fit(data: Path, out: Path, *extra: str) -> Result:
    return run("fit", data, "--out", out, "--cache-dir", out.parent / "cache", *extra, *TINY)


def _extract(data: Path, out: Path) -> Result:
    return run("extract", data, "--out", out, "--cache-dir", out.parent / "cache", *TINY)


def _predict(model: Path, *paths: Path) -> Result:
    return run("predict", *paths, "--model", model, "--json", "--backend", "torch")


@pytest.fixture(scope="module")
def model(corpus: CorpusRuns) -> Path:
    return corpus.root / "linear"


def test_empty_class_folder(tmp_path: Path, model: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6)
    (data / "empty").mkdir()
    for r in (_extract(data, tmp_path / "codes"), _fit(data, tmp_path / "run"),
              _fit(data, tmp_path / "ft", *FINETUNE)):
        r.assert_fails("empty class folder", str(data / "empty"))
    assert not (tmp_path / "codes" / "index.json").exists()  # no silent fall-back to "unlabelled"
    r = _predict(model, data).assert_ok()
    assert len(r.out.splitlines()) == 12


def test_class_with_one_image(tmp_path: Path, model: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6)
    (data / "lonely").mkdir()
    shutil.copy(data / "circle" / "circle_000.png", data / "lonely" / "only.png")
    for r in (_extract(data, tmp_path / "codes"), _fit(data, tmp_path / "run")):
        r.assert_fails("lonely", "fewer than 2")
    _predict(model, data / "lonely").assert_ok()


def test_class_whose_every_file_is_undecodable(tmp_path: Path, model: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6)
    (data / "broken").mkdir()
    for i in range(6):
        (data / "broken" / f"b{i}.jpg").write_bytes(b"<html>not an image</html>")
    # extract needs no training images: it writes what it can and lists the rest.
    r = _extract(data, tmp_path / "codes").assert_ok()
    assert len(json.loads((tmp_path / "codes" / "index.json").read_text())["failures"]) == 6
    for r in (_fit(data, tmp_path / "run", "--strategy", "linear"), _fit(data, tmp_path / "ft", *FINETUNE)):
        r.assert_fails("broken", "no decodable training image")
        # Every skipped file is named in the warning above it, byte-identical copies included (they are
        # decoded once: the warning used to name only that one).
        (warning,) = r.warnings()
        assert warning.startswith("warning: 6 of 18 image(s)") and all(f"b{i}.jpg" in warning for i in range(6))
    r = _predict(model, data / "broken")
    r.assert_fails("no image could be decoded")


def test_nothing_decodable_at_all(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(5):
            (data / c / f"{i}.jpg").write_text("not an image")
    _extract(data, tmp_path / "codes").assert_fails("none of the 10 images")
    _fit(data, tmp_path / "run").assert_fails("no decodable training image")


def _assert_labels_follow_real_folders(run_dir: Path, data: Path) -> None:
    rec = json.loads((run_dir / "splits.json").read_text())
    pairs = [(p, rec["classes"][y]) for s in rec["splits"].values() for p, y in zip(s["paths"], s["labels"])]
    assert pairs and all(real_class(data, p) == cls for p, cls in pairs), pairs


def test_symlink_loop_to_a_parent_folder(tmp_path: Path, model: Path) -> None:
    """``circle/loop -> ..`` would make every square also a circle: it is not followed, with a warning."""
    data = make_class_folder(tmp_path / "data", 8)
    os.symlink("..", data / "circle" / "loop")
    for r in (_fit(data, tmp_path / "run"), _fit(data, tmp_path / "ft", *FINETUNE)):
        r.assert_ok()
        assert any("loop" in w and "not followed" in w for w in r.warnings()), r.err
    for run_dir in (tmp_path / "run", tmp_path / "ft"):
        _assert_labels_follow_real_folders(run_dir, data)
        assert sum(metrics(run_dir)["counts"].values()) == 16  # each image once
    r = _extract(data, tmp_path / "codes").assert_ok()
    index = json.loads((tmp_path / "codes" / "index.json").read_text())
    assert len(index["rows"]) == 16
    assert all(real_class(data, os.path.relpath(row["path"], data)) == index["classes"][row["label"]]
               for row in index["rows"])
    r = _predict(model, data).assert_ok()
    assert len(r.out.splitlines()) == 16  # each image once (the loop leads to a folder already scanned)


def test_class_folder_that_is_a_symlink_to_the_dataset(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 8)
    os.symlink(".", data / "everything")
    r = _fit(data, tmp_path / "run").assert_ok()
    assert any("everything" in w and "not a class" in w for w in r.warnings()), r.err
    assert metrics(tmp_path / "run")["classes"] == CLASSES
    _assert_labels_follow_real_folders(tmp_path / "run", data)


def test_symlink_from_train_into_test_is_not_followed(tmp_path: Path) -> None:
    """A class folder linking to another part of the dataset would leak test images into train."""
    data = tmp_path / "data"
    make_class_folder(data / "train", 8)
    make_class_folder(data / "test", 4, seed=1)
    os.symlink(data / "test" / "circle", data / "train" / "circle" / "more")
    r = _fit(data, tmp_path / "run").assert_ok()
    assert any("another part of the dataset" in w for w in r.warnings()), r.err
    m = metrics(tmp_path / "run")
    assert m["counts"]["test"] == 8 and m["duplicates_across_splits"] == 0


def test_duplicates_across_splits_are_warned_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", 8)
    make_class_folder(data / "test", 4, seed=1)
    for i in range(3):  # three test images that are byte-identical copies of training images
        shutil.copy(data / "train" / "square" / f"square_00{i}.png", data / "test" / "square" / f"copy{i}.png")
    for run_dir, extra in ((tmp_path / "run", ()), (tmp_path / "ft", FINETUNE)):
        r = _fit(data, run_dir, *extra).assert_ok()
        dup = [w for w in r.warnings() if "byte-identical" in w]
        assert len(dup) == 1 and dup[0].startswith("warning: 3 image(s) in test are byte-identical to training "
                                                   "images: the test figure is optimistic; e.g. "), r.err
        assert "copy0.png" in dup[0] and "square_000.png" in dup[0]
        assert metrics(run_dir)["duplicates_across_splits"] == 3
        # ...and the report a person reads says it too, not only the warning that scrolled past.
        assert "caution: 3 test image(s) are byte-identical" in (run_dir / "summary.txt").read_text()
    r = _extract(data, tmp_path / "codes").assert_ok()
    assert any("3 image(s) in test are byte-identical" in w for w in r.warnings())
    # Without copies, nothing is reported.
    for i in range(3):
        (data / "test" / "square" / f"copy{i}.png").unlink()
    r = _fit(data, tmp_path / "clean").assert_ok()
    assert not any("byte-identical" in w for w in r.warnings())
    assert metrics(tmp_path / "clean")["duplicates_across_splits"] == 0
    assert "byte-identical" not in (tmp_path / "clean" / "summary.txt").read_text()


def test_size_that_tells_the_class_is_warned_and_reported(tmp_path: Path) -> None:
    from headstart.data import ImageFolder
    from headstart.fit.checks import size_cue

    data = tmp_path / "data"
    make_class_folder(data, 24)
    for f in (data / "circle").glob("*.png"):  # the circles come from another source, in another size
        Image.open(f).resize((48, 48)).save(f)
    r = _fit(data, tmp_path / "run").assert_ok()
    cue = [w for w in r.warnings() if "image size tells the class" in w]
    assert len(cue) == 1 and "--downscale" in cue[0], r.err
    assert metrics(tmp_path / "run")["cautions"] == [cue[0].removeprefix("warning: ")]
    assert "caution: image size tells the class" in (tmp_path / "run" / "summary.txt").read_text()
    # Same sizes in every class, or sizes mixed evenly across classes: nothing to say.
    even = make_class_folder(tmp_path / "even", 24)
    assert size_cue(ImageFolder(even).splits["train"], ["circle", "square"]) is None
    for i, f in enumerate(sorted(even.rglob("*.png"))):
        if i % 2:
            Image.open(f).resize((56, 56)).save(f)
    ds = ImageFolder(even)
    assert size_cue(ds.splits["train"], ds.classes) is None


# -- what the terminal shows -----------------------------------------------------------------------------------
def test_non_utf8_file_name_is_printed_as_its_bytes(tmp_path: Path, model: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On a strict UTF-8 stdout (PYTHONIOENCODING=utf-8, many desktops) a name such as b"caf\\xe9.png" used
    to crash predict with UnicodeEncodeError; it is printed as the bytes it is, as `ls` does."""
    img = Image.fromarray(class_image(1, np.random.default_rng(0)))
    path = write_non_utf8(tmp_path, b"caf\xe9.png", img)
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", strict)
    monkeypatch.setattr(sys, "argv", ["headstart", "predict", str(path), "--model", str(model), "-k", "1",
                                      "--backend", "torch"])
    from headstart.cli import main

    try:
        main()
    except SystemExit as e:
        assert not e.code
    strict.flush()
    assert os.fsencode(path) in raw.getvalue()


def test_file_names_with_brackets_are_printed_verbatim(tmp_path: Path, model: Path) -> None:
    """Rich markup must not eat "[red]" in a file name: the printed path has to be the real one."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(class_image(0, np.random.default_rng(0))).save(d / "[bold]cat.png")
    (d / "[red]broken.png").write_text("not an image")
    r = run("predict", d, "--model", model, "-k", "1", "--backend", "torch").assert_ok()
    assert f"{d}/[bold]cat.png" in r.out
    assert f"{d}/[red]broken.png" in r.err


def test_image_symlinks_into_another_class_are_not_read(tmp_path: Path) -> None:
    """``circle/x.png -> ../square/y.png`` would give a square the circle label as well."""
    data = make_class_folder(tmp_path / "data", 8)
    for i in range(2):
        os.symlink(data / "square" / f"square_00{i}.png", data / "circle" / f"linked{i}.png")
    os.symlink(data / "circle" / "circle_000.png", data / "circle" / "same_class_link.png")  # harmless: kept
    r = _fit(data, tmp_path / "run").assert_ok()
    assert any("2 image(s)" in w and "symlinks to another part of the dataset" in w for w in r.warnings()), r.err
    _assert_labels_follow_real_folders(tmp_path / "run", data)
    rec = json.loads((tmp_path / "run" / "splits.json").read_text())
    paths = [p for s in rec["splits"].values() for p in s["paths"]]
    assert len(paths) == 17 and not any("linked" in p for p in paths)
