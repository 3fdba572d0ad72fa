"""Same seed, same CPU: identical metrics.json for both strategies; the seed is recorded; another seed gives
another split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .helpers import LINEAR, TINY, make_class_folder, metrics, run, without_timing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FINETUNE = ("--strategy", "finetune", "--epochs", "2", "--freeze", "1", "--batch-size", "8")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("repro") / "data", 10)


@pytest.mark.parametrize("strategy", ["linear", "finetune", "auto"])
def test_same_seed_same_metrics_and_the_seed_is_recorded(data: Path, tmp_path: Path, strategy: str) -> None:
    extra = {"finetune": FINETUNE, "linear": LINEAR, "auto": FINETUNE[2:]}[strategy]  # auto: the default
    for name in ("a", "b"):  # separate caches: the codes are recomputed, not shared
        run("fit", data, "--out", tmp_path / name, "--cache-dir", tmp_path / f"cache-{name}", "--seed", "7",
            *extra, *TINY).assert_ok()
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert without_timing(a) == without_timing(b)
    assert (tmp_path / "a" / "splits.json").read_bytes() == (tmp_path / "b" / "splits.json").read_bytes()
    assert a["seed"] == 7 and (a["strategy"] == strategy or strategy == "auto" and "auto" in a)  # auto: the kept
    assert tomllib.loads((tmp_path / "a" / "config.toml").read_text())["data"]["seed"] == 7
    if strategy == "finetune":
        curves = [(tmp_path / n / "curves.jsonl").read_text().splitlines() for n in ("a", "b")]
        strip = [[{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in c] for c in curves]
        assert strip[0] == strip[1]


def test_config_toml_reproduces_the_run(data: Path, tmp_path: Path) -> None:
    run("fit", data, "--out", tmp_path / "a", "--cache-dir", tmp_path / "cache", "--seed", "3", *TINY).assert_ok()
    run("fit", "--config", tmp_path / "a" / "config.toml", "--out", tmp_path / "b", "-q").assert_ok()
    assert without_timing(metrics(tmp_path / "a")) == without_timing(metrics(tmp_path / "b"))


def test_another_seed_gives_another_split(data: Path, tmp_path: Path) -> None:
    for seed in ("1", "2"):
        run("fit", data, "--out", tmp_path / seed, "--cache-dir", tmp_path / "cache", "--seed", seed,
            *TINY).assert_ok()
    splits = [json.loads((tmp_path / s / "splits.json").read_text())["splits"] for s in ("1", "2")]
    assert splits[0]["test"]["paths"] != splits[1]["test"]["paths"]
    assert sorted(p for s in splits[0].values() for p in s["paths"]) == \
        sorted(p for s in splits[1].values() for p in s["paths"])  # the same images, split differently
    assert [metrics(tmp_path / s)["seed"] for s in ("1", "2")] == [1, 2]
