"""Learning curves: ``curves.jsonl`` (one strict-JSON line per epoch) and ``diagnose``, one line on what the
curves say (``report.html`` plots them).

The training loop appends a line per epoch; on (re)start it drops the lines of epochs not yet (re)done, so a
resumed run never logs an epoch twice. Missing or non-finite values (no val split, a diverged loss) are
written as ``null`` and read back as NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from headstart.io import atomic_write

__all__ = ["CURVE_KEYS", "append_curve", "diagnose", "read_curves", "reset_curves"]

CURVE_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
FILE = "curves.jsonl"


def _json_line(row: dict[str, float]) -> str:
    """Strict JSON (``null`` for a value that is missing or not finite: no val split, a diverged loss), so
    that jq, pandas and browsers read the file too; :func:`read_curves` turns ``null`` back into NaN."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()},
                      allow_nan=False) + "\n"


def read_curves(run_dir: str | Path) -> list[dict[str, float]]:
    """The logged rows; a line cut short by a kill mid-append is dropped (its epoch is then redone)."""
    f = Path(run_dir) / FILE
    rows = []
    for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if f.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
            rows.append({k: math.nan if v is None else v for k, v in row.items()})
    return rows


def reset_curves(run_dir: str | Path, epochs_done: int) -> None:
    """Keep only the rows of the first ``epochs_done`` epochs (those a resumed run will not redo)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_curves(run_dir) if r["epoch"] <= epochs_done]
    atomic_write(run_dir / FILE, "".join(_json_line(r) for r in rows).encode())


def append_curve(run_dir: str | Path, row: dict[str, float]) -> None:
    """Append one epoch's row (the ``CURVE_KEYS``; missing ones as null)."""
    with open(Path(run_dir) / FILE, "a", encoding="utf-8") as f:
        f.write(_json_line({k: row.get(k, math.nan) for k in CURVE_KEYS}))


def diagnose(curves: Sequence[dict[str, float]], *, window: int = 3) -> str:
    """One line: over-fitting, still improving, under-fitting or a good fit, with the numbers as evidence."""
    if not curves:
        return "no epochs to diagnose"
    last = curves[-1]
    ta, va = last.get("train_acc", math.nan), last.get("val_acc", math.nan)
    vl = [c.get("val_loss", math.nan) for c in curves]
    if not any(math.isfinite(v) for v in vl):
        tl = [c.get("train_loss", math.nan) for c in curves]
        return (f"no validation split, so over- or under-fitting cannot be told: train acc {ta:.3f}, train loss "
                f"{tl[0]:.4f} (epoch {curves[0]['epoch']:g}) to {tl[-1]:.4f}")
    i_min = min(range(len(vl)), key=lambda i: vl[i] if math.isfinite(vl[i]) else math.inf)
    rising = len(vl) - 1 - i_min >= 2 and vl[-1] > vl[i_min] * 1.05
    if rising and ta - va > 0.05:
        return (f"over-fitting: train acc {ta:.3f} vs val acc {va:.3f}, and val loss rose from "
                f"{vl[i_min]:.4f} (epoch {curves[i_min]['epoch']:g}) to {vl[-1]:.4f}; regularise more "
                "(augmentation, weight decay, fewer trainable stages) or stop earlier")
    recent = vl[-window:]
    if len(recent) >= 2 and all(b < a for a, b in zip(recent, recent[1:])):
        return (f"still improving: val loss fell from {recent[0]:.4f} to {recent[-1]:.4f} over the last "
                f"{len(recent)} epochs; train for more epochs")
    if ta < 0.9 and ta - va < 0.05:
        return (f"under-fitting: train acc {ta:.3f} is low and close to val acc {va:.3f}; unfreeze more stages, "
                "raise the learning rate, regularise less or train longer")
    return (f"good fit: train acc {ta:.3f}, val acc {va:.3f}, val loss {vl[-1]:.4f} "
            f"(best {vl[i_min]:.4f} at epoch {curves[i_min]['epoch']:g})")
