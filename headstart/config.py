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

from headstart.data.augment import AugmentConfig
from headstart.train.optim import OptimConfig
from headstart.train.schedules import ScheduleConfig

from headstart.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRATEGIES = ("linear", "finetune")
HEAD_INITS = ("probe", "random")
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
    batch_size: int = 32  # 0 = auto: extraction starts at 64 and halves on out-of-memory (--batch-size auto)
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
class FinetuneConfig:
    freeze: int = 5  # first K stages frozen (lr 0, BN statistics fixed); 0 fine-tunes everything
    # BatchNorm of the trainable stages in inference mode too (running statistics fixed). On by default:
    # with batch statistics, features shift away from those the probe head was fitted on (measured on
    # brain_mri: first-epoch val loss 2.37 instead of 0.34); turn off for large datasets far from ImageNet.
    freeze_bn: bool = True
    head_init: str = "probe"  # probe: start the new head from a linear probe on the codes (LP-FT); random
    epochs: int = 10
    label_smoothing: float = 0.1
    dropout: float = 0.2  # before the head
    drop_path: float = 0.0  # stochastic depth of the trainable blocks
    ema: float = 0.0  # EMA/Polyak decay of the weights, e.g. 0.999; 0 = off
    ema_warmup: bool = True  # EMA decay min(ema, (1+t)/(10+t)) at step t (TF/timm); off: ema from the first step
    patience: int = 5  # early stopping on validation loss; the best epoch's weights are kept
    # WiSE-FT: final weights (1 - wise_ft)·start + wise_ft·fine-tuned, start = pretrained + probe head;
    # 1 = off. 0.5 (the paper's default) trades in-distribution accuracy for robustness to a shift.
    wise_ft: float = 1.0
    snapshots: bool = False  # snapshot ensemble at the schedule's cycle ends (use schedule.name = "sgdr")
    tta: str = "none"  # none | flip | 10crop | multiscale
    bf16: bool = False
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_epochs=1.0))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=True, crop="rrc", rrc_scale=(0.35, 1.0)))


@dataclass(frozen=True)
class FitConfig:
    out: str = ""
    strategy: str = "linear"
    model: str = "efficientnet_lite0"
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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
        if self.engine.batch_size < 0:
            raise ConfigError(f"engine.batch_size must be >= 1, or 0 for auto; got {self.engine.batch_size}")
        ft = self.finetune
        if ft.head_init not in HEAD_INITS:
            raise ConfigError(f"finetune.head_init must be one of {', '.join(HEAD_INITS)}; got {ft.head_init!r}")
        if ft.tta not in ("none", "flip", "10crop", "multiscale"):
            raise ConfigError(f"finetune.tta must be none, flip, 10crop or multiscale; got {ft.tta!r}")
        if ft.epochs < 1 or ft.freeze < 0:
            raise ConfigError(f"finetune.epochs must be >= 1 and finetune.freeze >= 0; got {ft.epochs}, {ft.freeze}")
        if not 0.0 <= ft.ema < 1.0:
            raise ConfigError(f"finetune.ema must be in [0, 1); got {ft.ema}")
        if not 0.0 <= ft.wise_ft <= 1.0:
            raise ConfigError(f"finetune.wise_ft must be in [0, 1] (1 = off); got {ft.wise_ft}")
        if ft.wise_ft < 1.0 and (ft.head_init != "probe" or ft.snapshots):
            raise ConfigError("finetune.wise_ft averages the fine-tuned weights with the LP-FT start (pretrained "
                              "backbone + probe head): it needs head_init = probe and no snapshots")
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
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the stage configs validate themselves
        raise ConfigError(f"[{where.rstrip('.') or 'config'}] {e}") from None


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, (list, tuple)) and len(value) == len(default):
        return tuple(_coerce(v, d, name) for v, d in zip(value, default))
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
