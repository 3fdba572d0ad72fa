"""One writer per run/output directory, and run directories whose files belong together (issue 13, items 1-3).

Races are forced, not hoped for: the first writer is stopped (SIGSTOP) while it holds the directory's lock,
the second runs to its end, then the first continues. That is the interleaving that mixed two runs' files
before the lock, reproduced every time instead of 1 time in 20.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import HeadstartError
from headstart.features import load_codes
from headstart.io import LOCK_NAME

from .helpers import REPO, TINY, make_class_folder, metrics, run, spawn

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("conc") / "data", 10, size=24)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same classes and count as ``data``, other pictures: codes of the same shape, different values."""
    return make_class_folder(tmp_path_factory.mktemp("conc-other") / "data", 10, size=24, seed=1)


@contextmanager
def stopped_holding_lock(args: list[str | Path], out: Path) -> Iterator[subprocess.Popen[str]]:
    """A ``headstart`` child process, stopped once it holds ``out``'s lock (its pid is in the lock file)."""
    child = spawn(args)
    try:
        deadline = time.monotonic() + 120
        lock = out / LOCK_NAME
        while not (lock.is_file() and lock.read_text().split()[:1] == [str(child.pid)]):
            assert child.poll() is None, f"the first writer ended early:\n{child.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the first writer never took the lock"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGSTOP)
        yield child
    finally:
        os.kill(child.pid, signal.SIGCONT)


def finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = child.communicate(timeout=180)
    return child.returncode, err


def one_error_line(code: int, err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, f"exit {code}\n{err[-3000:]}"
    return lines[0]


def test_two_fits_into_one_out_one_wins_and_the_run_is_whole(data: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    first = ["fit", data, "--out", out, "--cache-dir", cache, "--seed", "0", *TINY]
    with stopped_holding_lock(first, out) as a:
        b = spawn(["fit", data, "--out", out, "--cache-dir", cache, "--seed", "1", *TINY])
        line = one_error_line(*finish(b))
        assert f"PID {a.pid}" in line and "another headstart process" in line and "--out" in line
    code, err = finish(a)
    assert code == 0, err[-3000:]
    # Every file is the first run's: the figure `evaluate` reports is the one fit measured.
    assert "seed = 0" in (out / "config.toml").read_text()
    result = json.loads(run("evaluate", out, "--json", "--backend", "torch").assert_ok().out)
    assert result["runs"][0]["accuracy"] == metrics(out)["test"]["accuracy"]
    assert json.loads((out / "run.json").read_text())["run_id"]


def test_two_extracts_into_one_out_never_mix(data: Path, other: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "codes", tmp_path / "cache"
    with stopped_holding_lock(["extract", data, "--out", out, "--cache-dir", cache, *TINY], out) as a:
        b = spawn(["extract", other, "--out", out, "--cache-dir", cache, *TINY])
        assert f"PID {a.pid}" in one_error_line(*finish(b))
    code, err = finish(a)
    assert code == 0, err[-3000:]
    index, codes = load_codes(out)
    assert all(r["path"].startswith(str(data)) for r in index["rows"])
    # The codes are those of the rows' images: equal to an extraction of `data` alone.
    run("extract", data, "--out", tmp_path / "alone", "--cache-dir", tmp_path / "cache2", *TINY).assert_ok()
    _, alone = load_codes(tmp_path / "alone")
    np.testing.assert_array_equal(codes["pooled"], alone["pooled"])


def test_extract_with_other_taps_leaves_no_orphan_and_foreign_codes_are_refused(data: Path, other: Path,
                                                                             tmp_path: Path) -> None:
    out, cache = tmp_path / "codes", tmp_path / "cache"
    run("extract", data, "--out", out, "--cache-dir", cache, "--layer", "stage1,pooled", *TINY).assert_ok()
    run("extract", other, "--out", out, "--cache-dir", cache, *TINY).assert_ok()
    assert sorted(p.name for p in out.glob("codes_*.npy")) == ["codes_pooled.npy"]  # stage1 was the other's
    index, _ = load_codes(out)
    assert all(r["path"].startswith(str(other)) for r in index["rows"])
    # Another extraction's codes of the same shape, put beside this index: refused, never paired silently.
    run("extract", data, "--out", tmp_path / "b", "--cache-dir", cache, *TINY).assert_ok()
    shutil.copy(tmp_path / "b" / "codes_pooled.npy", out / "codes_pooled.npy")
    with pytest.raises(HeadstartError, match="does not belong to extraction"):
        load_codes(out)


def test_fit_over_another_run_needs_overwrite_which_clears_it(data: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    base = ["fit", data, "--out", out, "--cache-dir", cache, *TINY]
    run(*base, "--strategy", "finetune", "--epochs", "1", "--freeze", "1", "--batch-size", "8").assert_ok()
    assert (out / "checkpoints").is_dir() and (out / "curves.jsonl").is_file()
    before = (out / "metrics.json").read_bytes()
    line = run(*base).assert_fails("holds another run", "--overwrite")
    assert "strategy" in line  # says what differs
    assert (out / "metrics.json").read_bytes() == before  # refused before anything was written
    run(*base, "--overwrite").assert_ok()
    left = {p.name for p in out.iterdir()}
    assert not left & {"checkpoints", "curves.jsonl", "wise_start_head.safetensors"}, left
    assert metrics(out)["strategy"] == "linear"
    run(*base).assert_ok()  # the same command again is the same run: no --overwrite needed (crash reruns)


def test_readers_refuse_files_of_another_run(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, "0"), (b, "1")):
        run("fit", data, "--out", out, "--cache-dir", cache, "--seed", seed, *TINY).assert_ok()
    image = next((data / "circle").glob("*.png"))
    run("predict", image, "-m", a, "--backend", "torch").assert_ok()
    shutil.copy(b / "splits.json", a / "splits.json")  # the other run's test split: images a trained on
    run("evaluate", a, "--backend", "torch").assert_fails(f"{a / 'splits.json'}", "does not belong to run")
    shutil.copy(b / "bundle" / "bundle.json", a / "bundle" / "bundle.json")
    shutil.copy(b / "bundle" / "head.safetensors", a / "bundle" / "head.safetensors")
    run("predict", image, "-m", a, "--backend", "torch").assert_fails("bundle.json", "does not belong to run")


def test_readers_wait_for_a_writer_and_name_it(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run("fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *TINY).assert_ok()
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time\nfrom headstart.io import lock_dir\nwith lock_dir(sys.argv[1]):\n"
                                "    print('held', flush=True)\n    time.sleep(120)\n"), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        run("evaluate", out, "--backend", "torch").assert_fails(f"PID {holder.pid}", "wait for it")
        run("fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *TINY).assert_fails(f"PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    run("evaluate", out, "--backend", "torch").assert_ok()  # the OS dropped the killed holder's lock


def test_output_inside_the_data_folder_is_refused(data: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(data, tmp_path / "data")
    run("fit", copy, "--out", copy / "runs" / "x", *TINY).assert_fails("inside the image folder")
    run("extract", copy, "--out", copy / "codes", *TINY).assert_fails("inside the image folder")
    assert not (copy / "runs").exists() and not (copy / "codes").exists()
