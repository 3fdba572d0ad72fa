"""``advise``: dataset facts + transferability signals per tap -> the plan, as one JSON-able record.

Only the images ``fit`` may choose with are read: the split ``fit`` holds out as test (same fraction and seed)
is hashed for copies, never decoded, so advice never depends on test content.

Example::

    advise("photos/", progress=False)["plan"]["summary"]
    # 'small (38 images/class) and far from ImageNet (stage-4 codes beat the top codes by 19 points) -> ...'
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headstart.advise.bn_shift import bn_shift
from headstart.advise.facts import FitRows, dataset_facts
from headstart.advise.plan import Signals, TapSignal, make_plan
from headstart.advise.probe import CV_SEED, content_order, one_se_choice
from headstart.advise.transfer import imagenet_view, score_taps
from headstart.config import DataConfig
from headstart.data import ImageFolder
from headstart.errors import DatasetError
from headstart.features import FeatureCache, default_cache_dir, extract_codes
from headstart.fit.checks import require_training_images
from headstart.models import create_model
from headstart.models.labels import imagenet_labels

__all__ = ["advise"]


def advise(data: str | Path, *, model: str = "efficientnet_lite0", seed: int = 0, cache_dir: str | Path | None = None,
           batch_size: int = 32, backend: str = "auto", progress: bool = True,
           test_fraction: float | None = None) -> dict[str, Any]:
    """Facts, per-tap scores, how ImageNet's head sees the data, and the plan for ``data`` (see the module).
    ``test_fraction``: the one ``fit`` will run with (default: fit's default)."""
    t0 = time.perf_counter()
    # fit's own test fraction and seed: the images held out here are those fit will test on.
    test_fraction = DataConfig().test_fraction if test_fraction is None else test_fraction
    ds = ImageFolder(data, test_fraction=test_fraction, val_fraction=0.0, seed=seed)
    backbone = create_model(model)
    samples = [s for split, items in ds.splits.items() if split != "test" for s in items]
    taps = list(backbone.tap_names)
    cache = FeatureCache(Path(cache_dir) if cache_dir else default_cache_dir())
    res = extract_codes([s.path for s in samples], backbone, taps, cache=cache, backend=backend,
                        batch_size=batch_size, progress=progress)
    labels = np.array([s.label for s in samples], dtype=np.int64)[res.index]
    require_training_images(ds.classes, labels, np.zeros(len(labels), dtype=np.int64))
    _require_two_per_class(ds.classes, labels)
    facts = dataset_facts(ds, FitRows(res.paths, labels, res.hashes), failures=res.failures, seed=seed,
                          pooled=res.codes["pooled"], near_copy_cosine=backbone.near_copy_cosine)
    extract_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    with _bar(progress) as bar:
        task = bar.add_task("scoring taps", total=len(taps))
        # As fit's linear choice (fit.probe): folds over the images in content order with a fixed seed, so the
        # scores depend on the images alone, not on --seed or on the order the folder was listed in.
        order = content_order(res.hashes)
        scores = score_taps({t: c[order] for t, c in res.codes.items()}, labels[order], taps, seed=CV_SEED,
                            on_tap=lambda _: bar.advance(task))
        bar.update(task, completed=len(taps))
    chosen, best = one_se_choice([s.tap for s in scores], [s.probe for s in scores])
    names = imagenet_labels() if backbone.classifier.out_features == 1000 else None
    view = imagenet_view(res.codes["pooled"], labels, ds.classes, backbone, names)
    t2 = time.perf_counter()
    shift = bn_shift(backbone, res.paths, seed=seed)
    bn_s = time.perf_counter() - t2
    signals = Signals(
        per_class_median=facts.per_class_median, per_class_min=facts.per_class_min, images=facts.images,
        taps=[TapSignal(s.tap, s.accuracy, s.probe.se, s.logme) for s in scores], chosen_tap=chosen,
        best_tap=best, imbalance=facts.imbalance, size_cue=facts.size_cue is not None, model=model, seed=seed,
        imagenet=view, duplicates_across_splits=facts.duplicates_across_splits,
        duplicates_conflicting=facts.duplicates_conflicting, undecodable=len(facts.undecodable))
    plan = make_plan(signals, stages=list(backbone.stages.keys()), data=str(data))
    return {
        "data": str(ds.root), "model": model, "seed": seed,
        "facts": facts.to_dict(),
        "taps": [s.to_dict() for s in scores], "chosen_tap": chosen, "best_tap": best,
        "imagenet": view,
        "bn_shift": shift,
        "plan": plan.to_dict(),
        "timing": {"extract_s": round(extract_s, 2), "score_s": round(time.perf_counter() - t1 - bn_s, 2),
                   "bn_shift_s": round(bn_s, 2),
                   "cached_images": res.n_cached, "computed_images": res.n_computed},
    }


def _require_two_per_class(classes: list[str], labels: np.ndarray) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        c = int(counts.argmin())
        raise DatasetError(f"class {classes[c]!r} has {counts[c]} decodable training image; advice cross-validates "
                           "and needs at least 2 per class (5 for a 5-fold estimate): add images to it")


def _bar(enabled: bool) -> Progress:
    """The second phase's bar, styled like extraction's; on stderr, so ``--json`` keeps stdout clean."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not (enabled and console.is_terminal))
