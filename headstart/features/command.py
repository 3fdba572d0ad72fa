"""`headstart extract`: codes for every image of a folder, written beside their paths, labels and splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from headstart.data import ImageFolder, find_images
from headstart.data.scan import visible_dirs
from headstart.errors import ConfigError, DatasetError
from headstart.features.cache import FeatureCache, check_cache_dir
from headstart.features.export import write_codes
from headstart.features.extract import extract_codes
from headstart.fit.checks import SPLIT_IDS, count_duplicates_across_splits
from headstart.fit.layers import parse_layer
from headstart.io import lock_dir
from headstart.models import Backbone, create_model


def run_extract(data: Path, out: Path, *, model: str, layer: str, backend: str = "auto", batch_size: int = 32,
                cache_dir: Path | None = None, seed: int = 0, progress: bool = True, engine: str = "local",
                address: str | None = None, device: str = "cpu", precision: str = "fp32") -> str:
    """Extract and write codes; a labelled folder records labels and splits, a plain folder only paths.

    ``batch_size`` 0 is auto (halved on out-of-memory). A folder with two or more subfolders is labelled:
    its problems (an empty class...) are errors, never a silent fall-back to an unlabelled extraction.
    """
    backbone = create_model(model)
    (taps,) = parse_layer(backbone, layer) if layer != "auto" else (tuple(backbone.tap_names),)
    cache_root = check_cache_dir(cache_dir)  # refused up front, not after the extraction
    if os.path.realpath(out).startswith(os.path.realpath(data) + os.sep) and Path(data).is_dir():
        raise ConfigError(f"--out {out} is inside the image folder {data}: a later run would take it for a "
                          "class folder; choose a folder outside DATA")
    # One writer at a time: two extractions into one folder would pair one's index.json with the other's codes.
    with lock_dir(out):
        return _extract(data, out, backbone, taps, backend=backend, batch_size=batch_size, cache_root=cache_root,
                        seed=seed, progress=progress, engine=engine, address=address, device=device,
                        precision=precision)


def _extract(data: Path, out: Path, backbone: Backbone, taps: tuple[str, ...], *, backend: str, batch_size: int,
             cache_root: Path, seed: int, progress: bool, engine: str, address: str | None, device: str,
             precision: str) -> str:
    left_out: list[Path] = []  # files that are not images (by suffix nor by content): named in a warning, counted
    try:
        ds = ImageFolder(data, seed=seed)
        rows = [(s.path, s.label, split) for split, items in ds.splits.items() for s in items]
        classes: list[str] | None = ds.classes
        left_out = ds.left_out
    except DatasetError:
        if not Path(data).is_dir() or len(visible_dirs(Path(data))) >= 2:
            raise
        rows = [(p, -1, "") for p in find_images([data], left_out=left_out)]  # unlabelled: a folder of images
        classes = None
    cache = FeatureCache(cache_root)
    result = extract_codes([r[0] for r in rows], backbone, list(taps), cache=cache, out_dir=out, backend=backend,
                           batch_size=batch_size, progress=progress, engine=engine, address=address,
                           device=device, precision=precision)
    if rows and not len(result.index):
        raise DatasetError(f"none of the {len(rows)} images could be read or decoded (see the warnings above); "
                           "check that DATA holds image files")
    if classes:  # the same warning as fit's: a test image that is a copy of a training image
        count_duplicates_across_splits(result.hashes, np.array([SPLIT_IDS[rows[i][2]] for i in result.index]),
                                       result.paths)
    write_codes(out, result, backbone=backbone, taps=list(taps),
                labels=[r[1] for r in rows] if classes else None,
                splits=[r[2] for r in rows] if classes else None, classes=classes)
    dims = ", ".join(f"{t} {backbone.num_features[t]}" for t in taps)
    batch = f"batch size {result.batch_size} (auto) · " if batch_size == 0 else ""
    return (f"{len(result.index)} images → {out}/ (codes_<tap>.npy float16: {dims}; index.json) · "
            f"{result.n_computed} computed, {result.n_cached} from cache, {len(result.failures)} skipped"
            f"{f', {len(left_out)} left out (not images)' if left_out else ''} · "
            f"{batch}{result.seconds:.1f}s")
