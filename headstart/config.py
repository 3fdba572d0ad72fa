"""Run configuration: frozen dataclasses, one section per pipeline stage, TOML in and out.

The CLI only fills these; ``RUN_DIR/config.toml`` is the fully resolved configuration and
``headstart fit --config RUN_DIR/config.toml`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from headstart.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRATEGIES = ("linear",)  # "finetune" joins when its issue lands
HEADS = ("softmax", "svm")


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    test_fraction: float = 0.2  # only used when the folder has no test split
    val_fraction: float = 0.15  # carved from train when the folder has no val split (0 → cross-validation)
    seed: int = 0


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"  # auto | openvino | onnxruntime | torch
    batch_size: int = 32
    cache_dir: str = ""  # "" → $HEADSTART_CACHE or ~/.cache/headstart/features


@dataclass(frozen=True)
class LinearConfig:
    layer: str = "pooled"  # a tap, a comma-separated list of taps (codes concatenated), or "auto"
    head: str = "softmax"  # softmax | svm
    C: float = 0.0  # 0 → choose by a log-spaced sweep on the validation split
    class_weight: str = ""  # "" | "balanced"
    standardize: bool = True
    cv_folds: int = 5  # used when val_fraction == 0 and the folder has no val split


@dataclass(frozen=True)
class FitConfig:
    out: str = ""
    strategy: str = "linear"
    model: str = "efficientnet_lite0"
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)

    def validate(self) -> FitConfig:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.linear.head not in HEADS:
            raise ConfigError(f"linear.head must be one of {', '.join(HEADS)}; got {self.linear.head!r}")
        if self.linear.class_weight not in ("", "balanced"):
            raise ConfigError(f"linear.class_weight must be '' or 'balanced'; got {self.linear.class_weight!r}")
        if self.linear.C < 0:
            raise ConfigError(f"linear.C must be > 0 (or 0 to sweep); got {self.linear.C}")
        for name in ("test_fraction", "val_fraction"):
            v = getattr(self.data, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1); got {v}")
        if self.engine.batch_size < 1:
            raise ConfigError(f"engine.batch_size must be >= 1; got {self.engine.batch_size}")
        if not self.data.path:
            raise ConfigError("no dataset: pass DATA (a folder of class subfolders) or set data.path in the config")
        if not self.out:
            raise ConfigError("no run directory: pass --out RUN_DIR or set out in the config")
        return self


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build a (nested) config dataclass from a dict; unknown keys and wrong types are errors."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown option {where}{unknown[0]!r}; valid options{(' in [' + where.rstrip('.') + ']') if where else ''}: "
                          f"{', '.join(known)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in d.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"[{where}{name}] must be a table of options")
            kwargs[name] = from_dict(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, type(value)) or type(default) is type(value):
        return value
    raise ConfigError(f"{name} must be a {type(default).__name__}; got {value!r}")


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None


def save_toml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(to_dict(cfg)), encoding="utf-8")


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (CLI flags that were given) win over ``base`` (the config file)."""
    merged = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_update(merged[k], v)
        else:
            merged[k] = v
    return merged
