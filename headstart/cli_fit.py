"""`headstart fit`'s options, derived from the config's declared settings (``headstart.settings``).

Each ``FitConfig`` field declared with a ``flag`` becomes one option, with the field's help text and its
``FitConfig()`` default in ``--help``; an option that is not given leaves the field to the config file
(``--config``) or to its default. The few options that are not one field are listed in ``_EXTRA``:
``--augment/--no-augment`` and ``--color-jitter`` set several fields, ``--batch-size`` also takes ``auto``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import Field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from headstart.config import FitConfig, deep_update, from_dict, load_toml
from headstart.data.augment import AUGMENT_OFF, AugmentConfig
from headstart.errors import ConfigError

__all__ = ["BackendOpt", "config_from_argv", "fit_command", "fit_config", "option_fields"]

BackendOpt = Annotated[str, typer.Option(help="Inference engine: auto, openvino, onnxruntime or torch.")]

_PANELS = {"": "Run", "data": "Data", "engine": "Engine", "linear": "Linear classifier (--strategy linear)",
           "finetune": "Fine-tuning (--strategy finetune)", "finetune.optim": "Fine-tuning: optimiser",
           "finetune.schedule": "Fine-tuning: schedule", "finetune.augment": "Fine-tuning: augmentation",
           "auto": "Choosing for you (--strategy auto)"}
# --augment restores the default augmentation (after a --config that turned it off).
_AUG_ON = {k: getattr(AugmentConfig(), k) for k in AUGMENT_OFF}


def option_fields(cls: type = FitConfig, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """``(dotted path, field)`` of every config field that has a command-line flag, in declaration order."""
    default = cls()
    for f in fields(cls):
        value = getattr(default, f.name)
        if is_dataclass(value):
            yield from option_fields(type(value), f"{prefix}{f.name}.")
        elif f.metadata.get("flag"):
            yield f"{prefix}{f.name}", f


def default_of(path: str, cfg: Any = None) -> Any:
    """The value at a dotted path of ``cfg`` (default: ``FitConfig()``)."""
    value = FitConfig() if cfg is None else cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(path: str, f: Field) -> str:
    text = f.metadata["help"]
    choices = [c for c in f.metadata.get("choices") or () if c != ""]
    if choices:
        text += f" ({', '.join(map(str, choices))})"
    default = default_of(path)
    if path == "engine.batch_size":
        return text + f" \\[default: {default}]"
    return text + (f" \\[default: {_show(default)}]" if default != "" else "")


def _param(path: str, f: Field) -> inspect.Parameter:
    default = default_of(path)
    flags = tuple(f.metadata["flag"])
    if isinstance(default, bool):
        flags = (f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:])
    kind: type = str if path == "engine.batch_size" else type(default)
    option = typer.Option(*flags, help=_help(path, f), show_default=False,
                          rich_help_panel=_PANELS[path.rpartition(".")[0]])
    return inspect.Parameter(path.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])


_EXTRA = [
    inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        Optional[Path], typer.Argument(help="Image folder: DATA/<class>/<images> or "
                                       "DATA/{train,val,test}/<class>/<images>.", show_default=False)]),
    inspect.Parameter("augment", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[bool], typer.Option("--augment/--no-augment", help="finetune: --no-augment turns every random "
                                     "augmentation off (then the frozen prefix is computed once and cached); "
                                     "--augment restores the default's flips, random resized crops, colour "
                                     "jitter and resolution drops", show_default=False,
                                     rich_help_panel=_PANELS["finetune.augment"])]),
    inspect.Parameter("color_jitter", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option(help="finetune: brightness, contrast and saturation factors drawn in "
                                      f"1 +- this \\[default: {AugmentConfig().brightness:g}]", show_default=False,
                                      rich_help_panel=_PANELS["finetune.augment"])]),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--config", "-c", help="TOML config (e.g. a previous RUN_DIR/config.toml); "
                                     "flags override it.", show_default=False)]),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option(help="Continue a killed run (uses RUN_DIR/config.toml): fine-tuning from "
                                     "its last checkpoint; auto keeps its finished candidates and the plan.",
                                     show_default=False)]),
    inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--overwrite", help="Replace the run already in --out (its files are removed first); "
                           "without it, fit refuses to write over a different run.")]),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar.")]),
]


def _batch_size(value: str) -> int:
    """``--batch-size``: a positive integer, or ``auto`` (0 in ``EngineConfig``)."""
    if value.strip().lower() == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--batch-size must be a positive integer or auto; got {value!r}")
    return n


def overrides_from(kw: dict[str, Any]) -> dict[str, Any]:
    """The nested dict of the options that were given (``None`` = not given)."""
    out: dict[str, Any] = {}
    for path, _ in option_fields():
        value = kw.get(path.replace(".", "__"))
        if value is None:
            continue
        if path == "engine.batch_size":
            value = _batch_size(value)
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if kw.get("data") is not None:
        out.setdefault("data", {})["path"] = str(kw["data"])
    aug: dict[str, Any] = {}
    if kw.get("augment") is not None:
        aug = dict(_AUG_ON if kw["augment"] else AUGMENT_OFF)
    if kw.get("color_jitter") is not None:
        aug |= dict.fromkeys(("brightness", "contrast", "saturation"), kw["color_jitter"])
    if aug:  # single-field flags (--crop, --downscale...) win over the compound ones
        given = out.setdefault("finetune", {}).setdefault("augment", {})
        out["finetune"]["augment"] = aug | given
    return out


def fit_config(config: Path | None, overrides: dict[str, Any], *, default_out: bool = False) -> FitConfig:
    """The config file (if any) with the flags that were actually given on top, validated. ``default_out``:
    without --out (or ``out`` in the file), a new run directory ``runs/<data folder>-<date>-<time>``."""
    merged = deep_update(load_toml(config) if config else {}, overrides)
    path = merged.get("data", {}).get("path")
    if default_out and merged.get("out", "") == "" and isinstance(path, str) and path:
        from headstart.train.distributed import launched

        if launched():  # each process would read its own clock
            raise ConfigError("under torchrun every process must write into one run directory: give --out")
        merged["out"] = default_run_dir(path)
    return from_dict(FitConfig, merged).validate()


def default_run_dir(data: str | Path, now: float | None = None) -> str:
    """``runs/<data folder's name>-YYYYmmdd-HHMMSS`` under the current folder: a new one per run, so trying
    another option never meets "holds another run".

    >>> default_run_dir("photos/", now=0.0).startswith("runs/photos-1970")
    True
    """
    name = Path(data).resolve().name or "run"
    return str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}")


def fit_command(run: Callable[..., None]) -> Callable[..., None]:
    """``run(cfg, resume=..., quiet=..., overwrite=...)`` as a Typer command whose options are the config's flags."""

    def fit(**kw: Any) -> None:
        """Train a classifier on an image folder and evaluate it on a held-out test split.

        --strategy auto (the default): measure the data (headstart advise), run the plan and, within --budget
        (20 min), its runner-up; keep the better on validation. Options you set win over the plan's.
        --strategy linear: a linear classifier on cached CNN codes.
        --strategy finetune: a new head, the top stages trained. On several GPUs or processes:
        torchrun --nproc-per-node N -m headstart fit DATA --strategy finetune --out RUN_DIR.

        Every option can also be set in a TOML file (--config) under the names of RUN_DIR/config.toml.
        """
        overrides, config, resume = overrides_from(kw), kw.get("config"), kw.get("resume")
        if resume is not None:
            config = config or resume / "config.toml"
            overrides["out"] = str(resume)
        cfg = fit_config(config, overrides, default_out=resume is None)
        if not overrides.get("out") and not kw.get("quiet"):
            typer.echo(f"run directory: {cfg.out}", err=True)
        run(cfg, resume=resume is not None, quiet=bool(kw.get("quiet")),
            overwrite=bool(kw.get("overwrite")))

    params = [_EXTRA[0], *(_param(path, f) for path, f in option_fields()), *_EXTRA[1:]]
    fit.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return fit


def config_from_argv(argv: list[str]) -> FitConfig:
    """The validated config that ``headstart fit ARGV`` would run, parsed exactly as the command line is
    (used to prove that a documented command, e.g. a benchmark row's, builds the config it claims).

    >>> config_from_argv(["data/", "--out", "runs/x", "--strategy", "finetune", "--lr", "3e-4"]).finetune.optim.lr
    0.0003
    """
    captured: list[FitConfig] = []
    app = typer.Typer(add_completion=False)
    app.command()(fit_command(lambda cfg, **_: captured.append(cfg)))
    typer.main.get_command(app).main(args=list(argv), prog_name="headstart fit", standalone_mode=False)
    return captured[0]
