"""One source of truth for options: FitConfig's declared settings drive the API, the TOML file and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from headstart.cli_fit import config_from_argv, default_of, option_fields
from headstart.config import DataConfig, FitConfig, _stages_and_taps, from_dict, to_dict
from headstart.errors import ConfigError, HeadstartError

ROOT = Path(__file__).resolve().parents[1]
BASE = FitConfig(out="R", data=DataConfig(path="DATA"))


def _flat(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else out.__setitem__(f"{prefix}{k}", v)

    walk(to_dict(cfg), "")
    return out


def _changed(cfg: FitConfig, base: FitConfig = BASE) -> dict[str, Any]:
    a, b = _flat(cfg), _flat(base)
    return {k: a[k] for k in a if a[k] != b[k]}


def test_empty_sections_keep_the_parents_defaults() -> None:
    # The defect: nested tables were built from their class defaults (weight decay 1e-4, no warm-up, scale 0.25).
    cfg = from_dict(FitConfig, {"finetune": {"optim": {}, "schedule": {}, "augment": {}}})
    assert cfg == FitConfig()
    partial = from_dict(FitConfig, {"finetune": {"optim": {"lr": 3e-4}}})
    assert _changed(partial, FitConfig()) == {"finetune.optim.lr": 3e-4}


def test_cli_without_flags_is_exactly_the_api_default() -> None:
    assert config_from_argv(["DATA", "--out", "R"]) == BASE


def _other_value(path: str, default: Any) -> tuple[list[str], Any]:
    """A valid non-default value for a flag: (argv words, expected field value)."""
    f = dict(option_fields())[path]
    if path == "engine.batch_size":
        return ["16"], 16
    if path == "linear.layer":
        tap = _stages_and_taps(BASE.model)[1][2]
        return [tap], tap
    if path == "model":
        return ["efficientnet_lite1"], "efficientnet_lite1"
    if f.metadata.get("choices"):
        value = next(c for c in f.metadata["choices"] if c not in (default, ""))
        return [str(value)], value
    if isinstance(default, bool):
        return [], not default
    if isinstance(default, int):
        return [str(default + 1)], default + 1
    if isinstance(default, float):
        value = default / 2 if default > 0 else 0.5
        return [repr(value)], value
    return ["somewhere"], "somewhere"


@pytest.mark.parametrize("path", [p for p, _ in option_fields() if p != "out"])
def test_each_flag_changes_exactly_its_field(path: str) -> None:
    f = dict(option_fields())[path]
    default = default_of(path)
    words, expected = _other_value(path, default)
    flag = f.metadata["flag"][0]
    if isinstance(default, bool):
        flag = flag if expected else f"--no-{flag[2:]}"
    argv = ["DATA", "--out", "R", flag, *words]
    extra = {}
    if path == "finetune.snapshots":  # snapshots need a schedule with restarts: that flag changes its own field
        argv += ["--schedule", "sgdr"]
        extra = {"finetune.schedule.name": "sgdr"}
    assert _changed(config_from_argv(argv)) == {path: expected} | extra


def test_compound_flags() -> None:
    off = config_from_argv(["DATA", "--out", "R", "--no-augment"]).finetune.augment
    assert not off.enabled
    jitter = _changed(config_from_argv(["DATA", "--out", "R", "--color-jitter", "0.5"]))
    assert jitter == {f"finetune.augment.{k}": 0.5 for k in ("brightness", "contrast", "saturation")}
    # --augment after a config that turned it off restores the default augmentation, every part of it
    assert config_from_argv(["DATA", "--out", "R", "--no-augment", "--augment"]) == config_from_argv(["DATA", "--out",
                                                                                                      "R"])
    # a single-field flag wins over a compound one, whatever their order
    assert config_from_argv(["DATA", "--out", "R", "--crop", "scale_jitter", "--no-augment"]).finetune.augment.crop \
        == "scale_jitter"
    assert config_from_argv(["DATA", "--out", "R", "--batch-size", "auto"]).engine.batch_size == 0


def test_config_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[finetune]\nepochs = 3\n[finetune.optim]\nlr = 0.01\n', encoding="utf-8")
    cfg = config_from_argv(["DATA", "--out", "R", "--config", str(toml), "--lr", "0.02"])
    assert _changed(cfg) == {"finetune.epochs": 3, "finetune.optim.lr": 0.02}
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + toml.read_bytes())
    assert config_from_argv(["DATA", "--out", "R", "--config", str(bom)]).finetune.epochs == 3
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'model = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config_from_argv(["DATA", "--out", "R", "--config", str(latin)])


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "1.5"], r"finetune.dropout must be >= 0 and < 1; got 1.5 \(--dropout\)"),
    (["--drop-path", "-1"], r"finetune.drop_path must be >= 0 and < 1; got -1.0"),
    (["--label-smoothing", "2"], r"finetune.label_smoothing must be >= 0 and < 1; got 2.0"),
    (["--patience", "-3"], r"finetune.patience must be >= 1; got -3"),
    (["--cv-folds", "1"], r"linear.cv_folds must be >= 2; got 1"),
    (["--lr", "nan"], r"finetune.optim.lr must be a finite number; got nan"),
    (["--freeze", "99", "--strategy", "finetune"], r"finetune.freeze must be <= \d+, the number of stages"),
    (["--layer", "stage99"], r"linear.layer must be auto or taps of efficientnet_lite0"),
    (["--snapshots"], r"needs finetune.schedule.name = 'sgdr'"),
    (["--warmup", "20"], r"warmup_epochs must be <= finetune.epochs \(15\); got 20"),
    (["--model", "resnet"], r"unknown model 'resnet'"),
])
def test_bad_values_are_refused_with_the_option_rule_and_value(argv: list[str], message: str) -> None:
    with pytest.raises(HeadstartError, match=message):
        config_from_argv(["DATA", "--out", "R", *argv])


def test_types_are_checked_in_toml_and_api() -> None:
    with pytest.raises(ConfigError, match="finetune.epochs must be an integer; got 'ten'"):
        from_dict(FitConfig, {"finetune": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="finetune.freeze_bn must be true or false; got 1"):
        from_dict(FitConfig, {"finetune": {"freeze_bn": 1}})
    assert from_dict(FitConfig, {"finetune": {"optim": {"lr": 1}}}).finetune.optim.lr == 1.0  # TOML writes 1
    with pytest.raises(ConfigError, match="unknown option finetune.optim.learning_rate"):
        from_dict(FitConfig, {"finetune": {"optim": {"learning_rate": 1}}})
    with pytest.raises(ConfigError, match="data.val_fraction must be >= 0 and < 1; got 1.0"):
        dataclasses.replace(BASE, data=DataConfig(val_fraction=1.0))


def _bench_accuracy() -> Any:
    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "benchmarks" / "bench_accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = module
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_command_builds_the_config_its_row_runs() -> None:
    bench = _bench_accuracy()
    for name, (_, flags) in bench.CONFIGS.items():
        row = bench.row_config(name, Path("DATA"), Path("R")).validate()
        assert config_from_argv(["DATA", "--out", "R", *flags.split()]) == row, name
    # the defaults, spelled out, are the defaults; the old ones are not
    assert bench.row_config("ft_k3_robust_ema_tta", Path("D"), Path("R")) == bench.row_config("ft_default", Path("D"),
                                                                                                Path("R"))
    assert bench.row_config("ft_old_default", Path("D"), Path("R")) != bench.row_config("ft_default", Path("D"),
                                                                                          Path("R"))
