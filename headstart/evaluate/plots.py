"""The report's charts, drawn by matplotlib (Agg, no display) and returned as PNG bytes.

    png = learning_curves(read_curves("runs/a"), best_epoch=7)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["learning_curves", "reliability_bins", "reliability_diagram"]

_BLUE, _RED, _GREY = "#1f77b4", "#d62728", "#888888"


def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib's Figure, imported lazily
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def learning_curves(rows: Sequence[dict[str, float]], *, best_epoch: int | None = None) -> bytes:
    """Loss and accuracy per epoch, train and val, the kept epoch marked."""
    fig = _figure(7.0, 2.8)
    epochs = [float(r["epoch"]) for r in rows]
    for ax, (title, keys) in zip(fig.subplots(1, 2), (("loss", ("train_loss", "val_loss")),
                                                     ("accuracy", ("train_acc", "val_acc")))):
        for key, colour in zip(keys, (_BLUE, _RED)):
            ys = [float(r.get(key, math.nan)) for r in rows]
            if any(math.isfinite(y) for y in ys):
                ax.plot(epochs, ys, marker="o", markersize=3, color=colour, label=key.split("_")[0])
        if best_epoch is not None:
            ax.axvline(best_epoch, color=_GREY, linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: its range, how many predictions, their mean confidence and accuracy.

    >>> [b["n"] for b in reliability_bins(np.array([0.05, 0.95, 0.97]), np.array([0, 1, 1]), bins=2)]
    [1, 2]
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "confidence": float(confidence[m].mean()) if m.any() else math.nan,
                    "accuracy": float(correct[m].mean()) if m.any() else math.nan})
    return out


def reliability_diagram(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[bytes, float]:
    """Accuracy against confidence per bin (a calibrated model lies on the diagonal), and the expected
    calibration error (the gap, weighted by how many predictions each bin holds)."""
    table = reliability_bins(confidence, correct, bins)
    n = max(len(confidence), 1)
    ece = sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in table if b["n"])
    fig = _figure(3.6, 3.2)
    ax = fig.subplots()
    centres = [(b["lo"] + b["hi"]) / 2 for b in table]
    ax.bar(centres, [b["accuracy"] if b["n"] else 0.0 for b in table], width=1.0 / bins, color=_BLUE,
           edgecolor="white", label="accuracy")
    ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {100 * ece:.1f} points)")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig), float(ece)
