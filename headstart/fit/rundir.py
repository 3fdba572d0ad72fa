"""The run directory: resolved config, splits, metrics, curves, checkpoints, bundle — written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from headstart.config import FitConfig, load_toml, to_dict
from headstart.data import ImageFolder
from headstart.data.scan import lookalike_hint
from headstart.errors import ConfigError, DatasetError, HeadstartError
from headstart.fit.checks import check_cv_folds, size_cue
from headstart.io import (
    LOCK_NAME,
    MANIFEST,
    atomic_write,
    check_sealed,
    clean_stale_tmp,
    is_tmp,
    seal_dir,
)


class RunDir:
    """Every file is written to a temp file, fsynced and renamed into place: a kill or a full disk leaves
    the previous version or the new one, never a truncated file (``--resume`` reads config.toml back)."""

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.cautions: list[str] = []  # findings about the data worth repeating in the report
        self.writer = writer  # False: another process (rank 0 under torchrun) writes this run; writes are skipped
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
            clean_stale_tmp(self.path)  # temp files of a writer that was killed

    @property
    def bundle(self) -> Path:
        return self.path / "bundle"

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2))

    def write_config(self, cfg: FitConfig) -> Path:
        return self.write_text("config.toml", tomli_w.dumps(recorded_config(cfg)))

    def write_text(self, name: str, text: str) -> Path:
        dest = self.path / name
        if self.writer:
            atomic_write(dest, text.encode("utf-8", "surrogateescape"))
        return dest


def recorded_config(cfg: FitConfig) -> dict[str, Any]:
    """``cfg`` as config.toml records it: ``data.path`` absolute, so that ``fit --config RUN/config.toml`` (and
    ``--resume``) from any folder reads the same images."""
    d = to_dict(cfg)
    d["data"]["path"] = _absolute(d["data"]["path"])
    return d


def _absolute(path: Any) -> Any:
    return os.path.abspath(os.path.expanduser(path)) if isinstance(path, str) and path else path


def open_dataset(cfg: FitConfig) -> ImageFolder:
    """The dataset of ``cfg`` with its splits (the same ones for the same config and folder)."""
    return ImageFolder(cfg.data.path, test_fraction=cfg.data.test_fraction, val_fraction=cfg.data.val_fraction,
                       seed=cfg.data.seed)


def start_run(cfg: FitConfig, *, writer: bool = True) -> tuple[RunDir, ImageFolder]:
    """What every strategy does first: the run directory with the resolved config, and the dataset with
    its splits, recorded as ``splits.json`` so the run can be audited and reproduced. Dataset checks that
    need no decoding run here too; their findings go to ``run.cautions`` (for metrics.json). A dataset that
    cannot be used (missing, a class with too few images for the folds) is refused before RUN_DIR is made.
    ``writer=False``: another process writes the run (see ``RunDir``)."""
    ds = checked_dataset(cfg)
    run = RunDir(cfg.out, writer=writer)
    run.write_config(cfg)
    run.write_json("splits.json", ds.to_dict())
    if cue := size_cue(ds.splits.get("train", []), ds.classes, seed=cfg.data.seed):
        run.cautions.append(cue)
    return run, ds


def checked_dataset(cfg: FitConfig) -> ImageFolder:
    """``open_dataset``, refused (one actionable error) when ``cfg.strategy`` cannot train and test on it:
    a class only in val/ or test/, no test split, too few images for the folds C is chosen by. Lists the
    folder, decodes nothing; ``auto`` checks each strategy it may run before it advises."""
    ds = open_dataset(cfg)
    trained = {s.label for s in ds.splits.get("train", [])}
    if untrained := [c for i, c in enumerate(ds.classes) if i not in trained]:  # only in val/ or test/
        raise DatasetError(f"class(es) {', '.join(untrained)} have no folder in train/, only in "
                           f"{'/ or '.join(s for s in ('val', 'test') if s in ds.splits)}/, so the model cannot learn "
                           f"them{lookalike_hint(untrained, {ds.classes[i] for i in trained})}; add them to train/, "
                           "or remove them")
    if not ds.splits.get("test"):  # checked before training: the figure a run exists to report
        raise ConfigError(f"{cfg.data.path} has no test/ folder and --test-fraction is 0, so no image is left to "
                          "measure the classifier on; set --test-fraction (e.g. 0.2) or add a test/ folder")
    uses_cv = cfg.strategy == "linear" or cfg.finetune.head_init == "probe"
    if uses_cv and not ds.splits.get("val"):  # C (and the layer) chosen by cross-validation on train
        train = ds.splits.get("train", [])
        check_cv_folds(np.array([s.label for s in train], dtype=np.int64), ds.classes, cfg.linear.cv_folds,
                       seed=cfg.data.seed, finetune=cfg.strategy == "finetune")
    return ds


# Files a reader of a run uses: each must belong to the run that run.json records.
RUN_FILES = ("config.toml", "splits.json", "metrics.json", "bundle/bundle.json")
_UNSEALED = ("checkpoints",)  # rewritten on every epoch and only read by --resume: not part of the result


def claim_run_dir(cfg: FitConfig, *, overwrite: bool = False, resume: bool = False) -> None:
    """Make ``cfg.out`` this run's, before anything is written (the caller holds its lock).

    A new or empty folder, or one holding the same run (the same config: a rerun after a crash, which
    reuses its cache) is used as is. Another run is refused, unless ``overwrite``, which removes it first so
    that none of its files (checkpoints, curves, snapshot weights) is mistaken for the new run's. A folder
    that holds no run at all is never cleared. ``resume`` continues the run that is there.
    """
    out = Path(cfg.out)
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME and not is_tmp(p)] if out.is_dir() else []
    old = out / "config.toml"
    if resume:
        if not old.is_file():
            raise ConfigError(f"{out} has no config.toml, so there is no run to resume; start it without --resume")
        _unseal(out)
        return
    if not entries:
        return
    is_run = old.is_file() or (out / MANIFEST).is_file()
    if not is_run:
        raise ConfigError(f"--out {out} is a folder that holds other files, not a headstart run; choose a new or "
                          "empty folder for --out")
    diff = _config_diff(old, cfg)
    if not diff:
        _unseal(out)
        return
    if not overwrite:
        raise ConfigError(f"--out {out} holds another run ({diff}); pass --overwrite to replace it, or choose "
                          "another --out")
    for p in entries:  # the lock stays: we hold it
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _unseal(out: Path) -> None:
    """The run is being rewritten: its old manifest no longer describes it (``seal_run`` writes the new one).
    A rerun of the same config that is cut short leaves files of that same config, so readers accept them."""
    (out / MANIFEST).unlink(missing_ok=True)


def check_output_places(cfg: FitConfig) -> None:
    """Refuse an --out or cache folder that cannot hold files before any image is read (``lock_dir``
    checks --out again as it creates it)."""
    from headstart.features.cache import check_cache_dir
    from headstart.io import check_writable_dir

    check_writable_dir(cfg.out, what="--out")
    _refuse_output_inside_data(cfg)
    check_cache_dir(cfg.engine.cache_dir or None)


def seal_run(out: str | Path, run_id: str) -> None:
    """Record that the files now in ``out`` are one complete run (``run.json``, written last)."""
    seal_dir(out, run_id, skip=_UNSEALED)


def check_run(run: str | Path, names: tuple[str, ...] = RUN_FILES) -> str | None:
    """Refuse a run directory whose files (``names``) do not belong together; returns its run id."""
    return check_sealed(run, names)


def _config_diff(old: Path, cfg: FitConfig) -> str:
    """Empty when ``old`` (a run's config.toml) is ``cfg``; else the first few differences, for the message."""
    if not old.is_file():
        return "no config.toml"
    try:
        before = _flat(load_toml(old))
    except HeadstartError:
        return "its config.toml is unreadable"
    # Older runs recorded data.path as typed: relative to the folder fit ran in, which is this one for a rerun.
    before["data.path"] = _absolute(before.get("data.path"))
    now = _flat(recorded_config(cfg))
    keys = sorted((k for k in set(before) | set(now) if before.get(k) != now.get(k)),
                  key=lambda k: (k.count("."), k))  # top-level options (strategy, model) first
    shown = [f"{k} {before.get(k, '-')!r} → {now.get(k, '-')!r}" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else ""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _refuse_output_inside_data(cfg: FitConfig) -> None:
    """A run inside the image folder would be scanned as a class folder by the next run on that folder."""
    if not cfg.data.path:
        return
    data, out = os.path.realpath(cfg.data.path), os.path.realpath(cfg.out)
    if out == data or out.startswith(data + os.sep):
        raise ConfigError(f"--out {cfg.out} is inside the image folder {cfg.data.path}: the next run would take "
                          "it for a class folder; choose a folder outside DATA")
