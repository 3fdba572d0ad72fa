"""Parser errors, odd paths and Ctrl-C as one line each (issue 13, items 9, 16, 17)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from headstart.io import LOCK_NAME

from .helpers import TINY, make_class_folder, run, spawn


@pytest.mark.parametrize("args,phrases", [
    (["fit", "data", "--epochs", "abc"], ["--epochs", "abc", "headstart fit --help"]),
    (["fit", "data", "--epoch", "3"], ["no such option --epoch", "did you mean --epochs?"]),
    (["predict", "x.jpg", "--top-k", "0"], ["--top-k", "headstart predict --help"]),
    (["frobnicate"], ["frobnicate", "headstart --help"]),
])
def test_usage_errors_are_one_error_line(args: list[str], phrases: list[str]) -> None:
    result = run(*args)
    result.assert_fails(*phrases)
    assert "╭" not in result.err and "Usage:" not in result.err  # no box, no usage block


def test_a_far_option_gets_no_suggestion() -> None:
    line = run("fit", "data", "--zzz", "1").assert_fails("no such option --zzz")
    assert "did you mean" not in line


@pytest.mark.parametrize("path,phrase", [("https://example.com/cat.jpg", "is a URL"), ("", "empty path")])
def test_predict_refuses_urls_and_empty_paths(path: str, phrase: str) -> None:
    run("predict", path, "-m", "tiny_test", "--backend", "torch").assert_fails(phrase)


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")
def test_ctrl_c_says_what_was_kept(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 10, size=24)
    out = tmp_path / "run"
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: give the child the
    # interactive default (KeyboardInterrupt), whatever started this test run.
    child = spawn(["fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *TINY],
                  setup="import signal; signal.signal(signal.SIGINT, signal.default_int_handler)")
    deadline = time.monotonic() + 120
    while not ((out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().split()[:1] == [str(child.pid)]):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-3000:]
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err and "saved" in err


def test_no_test_split_is_refused_before_training(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", 6, size=24)
    out = tmp_path / "run"
    run("fit", data, "--out", out, "--test-fraction", "0", *TINY).assert_fails("--test-fraction", "test/ folder")
    assert not (out / "metrics.json").exists() and not (out / "config.toml").exists()
