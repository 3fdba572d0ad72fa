"""An ensemble of runs: several trained bundles with the same classes, their softmax averaged.

Runs that differ in seed, strategy, frozen depth or backbone make different mistakes; the mean of their
probabilities is usually better than the best member (the "ensemble of runs" of the fine-tuning craft).

    ens = load_ensemble(["runs/a", "runs/b", "runs/c"])
    ens.predict(["scan.jpg"]).predictions[0].top[0]  # e.g. ('pituitary_tumor', 0.91)
    evaluate_runs(["runs/a", "runs/b"])["ensemble"]["accuracy"]  # e.g. 0.81
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.bundle import LoadedModel, load
from headstart.data import DecodeFailure, ImageFolder
from headstart.errors import ConfigError, DatasetError, HeadstartError
from headstart.evaluate.metrics import classification_metrics
from headstart.io import check_sealed
from headstart.predict import Predictor
from headstart.train.prefix import ImageSet
from headstart.train.tta import TTA_MODES, evaluate

__all__ = ["EnsemblePredictor", "evaluate_runs", "load_ensemble", "run_proba"]


class EnsemblePredictor(Predictor):
    """``Predictor`` whose probabilities are the mean of its members' (all must share one class list)."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        _require_same_classes([m.labels for m in members])
        first = members[0]
        super().__init__(first.module, first.spec, first.labels, first.to_proba, backend=first.backend)
        self.members = list(members)

    def batch_proba(self, images: np.ndarray) -> np.ndarray:
        return np.mean([m.batch_proba(images) for m in self.members], axis=0)

    def predict_proba(self, paths: Sequence[Path], *,
                      batch_size: int = 32) -> tuple[np.ndarray, list[int], list[DecodeFailure]]:
        outs = [m.predict_proba(paths, batch_size=batch_size) for m in self.members]
        # Decoding is deterministic, so every member skips the same files; intersect anyway to be exact.
        common = sorted(set.intersection(*(set(idx) for _, idx, _ in outs)))
        aligned = []
        for p, idx, _ in outs:
            row_of = {j: r for r, j in enumerate(idx)}
            aligned.append(p[[row_of[i] for i in common]])
        mean = np.mean(aligned, axis=0)
        failures = {f.path: f for _, _, fs in outs for f in fs}
        return mean.astype(np.float32), common, list(failures.values())


def load_ensemble(runs: Sequence[str | Path], *, backend: str = "auto") -> EnsemblePredictor:
    """The bundles of ``runs`` (run directories from ``headstart fit``) as one predictor."""
    return EnsemblePredictor([load(r, backend=backend).predictor for r in runs])


