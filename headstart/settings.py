"""Declared settings: a config field's default, help text, valid range and command-line flag, in one place.

Every option of ``headstart fit`` is a dataclass field declared with :func:`setting`. From that one
declaration come the API default (``FitConfig()``), the TOML key, the CLI flag with its ``--help`` text and
shown default, and the check of a value (:func:`check_settings`, run when the dataclass is built, so a bad
value is refused before any image is read, with one message naming the option, the rule and the value).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     rate: float = setting(0.5, help="a rate", ge=0, lt=1)
...     def __post_init__(self) -> None:
...         check_settings(self, "demo")
>>> Demo(rate=2.0)
Traceback (most recent call last):
...
headstart.errors.ConfigError: demo.rate must be >= 0 and < 1; got 2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

from headstart.errors import ConfigError

__all__ = ["check_settings", "describe_rule", "setting"]


def setting(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None,
            choices: Sequence[Any] | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, flag: str | Sequence[str] | None = None) -> Any:
    """A dataclass field with its help text, constraints and (optional) ``headstart fit`` flag.

    ``flag``: the option's name(s) on the command line, e.g. ``"--lr"`` or ``("--model", "-m")``; booleans
    get ``--x/--no-x`` automatically. Fields without a flag are set in the TOML file (``--config``).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "bounds": (ge, gt, le, lt), "flag": (flag,) if isinstance(flag, str) else flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def describe_rule(f: Field) -> str:
    """The constraint of a declared field in words, e.g. ``'>= 0 and < 1'`` or ``"one of 'a', 'b'"``."""
    if f.metadata.get("choices"):
        return "one of " + ", ".join(repr(c) for c in f.metadata["choices"])
    ge, gt, le, lt = f.metadata.get("bounds", (None,) * 4)
    parts = [f"{op} {v:g}" for op, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None]
    return " and ".join(parts)


def check_settings(obj: Any, section: str) -> None:
    """Check the type and constraints of every declared field of the dataclass ``obj``; ints given for float
    fields become floats (TOML and JSON write 1 for 1.0). Raises ConfigError naming ``section.field``."""
    for f in fields(obj):
        if "help" not in f.metadata:
            continue
        name, value = f"{section}.{f.name}" if section else f.name, getattr(obj, f.name)
        value = _typed(value, f, name)
        object.__setattr__(obj, f.name, value)
        rule = describe_rule(f)
        if not rule or isinstance(value, (tuple, bool)) or _satisfies(value, f):
            continue
        flag = f.metadata.get("flag")
        raise ConfigError(f"{name} must be {rule}; got {value!r}" + (f" ({flag[0]})" if flag else ""))


def _typed(value: Any, f: Field, name: str) -> Any:
    default = f.default if f.default is not MISSING else None
    if default is None or isinstance(default, tuple):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        ok = ok and math.isfinite(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(type(default),
                                                                                                type(default).__name__)
        raise ConfigError(f"{name} must be {kind}; got {value!r}")
    return value


def _satisfies(value: Any, f: Field) -> bool:
    if f.metadata.get("choices"):
        return value in f.metadata["choices"]
    ge, gt, le, lt = f.metadata["bounds"]
    return ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
            and (lt is None or value < lt))
