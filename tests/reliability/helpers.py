"""Running the real ``headstart`` entry point, in-process or as a child process, and reading what it said."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from headstart.cli import main

from conftest import make_class_folder  # noqa: F401 (the tests import it from here with the other helpers)

REPO = Path(__file__).resolve().parents[2]
TINY = ("--model", "tiny_test", "--backend", "torch", "-q")
LINEAR = ("--strategy", "linear")  # for tests of the linear path (the default strategy is auto)


@dataclass
class Result:
    """What a user saw: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]

    def warnings(self) -> list[str]:
        """Each ``warning:`` block, with its indented continuation lines (the listed files)."""
        blocks: list[str] = []
        for ln in self.err.splitlines():
            if ln.startswith("warning:"):
                blocks.append(ln)
            elif ln.startswith("  ") and blocks:
                blocks[-1] += "\n" + ln
        return blocks

    def assert_ok(self) -> Result:
        assert self.code == 0, f"exit {self.code}\n{self.err[-3000:]}"
        assert "Traceback" not in self.err and not self.error_lines, self.err[-3000:]
        return self

    def assert_fails(self, *phrases: str) -> str:
        """Exit code 2, exactly one ``error:`` line containing ``phrases`` (case-insensitive), no traceback."""
        assert "Traceback" not in self.err + self.out, self.err[-3000:]
        assert self.code == 2, f"exit {self.code}\n{self.err[-3000:]}"
        assert len(self.error_lines) == 1, self.err[-3000:]
        line = self.error_lines[0]
        for phrase in phrases:
            assert phrase.lower() in line.lower(), f"{phrase!r} not in {line!r}"
        return line


def run(*args: str | Path) -> Result:
    """``headstart ARGS`` in this process, through the console-script entry point ``main()``.

    Warnings get a fresh registry (as in a new process, each distinct one shows once) and ``main``'s
    changes to the warnings machinery are undone afterwards.
    """
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["headstart", *map(str, args)]
    code = 0
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("default")
            try:
                main()
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


# A child process running the real entry point after test-only patches (``setup`` code) that slow it down
# enough to be killed mid-way; nothing else changes.
_CHILD = """
import sys, time
{setup}
from headstart.cli import main
sys.argv = ["headstart", *sys.argv[1:]]
main()
"""

SLOW_ENGINE = textwrap.dedent("""
    import headstart.features.extract as ex
    ex.extract_codes.__kwdefaults__["chunk_size"] = {chunk}  # small chunks: several commits to kill between
    _make = ex._make_engine
    def _slow(*a, **k):
        engine = _make(*a, **k)
        def run(batch):
            time.sleep({delay})
            return engine(batch)
        run.name = engine.name
        return run
    ex._make_engine = _slow
""")

SLOW_EPOCHS = textwrap.dedent("""
    import headstart.train.loop as loop
    _append = loop.append_curve
    def _slow_append(run_dir, row):  # the loop logs each epoch just before checkpointing it
        _append(run_dir, row)
        time.sleep({delay})
    loop.append_curve = _slow_append
""")


def spawn(args: list[str | Path], setup: str = "", **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(setup=setup), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, **kw)


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


_AUTO_CLOCK = ("advise_s", "total_s")  # auto's wall times; its candidates' too (measured, and estimated from them)
_CANDIDATE_CLOCK = ("estimated_s", "cost_s")


def without_timing(m: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without what the clock measured (the rest is the same on the same config and data)."""
    out = {k: v for k, v in m.items() if k != "timing"}
    if "auto" in out:
        auto = {k: v for k, v in out["auto"].items() if k not in _AUTO_CLOCK}
        auto["candidates"] = [{k: v for k, v in c.items() if k not in _CANDIDATE_CLOCK} for c in auto["candidates"]]
        out["auto"] = auto
    return out


def real_class(root: Path, rel: str) -> str:
    """The class folder a recorded image really lives in, symlinks resolved."""
    return Path(os.path.realpath(root / rel)).relative_to(os.path.realpath(root)).parts[0]
