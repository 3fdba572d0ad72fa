"""Property: any value of any config option either is refused up front (one `error:` line, exit 2, nothing
written, no image read) or gives a run that completes, on the tiny test backbone."""

from __future__ import annotations

import itertools
import math
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.config import FitConfig


def _all_fields(cls: type = FitConfig, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    default = cls()
    for f in fields(cls):
        value = getattr(default, f.name)
        if is_dataclass(value):
            out += _all_fields(type(value), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


FIELDS = _all_fields()
NUMBERS = [-3, -1, 0, 1, 2, 3, 0.0, 1e-3, 0.25, 0.5, 0.99, 1.0, 1.5, 2.5, -0.5, math.nan, math.inf, -math.inf]


def _values(f: Any) -> st.SearchStrategy[Any]:
    """Values of the field's own type (in and out of range) two times in three, anything else otherwise."""
    anything = st.one_of(st.sampled_from(NUMBERS), st.booleans(), st.text(max_size=6),
                         st.lists(st.sampled_from([0.0, 0.3, 0.8, 1.0, 1.5, -1.0]), max_size=3))
    default = f.default if f.default is not MISSING else None
    if f.metadata.get("choices"):
        typed = st.sampled_from(f.metadata["choices"])
    elif isinstance(default, bool):
        typed = st.booleans()
    elif isinstance(default, int):
        typed = st.integers(-2, 4)
    elif isinstance(default, float):
        typed = st.floats(-0.5, 2.5)
    elif isinstance(default, tuple):
        typed = st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 2.0)).map(list)
    else:
        typed = st.text(max_size=6)
    return st.one_of(typed, typed, anything)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, str, Any]:
    path, f = draw(st.sampled_from(FIELDS))
    return draw(st.sampled_from(["linear", "finetune"])), path, draw(_values(f))


def _nested(path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    d: dict[str, Any] = {leaf: value}
    for p in reversed(parents):
        d = {p: d}
    return d


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prop")
    make_class_folder(root / "images", n_per_class=10, classes=("circle", "square"), size=32)
    (root / "cwd").mkdir()
    return root


_counter = itertools.count()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cases())
def test_any_value_is_refused_up_front_or_runs(case: tuple[str, str, Any], workspace: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    strategy, path, value = case
    monkeypatch.chdir(workspace / "cwd")  # a drawn relative path (out, cache_dir) lands in the workspace
    out = workspace / "runs" / f"r{next(_counter)}"
    base = {"out": str(out), "strategy": strategy, "model": "tiny_test",
            "data": {"path": str(workspace / "images")},
            "engine": {"backend": "torch", "batch_size": 8, "cache_dir": str(workspace / "cache")},
            "finetune": {"epochs": 1, "freeze": 1}}
    cfg = _merge(base, _nested(path, value))
    toml = workspace / f"{out.name}.toml"
    toml.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    decoded: list[Any] = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (decoded.append(fp), real(fp, *a, **k))[1])
    code, stdout, err = run_cli(capsys, monkeypatch, "fit", "--config", str(toml), "--quiet")
    target = Path(cfg["out"]) if isinstance(cfg.get("out"), str) else out
    if cfg.get("out") == "":  # no run directory given: a new one under ./runs
        target = max((workspace / "cwd" / "runs").glob("images-*"), key=lambda p: p.stat().st_mtime_ns)
    event("ran" if code == 0 else "refused")
    if code == 0:
        assert (target / "metrics.json").is_file(), (case, stdout, err)
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (case, err)
    if "training diverged" in lines[0]:  # a legal value that trains badly (e.g. Adam's beta2 = 0): found out
        return                           # during training, reported in one line with what to change
    assert not out.exists(), (case, err)  # refused before the run directory was made
    assert not decoded, (case, err)  # and before any image was read
