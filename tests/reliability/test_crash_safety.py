"""Crash safety: SIGKILL at any point of `headstart extract` / `headstart fit` (both strategies), then a rerun
(or `fit --resume`), and a full disk at any write.

After a kill: no corrupt cache chunk or checkpoint, nothing already saved is computed again, and the final
results equal an uninterrupted run's. A full disk: one line saying the disk is full and where, and the
previous results intact and loadable.

The random-kill soak is ``@pytest.mark.slow``: ``make test-slow`` or
``pytest -m slow tests/reliability/test_crash_safety.py`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import headstart.features.extract as extract_module
import headstart.train.loop as loop_module
from headstart.bundle import load
from headstart.features import load_codes
from headstart.fit.rundir import check_run
from headstart.train.checkpoint import load_checkpoint

from .helpers import (
    SLOW_ENGINE,
    SLOW_EPOCHS,
    LINEAR,
    TINY,
    make_class_folder,
    metrics,
    run,
    spawn,
    without_timing,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

N_PER_CLASS = 60  # 120 images: with 16-image chunks, several commits to kill between
CHUNK, DELAY = 16, 0.04
FINETUNE = ("--strategy", "finetune", "--freeze", "1", "--batch-size", "8", "--epochs", "4")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("crash") / "data", N_PER_CLASS, size=24)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For fine-tuning: a few training steps per epoch keep each run around a second."""
    return make_class_folder(tmp_path_factory.mktemp("crash-small") / "data", 12, size=24)


# -- inspecting what a killed process left ---------------------------------------------------------------------
def cache_rows(cache: Path) -> list[str]:
    """The hashes of every cached code, after checking each chunk is complete and readable."""
    hashes: list[str] = []
    for chunk in sorted(cache.rglob("chunk-*.safetensors")):
        with safe_open(chunk, framework="numpy") as f:
            rows = json.loads(f.metadata()["hashes"])
            codes = f.get_tensor("codes")
        assert codes.shape[0] == len(rows) and np.isfinite(codes.astype(np.float32)).all(), chunk
        hashes += rows
    return hashes


def leftovers(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".tmp"]