def evaluate_runs(runs: Sequence[str | Path], *, data: str | Path | None = None, split: str = "test",
                  tta: str | None = None, batch_size: int = 32, backend: str = "auto") -> dict[str, Any]:
    """Metrics of every run and of their ensemble on ``split`` of the first run's recorded splits.

    ``data`` is the dataset folder when it has moved since the first run. ``tta`` (flip, 10crop, multiscale)
    applies to fine-tuned runs only; None: each run's own (the one its metrics.json reports), so that a run's
    test figure is reproduced. The split is the one recorded in the first run's ``splits.json``; a run
    whose record holds other files for that split gets a warning (its figure may then include images it
    was trained on).
    """
    if not runs:
        raise ConfigError("name at least one run directory")
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    for r in runs:  # splits.json, metrics.json (its TTA) and the bundle must come from one run
        check_sealed(r, ("config.toml", "splits.json", "metrics.json", "bundle/bundle.json"))
    records = [_split_record(Path(r)) for r in runs]
    try:
        ds = ImageFolder.from_record(records[0], root=data)
    except DatasetError as e:  # the API's "root=" is the CLI's --data
        raise DatasetError(f"{runs[0]}/splits.json: {str(e).replace('pass root=', 'pass --data')}") from None
    if split not in ds.splits or not ds.splits[split]:
        raise HeadstartError(f"{runs[0]} has no {split!r} split to evaluate on (splits: {', '.join(ds.splits)})")
    for run, rec in zip(runs[1:], records[1:]):
        if rec.get("splits", {}).get(split) != records[0]["splits"].get(split):
            warnings.warn(f"{run} was made with another {split} split than {runs[0]}: its images may have been "
                          "in that run's training data", stacklevel=2)
    samples = ds.splits[split]
    images = ImageSet.from_samples(samples)
    members = [load(r, backend=backend) for r in runs]
    _require_same_classes([m.classes for m in members])
    if members[0].classes != ds.classes:
        raise ConfigError(f"{runs[0]}'s bundle predicts {_classes(members[0].classes)} but its splits.json "
                          f"lists {_classes(ds.classes)}; the run directory is inconsistent")
    per_run, probs = [], []
    ttas = [tta if tta is not None else _own_tta(Path(r)) for r in runs]
    for run, member, mode in zip(runs, members, ttas):
        p = run_proba(member, images, tta=mode, batch_size=batch_size)
        probs.append(p)
        per_run.append({"run": str(run), "kind": member.meta["kind"], "tta": mode} |
                       classification_metrics(images.labels, p, ds.classes))
    ensemble = classification_metrics(images.labels, np.mean(probs, axis=0), ds.classes)
    tta_used = ttas[0] if len(set(ttas)) == 1 else "per run"
    return {"split": split, "n": len(samples), "tta": tta_used, "classes": ds.classes, "runs": per_run,
            "ensemble": ensemble}


def _own_tta(run: Path) -> str:
    """The TTA a run's reported test figure used ("none" for linear runs and runs without metrics.json)."""
    try:
        mode = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["test"].get("tta", "none")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "none"
    return mode if mode in TTA_MODES else "none"


def run_proba(member: LoadedModel, images: ImageSet, *, tta: str = "none", batch_size: int = 32) -> np.ndarray:
    """(N, C) probabilities of every image by a loaded bundle, or an error naming the first that cannot be
    decoded. ``fit`` computes its test figure through here too, so ``evaluate`` reproduces it exactly."""
    if tta != "none" and member.meta["kind"] != "finetune":
        raise ConfigError(f"--tta {tta} needs fine-tuned runs; {member.model} + linear head is a linear run "
                          "(evaluate it with --tta none)")
    return _predictor_proba(member.predictor, images, tta, batch_size)


def _predictor_proba(predictor: Predictor, images: ImageSet, tta: str, batch_size: int) -> np.ndarray:
    if tta != "none":
        if isinstance(predictor, EnsemblePredictor):  # a snapshot ensemble: the mean over its members' views
            members = [_predictor_proba(m, images, tta, batch_size) for m in predictor.members]
            return np.mean(members, axis=0).astype(np.float32)
        probs, _ = evaluate(predictor.module, images, tta=tta, batch_size=batch_size, spec=predictor.spec)
        if len(probs) != len(images):
            raise HeadstartError(f"{len(images) - len(probs)} image(s) of the split can no longer be decoded")
        return probs
    p, idx, failures = predictor.predict_proba(images.paths, batch_size=batch_size)
    if failures:
        raise HeadstartError(f"cannot decode {failures[0].path} ({failures[0].reason}); it was readable when the "
                             "run was made")
    out = np.empty_like(p)
    out[idx] = p
    return out


def _require_same_classes(class_lists: Sequence[Sequence[str]]) -> None:
    if not class_lists:
        raise ConfigError("an ensemble needs at least one model")
    first = list(class_lists[0])
    for i, labels in enumerate(class_lists[1:], start=2):
        if list(labels) != first:
            raise ConfigError(f"model {i} predicts other classes than model 1 ({_classes(labels)} vs "
                              f"{_classes(first)}); an ensemble averages runs on the same classes")


def _split_record(run: Path) -> dict[str, Any]:
    file = run / "splits.json"
    if not file.is_file():
        raise HeadstartError(f"{run} has no splits.json; pass a run directory made by `headstart fit`")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadstartError(f"{file} is not valid JSON ({e})") from None


def _classes(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:5])}, … ({len(names)} classes)"
