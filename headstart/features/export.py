"""A directory of extracted codes, as ``headstart extract`` writes it, readable without headstart.

Layout::

    <dir>/codes_<tap>.npy   (n, D) float16, one per tap; row r is rows[r] of index.json
    <dir>/index.json        written last: a directory without it is incomplete

``index.json``::

    {"format": "headstart-codes-v1", "run_id": str, "fingerprints": {"codes_<tap>.npy": str}, "model": ...,
     "weights_id": ..., "codes": "relu-avgpool-v1",
     "taps": [...], "num_features": {tap: D}, "files": {tap: "codes_<tap>.npy"}, "dtype": "float16",
     "preprocess": {input_size, crop_pct, mean, std, interpolation}, "classes": [...] | null,
     "rows": [{"path": str, "sha256": str, "label": int | null, "split": str | null}, ...],
     "failures": [{"path": str, "reason": str}, ...]}

``label`` indexes ``classes``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.features.cache import CODES_VERSION
from headstart.features.extract import ExtractResult
from headstart.io import atomic_write, fingerprint, new_run_id, tmp_path_for, writer_of
from headstart.models.base import Backbone

__all__ = ["FORMAT", "load_codes", "write_codes"]

FORMAT = "headstart-codes-v1"
_COPY_ROWS = 65536  # rows converted to float16 at a time: bounds the extra memory of write_codes


def write_codes(
    out_dir: str | Path,
    result: ExtractResult,
    *,
    backbone: Backbone,
    taps: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    splits: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write ``codes_<tap>.npy`` for each tap (unless ``extract_codes(out_dir=...)`` already did) and ``index.json``.

    ``labels`` and ``splits`` are aligned with the paths given to ``extract_codes`` (failed files included);
    ``result.index`` picks the rows. Returns the path of ``index.json``.

        r = extract_codes(paths, model, ["pooled"], cache=None, out_dir="codes")
        write_codes("codes", r, backbone=model, labels=labels, classes=classes)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taps = list(taps) if taps is not None else list(result.codes)
    missing = [t for t in taps if t not in result.codes]
    if missing:
        raise ValueError(f"taps {missing} are not in the result (it has {list(result.codes)})")
    for name, seq in (("labels", labels), ("splits", splits)):
        if seq is not None and len(seq) != result.n_inputs:
            raise ValueError(f"{name} must have one entry per input path ({result.n_inputs}), got {len(seq)}")
    if classes is not None and labels is not None:
        bad = [int(labels[i]) for i in result.index if not 0 <= int(labels[i]) < len(classes)]
        if bad:
            raise ValueError(f"label {bad[0]} is not an index into classes ({len(classes)} classes)")

    (out / "index.json").unlink(missing_ok=True)  # codes change below: never pair them with an old index
    for t in taps:
        _write_npy(out / f"codes_{t}.npy", result.codes[t])
    rows = [{"path": str(p), "sha256": h,
             "label": int(labels[i]) if labels is not None else None,
             "split": str(splits[i]) if splits is not None else None}
            for p, h, i in zip(result.paths, result.hashes, result.index.tolist(), strict=True)]
    # Every file of this extraction carries its run id: index.json names it and fingerprints each codes
    # file, so load_codes refuses codes that another extraction (or a copy from elsewhere) put beside it.
    files = {t: f"codes_{t}.npy" for t in taps}
    index = {
        "format": FORMAT, "run_id": new_run_id(),
        "fingerprints": {name: fingerprint(out / name) for name in files.values()}, "model": backbone.name,
        "weights_id": backbone.weights_id, "codes": CODES_VERSION,
        "taps": taps, "num_features": {t: int(result.codes[t].shape[1]) for t in taps},
        "files": files, "dtype": "float16",
        "preprocess": backbone.spec.to_dict(), "classes": list(classes) if classes is not None else None,
        "rows": rows, "failures": [{"path": str(f.path), "reason": f.reason} for f in result.failures],
    }
    atomic_write(out / "index.json", json.dumps(index, indent=1).encode())
    for old in out.glob("codes_*.npy"):  # an earlier extraction's other taps: not described by this index
        if old.name not in files.values():
            old.unlink(missing_ok=True)
    return out / "index.json"


def load_codes(codes_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a codes directory back: ``(index, {tap: read-only float16 memmap})``, shapes checked."""
    d = Path(codes_dir)
    try:
        index = json.loads((d / "index.json").read_text())
    except FileNotFoundError:
        raise HeadstartError(f"{d} has no index.json: the extraction did not finish; run it again") from None
    except ValueError as e:
        raise HeadstartError(f"{d / 'index.json'} is not valid JSON ({e}); run the extraction again") from None
    if index.get("format") != FORMAT:
        raise HeadstartError(f"{d / 'index.json'}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
    if holder := writer_of(d):
        raise HeadstartError(f"{d} is being written by another headstart process ({holder}); wait for it to "
                             "finish, then try again")
    prints = index.get("fingerprints")  # absent in folders written before run ids
    codes = {}
    for t in index["taps"]:
        name = index["files"][t]
        if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
            # index.json is data: it must not make us read a file outside the codes directory
            raise HeadstartError(f"{d / 'index.json'}: codes file {name!r} is not a file name inside {d}; "
                                 "run the extraction again")
        if prints is not None and (not (d / name).is_file() or prints.get(name) != fingerprint(d / name)):
            raise HeadstartError(f"{d / name} does not belong to extraction {index.get('run_id')} that index.json "
                                 "describes (another extraction wrote it, or it is missing); its rows would be "
                                 "paired with other images' codes: run the extraction again")
        arr = np.load(d / name, mmap_mode="r")  # allow_pickle stays False: an object array is refused
        if arr.shape != (len(index["rows"]), index["num_features"][t]):
            raise HeadstartError(f"{d / index['files'][t]} has shape {arr.shape}, index.json expects "
                                 f"({len(index['rows'])}, {index['num_features'][t]}); run the extraction again")
        codes[t] = arr
    return index, codes


def _write_npy(final: Path, arr: np.ndarray) -> None:
    """Save ``arr`` as float16 via a temp file; a no-op when ``arr`` already is a memmap of ``final``."""
    if isinstance(arr, np.memmap) and arr.filename and Path(arr.filename).resolve() == final.resolve():
        return
    tmp = tmp_path_for(final)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=arr.shape)
        for start in range(0, len(arr), _COPY_ROWS):
            mm[start:start + _COPY_ROWS] = arr[start:start + _COPY_ROWS]
        mm.flush()
        del mm
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
