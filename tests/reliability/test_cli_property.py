"""Property (issue 13, acceptance): random option values on random small folders of generated files (good, bad,
odd shapes, odd names), written into a few shared output folders, through the real entry point. Every run
either succeeds, naming each file it skipped or left out, or prints exactly one `error:` line with exit 2;
never a traceback; and never a run directory whose files disagree (run.json's fingerprints hold, and config,
splits, metrics and bundle describe one run). Bounded: the tiny backbone, 1 epoch, at most ~20 images."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from headstart.fit.rundir import check_run
from headstart.io import MANIFEST

from .corpus import FILE_ITEMS, class_image
from .helpers import TINY, run

NFC, NFD = "caf\u00e9", "cafe\u0301"
CLASS_NAMES = ["cat", "Cat", "dog", NFC, NFD, "[red]x", "a b", "ü"]


def _good(d: Path, c: int, s: int, name: str = "") -> Path:
    p = d / (name or f"img{s}.png")
    Image.fromarray(class_image(c, np.random.default_rng(s), 24)).save(p, format="PNG")
    return p


def _jpeg_named_heic(d: Path, c: int, s: int) -> Path:
    p = d / f"phone{s}.heic"
    Image.fromarray(class_image(c, np.random.default_rng(s), 24)).save(p, format="JPEG")
    return p


def _real_heic(d: Path, c: int, s: int) -> Path:
    (p := d / f"real{s}.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    return p


def _notes(d: Path, c: int, s: int) -> Path:
    (p := d / f"notes{s}.txt").write_text("not an image")
    return p


def _thin(d: Path, c: int, s: int) -> Path:
    p = d / f"thin{s}.png"
    Image.new("RGB", (1, 2000), (c * 90, 0, 0)).save(p)  # beyond 1000:1: skipped with its name
    return p


def _odd_name(d: Path, c: int, s: int) -> Path:
    return _good(d, c, s, name=f"new\nline [b]{s} {NFD}.png")


# name -> builder(folder, class index, seed) -> path; the corpus's items (truncated, zero-byte, CMYK, 16-bit,
# bombs, symlink loops...) and a few of this issue's.
KINDS: dict[str, Any] = {
    **{item.name: item.build for item in FILE_ITEMS if item.name != "unreadable_file"},  # root reads it anyway
    "jpeg_named_heic": _jpeg_named_heic, "real_heic": _real_heic, "notes_txt": _notes, "thin_1x2000": _thin,
    "odd_name": _odd_name,
}

# flag -> (values that may work, values that never do); the first are drawn three times in four.
OPTIONS: dict[str, tuple[list[str], list[str]]] = {
    "--strategy": (["linear", "finetune", "auto"], ["both"]),
    "--val-fraction": (["0", "0.15", "0.5"], ["0.9", "1", "-0.1", "abc"]),
    "--test-fraction": (["0.2", "0.5"], ["0", "0.99", "nan"]),
    "--cv-folds": (["2", "3"], ["1", "x"]),
    "--seed": (["0", "3"], ["-1"]),
    "--layer": (["pooled", "auto", "stage1,pooled"], ["stage9", ""]),
    "--head": (["softmax", "svm"], ["tree"]),
    "--C": (["0", "1", "1e-3"], ["nan", "inf", "-1"]),
    "--head-init": (["probe", "random"], ["zero"]),
    "--freeze": (["1", "2"], ["9", "-1"]),
    "--batch-size": (["auto", "1", "4"], ["-2", "many"]),
    "--tta": (["none", "flip"], ["bogus"]),
}


@st.composite
def _folder(draw: st.DrawFn) -> dict[str, Any]:
    one = draw(st.integers(0, 9)) == 0  # a single class now and then
    names = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=1 if one else 2, max_size=1 if one else 3,
                          unique=True))
    split = draw(st.booleans())
    files = {}
    for split_name in (("train", "test") if split else ("",)):
        for c, name in enumerate(names):
            good = draw(st.integers(0, 6) if draw(st.integers(0, 5)) == 0 else st.integers(3, 6))
            odd = draw(st.lists(st.sampled_from(sorted(KINDS)), max_size=2))
            files[(split_name, c, name)] = (good, odd)
    return {"classes": names, "split": split, "files": files}


@st.composite
def _options(draw: st.DrawFn) -> list[str]:
    args: list[str] = []
    for flag in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True)):
        may_work, never = OPTIONS[flag]
        args += [flag, draw(st.sampled_from(never if draw(st.integers(0, 3)) == 0 else may_work))]
    if draw(st.booleans()):
        args.append("--overwrite")
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli_property")


_counter = itertools.count()


def _build(root: Path, spec: dict[str, Any]) -> list[Path]:
    """Writes the folder; returns the odd files it holds."""
    odd_files = []
    seeds = itertools.count(1)
    for (split_name, c, name), (good, odd) in spec["files"].items():
        d = root / split_name / name if split_name else root / name
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(good):
            _good(d, c, next(seeds))
        for k, kind in enumerate(odd):
            sub = d / f"{kind}{k}"  # its own folder: two items may use one file name
            sub.mkdir()
            odd_files.append(KINDS[kind](sub, c, next(seeds)))
    return odd_files


def _printable(name: str) -> bool:
    return all(unicodedata.category(ch) not in ("Cc", "Cs") for ch in name) and "[" not in name


def _files_agree(out: Path) -> None:
    """A run directory whose files are one run's: run.json's fingerprints hold (check_run), and config,
    splits, metrics and bundle name the same classes and strategy."""
    check_run(out)  # raises when a file does not belong to the run that run.json records
    if not (out / "metrics.json").is_file():
        return
    m = json.loads((out / "metrics.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert m["classes"] == splits["classes"] == bundle["classes"]
    made_by = "auto" if "auto" in m else m["strategy"]  # auto's run holds the kept candidate's metrics
    assert f'strategy = "{made_by}"' in (out / "config.toml").read_text()
    n = sum(len(s["paths"]) for s in splits["splits"].values())
    assert sum(m["counts"].values()) + len(m["skipped_files"]) == n


# 30 examples in the fast suite (~20 s); HEADSTART_PROPERTY_EXAMPLES=300 for a longer hunt.
@settings(max_examples=int(os.environ.get("HEADSTART_PROPERTY_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=_folder(), options=_options(), out_index=st.integers(0, 5), predict=st.booleans())
def test_any_folder_and_options_succeed_with_named_warnings_or_fail_in_one_line(
        spec: dict[str, Any], options: list[str], out_index: int, predict: bool, workspace: Path) -> None:
    data = workspace / f"data{next(_counter)}"
    odd_files = _build(data, spec)
    n = next(_counter)
    # One time in three a folder shared between examples (runs meet runs of other configs), else a new one.
    out = workspace / (f"run{out_index}" if out_index < 2 else f"new{n}")
    base = ["--epochs", "1", "--freeze", "1"]  # fine-tuning (auto's candidate too) kept to one short epoch
    result = run("fit", data, "--out", out, "--cache-dir", workspace / "cache", *TINY, *base, *options)
    assert "Traceback" not in result.err + result.out
    if out.is_dir() and (out / MANIFEST).is_file():
        _files_agree(out)
    if result.code != 0:
        line = result.assert_fails()  # exit 2, exactly one error: line
        event(f"refused: {line[7:47]}")
        shutil.rmtree(data)
        return
    event("ran")
    result.assert_ok()
    _files_agree(out)
    m = json.loads((out / "metrics.json").read_text())
    # Every file it did not use is named: skipped (undecodable) or left out (not an image).
    unused = [Path(f["path"]) for f in m["skipped_files"]] + [Path(p) for p in m["left_out_files"]]
    for p in unused:
        if _printable(p.name):
            assert p.name in result.err, (p, result.err)
    used = {Path(p).name for s in json.loads((out / "splits.json").read_text())["splits"].values()
            for p in s["paths"]}
    for p in odd_files:  # each odd file was used or named
        assert p.name in used or p in unused, (p, result.err)
    if predict:
        pred = run("predict", data, "-m", out, "--backend", "torch")
        assert "Traceback" not in pred.err
        if pred.code == 0:
            n = sum(1 for ln in pred.out.splitlines() if ln.strip())
            assert n == m["counts"]["train"] + m["counts"]["val"] + m["counts"]["test"], pred.out  # a line each
        else:
            pred.assert_fails()
    shutil.rmtree(data)
