"""The run directory: resolved config, splits, metrics, curves, checkpoints, bundle — written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from headstart.config import FitConfig, to_dict
from headstart.data import ImageFolder
from headstart.io import atomic_write, clean_stale_tmp
from headstart.fit.checks import check_cv_folds, size_cue


class RunDir:
    """Every file is written to a temp file, fsynced and renamed into place: a kill or a full disk leaves
    the previous version or the new one, never a truncated file (``--resume`` reads config.toml back)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.cautions: list[str] = []  # findings about the data worth repeating in the report
        self.path.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.path)  # temp files of a writer that was killed

    @property
    def bundle(self) -> Path:
        return self.path / "bundle"

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2))

    def write_config(self, cfg: FitConfig) -> Path:
        return self.write_text("config.toml", tomli_w.dumps(to_dict(cfg)))

    def write_text(self, name: str, text: str) -> Path:
        dest = self.path / name
        atomic_write(dest, text.encode("utf-8", "surrogateescape"))
        return dest


def open_dataset(cfg: FitConfig) -> ImageFolder:
    """The dataset of ``cfg`` with its splits (the same ones for the same config and folder)."""
    return ImageFolder(cfg.data.path, test_fraction=cfg.data.test_fraction, val_fraction=cfg.data.val_fraction,
                       seed=cfg.data.seed)


def start_run(cfg: FitConfig) -> tuple[RunDir, ImageFolder]:
    """What every strategy does first: the run directory with the resolved config, and the dataset with
    its splits, recorded as ``splits.json`` so the run can be audited and reproduced. Dataset checks that
    need no decoding run here too; their findings go to ``run.cautions`` (for metrics.json). A dataset that
    cannot be used (missing, a class with too few images for the folds) is refused before RUN_DIR is made."""
    ds = open_dataset(cfg)
    uses_cv = cfg.strategy == "linear" or cfg.finetune.head_init == "probe"
    if uses_cv and not ds.splits.get("val"):  # C (and the layer) chosen by cross-validation on train
        train = ds.splits.get("train", [])
        check_cv_folds(np.array([s.label for s in train], dtype=np.int64), ds.classes, cfg.linear.cv_folds)
    run = RunDir(cfg.out)
    run.write_config(cfg)
    run.write_json("splits.json", ds.to_dict())
    if cue := size_cue(ds.splits.get("train", []), ds.classes, seed=cfg.data.seed):
        run.cautions.append(cue)
    return run, ds