def kill_when(child: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            pytest.fail(f"the command ended before it could be killed:\n{child.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "the command made no progress in time"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL


@contextmanager
def counting_images() -> Iterator[list[int]]:
    """Counts the images the backbone runs on (in this process) while the block runs."""
    seen: list[int] = []
    make = extract_module._make_engine

    def counted(*args: object, **kwargs: object) -> object:
        engine = make(*args, **kwargs)

        def run_batch(batch: np.ndarray) -> tuple[np.ndarray, ...]:
            seen.append(len(batch))
            return engine(batch)

        run_batch.name = engine.name  # type: ignore[attr-defined]
        return run_batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract_module, "_make_engine", counted)
        yield seen


def epoch_of(run_dir: Path) -> int:
    state = run_dir / "checkpoints" / "last" / "state.json"
    try:
        return int(json.loads(state.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def slow_extract() -> str:
    return SLOW_ENGINE.format(chunk=CHUNK, delay=DELAY)


# -- one deterministic kill per command ---------------------------------------------------------------------
def test_extract_killed_after_some_chunks_resumes_from_them(data: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "codes"
    args = ["extract", data, "--out", out, "--cache-dir", cache, "--batch-size", "8", *TINY]
    child = spawn(args, setup=slow_extract())
    kill_when(child, lambda: len(list(cache.rglob("chunk-*.safetensors"))) >= 2)
    committed = cache_rows(cache)
    assert 2 * CHUNK <= len(committed) < 2 * N_PER_CLASS and not (out / "index.json").exists()

    with counting_images() as seen:
        r = run(*args).assert_ok()
    assert sum(seen) == 2 * N_PER_CLASS - len(committed)  # what was saved is not computed again
    assert f"{2 * N_PER_CLASS - len(committed)} computed, {len(committed)} from cache" in r.out
    rows = cache_rows(cache)
    assert len(rows) == len(set(rows)) == 2 * N_PER_CLASS  # no code stored twice
    assert not leftovers(cache, out)

    ref = tmp_path / "ref"
    run("extract", data, "--out", ref, "--cache-dir", tmp_path / "cache2", "--batch-size", "8", *TINY).assert_ok()
    (idx, codes), (ref_idx, ref_codes) = load_codes(out), load_codes(ref)
    assert idx["rows"] == ref_idx["rows"]
    np.testing.assert_array_equal(codes["pooled"], ref_codes["pooled"])


def test_linear_fit_killed_mid_extraction_resumes_and_matches(data: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["fit", data, "--out", out, "--cache-dir", cache, "--batch-size", "8", *LINEAR, *TINY]
    child = spawn(args, setup=slow_extract())
    kill_when(child, lambda: len(list(cache.rglob("chunk-*.safetensors"))) >= 2)
    committed = len(cache_rows(cache))
    assert committed < 2 * N_PER_CLASS and not (out / "metrics.json").exists()

    with counting_images() as seen:
        run(*args).assert_ok()
    assert sum(seen) == 2 * N_PER_CLASS - committed
    ref = tmp_path / "ref"
    run("fit", data, "--out", ref, "--cache-dir", tmp_path / "cache2", "--batch-size", "8", *LINEAR, *TINY).assert_ok()
    assert without_timing(metrics(out)) == without_timing(metrics(ref))
    files = sorted((data / "circle").glob("*.png"))[:5]
    np.testing.assert_array_equal(load(out, backend="torch").predict_proba(files),
                                  load(ref, backend="torch").predict_proba(files))
    assert not leftovers(cache, out)


def test_finetune_killed_mid_training_resumes_from_its_checkpoint(small: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["fit", small, "--out", out, "--cache-dir", cache, *FINETUNE, *TINY]
    child = spawn(args, setup=SLOW_EPOCHS.format(delay=0.3))
    kill_when(child, lambda: epoch_of(out) >= 1)
    done = epoch_of(out)
    assert 1 <= done < 4 and not (out / "metrics.json").exists()

    saved: list[int] = []
    save = loop_module.save_checkpoint
    monkeypatch.setattr(loop_module, "save_checkpoint", lambda d, st, **k: saved.append(st.epoch) or save(d, st, **k))
    with counting_images() as seen:
        run("fit", "--resume", out, "-q").assert_ok()
    assert saved == list(range(done + 1, 5))  # finished epochs are not trained again
    assert sum(seen) == 0  # the probe's codes come from the cache
    curves = [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curves] == [1, 2, 3, 4]  # no epoch logged twice

    monkeypatch.undo()
    ref = tmp_path / "ref"
    run("fit", small, "--out", ref, "--cache-dir", tmp_path / "cache2", *FINETUNE, *TINY).assert_ok()
    assert without_timing(metrics(out)) == without_timing(metrics(ref))
    ref_curves = [json.loads(x) for x in (ref / "curves.jsonl").read_text().splitlines()]
    assert [c["val_loss"] for c in curves] == [c["val_loss"] for c in ref_curves]
    assert not leftovers(cache, out)


def test_auto_killed_while_fine_tuning_resumes_without_redoing_what_finished(small: Path, tmp_path: Path) -> None:
    """The default strategy killed in its fine-tuning candidate: --resume reads the plan back, keeps the
    finished linear candidate as it is, continues fine-tuning from its checkpoint, and ends as the same run
    as one never killed."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    ft = ("--freeze", "1", "--batch-size", "8", "--epochs", "4")  # the runner-up (small data: linear is the plan)
    child = spawn(["fit", small, "--out", out, "--cache-dir", cache, *ft, *TINY], setup=SLOW_EPOCHS.format(delay=0.3))
    cand = out / "candidates" / "finetune"
    kill_when(child, lambda: epoch_of(cand) >= 1)
    done = epoch_of(cand)
    linear = out / "candidates" / "linear" / "metrics.json"
    assert 1 <= done < 4 and linear.is_file() and not (out / "metrics.json").exists()
    before = (linear.stat().st_mtime_ns, (out / "advice.json").read_bytes())

    (tmp_path / "link").symlink_to(tmp_path)  # resumed by another spelling of its path
    resumed = run("fit", "--resume", tmp_path / "link" / "run").assert_ok()
    assert "resumed" in resumed.err and "finished before; kept as it is" in resumed.err
    assert (linear.stat().st_mtime_ns, (out / "advice.json").read_bytes()) == before
    assert [json.loads(x)["epoch"] for x in (cand / "curves.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    ref = tmp_path / "ref"
    run("fit", small, "--out", ref, "--cache-dir", tmp_path / "cache2", *ft, *TINY).assert_ok()
    assert without_timing(metrics(out)) == without_timing(metrics(ref))
    check_run(out)  # sealed: every file is the resumed run's
    assert "your options, kept over the plan's (runner-up): " in (out / "summary.txt").read_text()
    assert metrics(out)["auto"]["yours_over_plan"]["runner-up"]["finetune.epochs"]["yours"] == 4


def test_half_written_curve_line_is_dropped_on_resume(small: Path, tmp_path: Path) -> None:
    """A kill in the middle of appending to curves.jsonl leaves a partial last line: a resume used to die on
    it with a JSONDecodeError traceback."""
    out = tmp_path / "run"
    run("fit", small, "--out", out, "--cache-dir", tmp_path / "cache", *FINETUNE[:-2], "--epochs", "2",
        *TINY).assert_ok()
    with (out / "curves.jsonl").open("a") as f:
        f.write('{"epoch": 3, "lr": 0.1, "train_lo')  # cut off mid-line
    run("fit", "--resume", out, "-q").assert_ok()
    assert [json.loads(x)["epoch"] for x in (out / "curves.jsonl").read_text().splitlines()] == [1, 2]


# -- the random-kill soak ---------------------------------------------------------------------------------------
def _soak(data: Path, tmp_path: Path, command: str, kills: int, seed: int) -> None:
    """Kill ``command`` at ``kills`` random moments (seeded), rerunning after each, then let it finish."""
    rng = np.random.default_rng(seed)
    cache, out = tmp_path / "cache", tmp_path / "out"
    extra = FINETUNE if command == "finetune" else ("--batch-size", "8")
    verb = "extract" if command == "extract" else "fit"
    args = [verb, data, "--out", out, "--cache-dir", cache, *extra, *TINY]
    setup = slow_extract() + (SLOW_EPOCHS.format(delay=0.2) if command == "finetune" else "")

    def again() -> list[str | Path]:  # what a user would type after the machine went down
        return ["fit", "--resume", out, "-q"] if command == "finetune" and (out / "config.toml").exists() else args

    # An uninterrupted run, timed: its start-up (imports, until it creates --out) and its whole length.
    t0, ref_out = time.monotonic(), tmp_path / "ref"
    ref = spawn([verb, data, "--out", ref_out, "--cache-dir", tmp_path / "ref-cache", *extra, *TINY], setup=setup)
    while not ref_out.exists() and ref.poll() is None:
        time.sleep(0.005)
    startup = time.monotonic() - t0
    assert ref.wait(timeout=240) == 0, ref.communicate()[1][-3000:]
    full = time.monotonic() - t0
    killed = 0
    for k in range(kills):
        child = spawn(again(), setup=setup)
        # Most kills land in the work (hashing, extraction, chunk commits, training, checkpoints, bundle and
        # metrics writes), one in four during start-up.
        time.sleep(rng.uniform(0.0, startup) if k % 4 == 3 else rng.uniform(startup, full))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            killed += 1
        child.communicate()
        cache_rows(cache)  # every chunk complete and readable after every kill
        if (out / "checkpoints").exists() and epoch_of(out):
            load_checkpoint(out / "checkpoints")
    assert killed >= kills // 2, "most runs finished before the kill: the soak tested nothing"
    with counting_images() as seen:
        run(*again()).assert_ok()
    rows = cache_rows(cache)
    assert len(rows) == len(set(rows))  # no code computed and stored twice across all the kills
    assert sum(seen) <= len(list(data.rglob("*.png")))
    if command == "extract":
        (idx, codes), (ref_idx, ref_codes) = load_codes(out), load_codes(tmp_path / "ref")
        assert idx["rows"] == ref_idx["rows"]
        np.testing.assert_array_equal(codes["pooled"], ref_codes["pooled"])
    else:
        assert without_timing(metrics(out)) == without_timing(metrics(tmp_path / "ref"))
        load(out, backend="torch")
    if command == "finetune":
        assert [json.loads(x)["epoch"] for x in (out / "curves.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not leftovers(cache, out)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["extract", "linear", "finetune"])
def test_random_kill_soak(data: Path, small: Path, tmp_path: Path, command: str) -> None:
    _soak(small if command == "finetune" else data, tmp_path, command, kills=8,
          seed={"extract": 1, "linear": 2, "finetune": 3}[command])


# -- a full disk ---------------------------------------------------------------------------------------------------
def fail_fsync(monkeypatch: pytest.MonkeyPatch, name_part: str, err: int = errno.ENOSPC, after: int = 0) -> None:
    """Make the OS refuse (``err``) to flush files whose name contains ``name_part``, after ``after`` successes.

    Every writer (cache chunks, run files, bundles, checkpoints) writes a temp file and fsyncs it before the
    rename: this is the point where a full disk shows, with the temp half-written and the old file in place.
    """
    real, count = os.fsync, [0]

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if name_part in os.path.basename(path) and not os.path.isdir(path):
            count[0] += 1
            if count[0] > after:
                raise OSError(err, os.strerror(err))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


pytestmark_linux = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")


@pytestmark_linux
def test_disk_full_while_caching_codes_keeps_the_chunks_before(data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache, out = tmp_path / "cache", tmp_path / "codes"
    args = ["extract", data, "--out", out, "--cache-dir", cache, *TINY]
    monkeypatch.setattr(extract_module.extract_codes, "__kwdefaults__",
                        {**extract_module.extract_codes.__kwdefaults__, "chunk_size": CHUNK})
    with monkeypatch.context() as mp:
        fail_fsync(mp, "chunk-", after=2)
        line = run(*args).assert_fails("No space left on device", "free some space")
    assert str(cache) in line and "chunk-" in line  # says where
    assert len(cache_rows(cache)) == 2 * CHUNK and not leftovers(cache, out)
    with counting_images() as seen:  # space freed: the rerun keeps what was saved
        run(*args).assert_ok()
    assert sum(seen) == 2 * N_PER_CLASS - 2 * CHUNK


@pytestmark_linux
@pytest.mark.parametrize("target", ["metrics.json", "head.safetensors", "bundle.json", "config.toml"])
def test_disk_full_while_writing_a_run_leaves_the_previous_run_intact(data: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      target: str) -> None:
    out = tmp_path / "run"
    args = ["fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *LINEAR, *TINY]
    run(*args).assert_ok()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "summary.txt"}
    files = sorted((data / "square").glob("*.png"))[:4]
    probs = load(out, backend="torch").predict_proba(files)
    with monkeypatch.context() as mp:
        fail_fsync(mp, target)
        # The same command again (another config would need --overwrite, which clears the run first).
        line = run(*args).assert_fails("No space left on device", "free some space")
    assert str(out) in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "summary.txt"}
    assert not leftovers(out)
    # Each file is the old one or a complete new one; the results a user relies on are the old ones.
    assert after[Path("metrics.json")] == before[Path("metrics.json")]
    if target != "metrics.json":
        assert after[Path("bundle/head.safetensors")] == before[Path("bundle/head.safetensors")]
        np.testing.assert_array_equal(load(out, backend="torch").predict_proba(files), probs)
    else:  # the new bundle was published before metrics.json failed: whole, and loadable
        load(out, backend="torch").predict_proba(files)


@pytestmark_linux
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(small: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["fit", small, "--out", out, "--cache-dir", tmp_path / "cache", *FINETUNE[:-2], "--epochs", "3", *TINY]
    with monkeypatch.context() as mp:
        fail_fsync(mp, "tensors-e0002")
        line = run(*args).assert_fails("No space left on device", "free some space")
    assert "tensors-e0002" in line
    assert load_checkpoint(out / "checkpoints").epoch == 1 and not leftovers(out)
    run("fit", "--resume", out, "-q").assert_ok()  # space freed: training continues from epoch 1
    assert [json.loads(x)["epoch"] for x in (out / "curves.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytestmark_linux
@pytest.mark.parametrize("err,advice", [(errno.EROFS, "read-only"), (errno.EACCES, "check the permissions"),
                                        (errno.EDQUOT, "quota")])
def test_other_unwritable_disks_are_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             err: int, advice: str) -> None:
    fail_fsync(monkeypatch, "config.toml", err=err)
    run("fit", data, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *TINY).assert_fails(
        os.strerror(err), advice, "config.toml")


def test_a_real_full_disk(data: Path, tmp_path: Path) -> None:
    """The same on a real 256 KiB tmpfs, filled up: no monkeypatching at all."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the fsync-ENOSPC tests above cover "
                    "the same code paths")
    try:
        out = mnt / "run"
        args = ["fit", data, "--out", out, "--cache-dir", tmp_path / "cache", *LINEAR, *TINY]
        run(*args).assert_ok()
        before = (out / "metrics.json").read_bytes()
        ballast = mnt / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last page (unbuffered)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        line = run(*args).assert_fails("No space left on device", "free some space")
        assert str(out) in line
        assert (out / "metrics.json").read_bytes() == before and not leftovers(out)
        load(out, backend="torch")
        ballast.unlink()
        run(*args, "--C", "0.5", "--overwrite").assert_ok()  # another config: replaces the run
        assert metrics(out)["C"] == 0.5
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
