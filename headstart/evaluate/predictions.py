"""``test_predictions.json``: each test image's true class, predicted class and the two probabilities, as the
run's own figures were computed from them (what the report's top losses and calibration are drawn from)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.io import atomic_write

__all__ = ["FILE", "read_test_predictions", "write_test_predictions"]

FILE = "test_predictions.json"


def write_test_predictions(run_dir: str | Path, paths: Sequence[str | Path], labels: np.ndarray, probs: np.ndarray,
                           classes: Sequence[str]) -> None:
    """One row per test image: ``[path, true, predicted, p(predicted), p(true)]`` (class indices)."""
    if len(paths) != len(labels) or len(labels) != len(probs):
        raise ValueError(f"{len(paths)} paths, {len(labels)} labels and {len(probs)} probability rows")
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    rows = [[str(p), int(y), int(k), round(float(pr[k]), 6), round(float(pr[y]), 6)]
            for p, y, k, pr in zip(paths, labels, pred, probs)]
    data = {"classes": list(classes), "columns": ["path", "true", "predicted", "p_predicted", "p_true"],
            "rows": rows}
    atomic_write(Path(run_dir) / FILE, (json.dumps(data) + "\n").encode())  # ASCII: a non-UTF-8 name is escaped


def read_test_predictions(run_dir: str | Path) -> dict[str, Any] | None:
    f = Path(run_dir) / FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
