"""The short human summary printed at the end of a run (and saved as RUN_DIR/summary.txt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _known(x: float | None) -> bool:
    """A figure that exists: not None (no validation split) and not NaN (metrics.json of older runs)."""
    return x is not None and x == x


def summary_text(metrics: dict[str, Any], run_dir: str | Path) -> str:
    test, counts = metrics["test"], metrics.get("counts", {})
    lines = [
        f"strategy {metrics['strategy']} · model {metrics['model']} · "
        + (f"freeze {metrics['freeze']} stages" if "freeze" in metrics else f"layer {metrics.get('layer', '-')}")
        + (f" · C={metrics['C']:.3g}" if "C" in metrics else ""),
        f"images: train {counts.get('train', 0)}, val {counts.get('val', 0)}, test {counts.get('test', 0)}"
        f" ({len(metrics['classes'])} classes)",
        f"validation accuracy {metrics['val']['accuracy']:.1%} ({metrics['val'].get('protocol', 'val')}; "
        "used for choices)" if _known(metrics["val"]["accuracy"])
        else f"validation: none ({metrics['val'].get('protocol', '-')})",
        f"TEST accuracy {test['accuracy']:.1%} · balanced {test['balanced_accuracy']:.1%} "
        f"(held out: no choice saw it)",
    ]
    if dup := metrics.get("duplicates_across_splits"):
        lines.append(f"caution: {dup} test image(s) are byte-identical to training images, so the test figure is "
                     "optimistic (remove the copies from one split)")
    lines += [f"caution: {c}" for c in metrics.get("cautions", [])]
    worst = sorted(test["per_class"].items(), key=lambda kv: kv[1]["recall"])[:3]
    lines.append("lowest recall: " + ", ".join(f"{c} {m['recall']:.0%}" for c, m in worst))
    if len(metrics.get("selection", [])) > 1:
        ranked = sorted(metrics["selection"], key=lambda r: -r["val_accuracy"])
        lines.append("layers tried (val acc): " + ", ".join(f"{r['layer']} {r['val_accuracy']:.1%}" for r in ranked))
    if "training" in metrics:
        tr = metrics["training"]
        kept = f"best {tr['best_epoch']}" if tr["best_epoch"] else "last kept"
        lines.append(f"trained {tr['epochs_run']} epochs ({kept}; {tr['feed']}); {tr['diagnosis']}")
    if wise := metrics.get("wise_ft"):
        line = f"WiSE-FT: weights {wise['alpha']:g} fine-tuned + {1 - wise['alpha']:g} LP-FT start"
        if _known(wise.get("val_accuracy_finetuned")):
            line += (f" (val accuracy {metrics['val']['accuracy']:.1%}, fine-tuned alone "
                     f"{wise['val_accuracy_finetuned']:.1%})")
        lines.append(line)
    if metrics.get("skipped_files"):
        lines.append(f"skipped {len(metrics['skipped_files'])} undecodable file(s): listed in metrics.json")
    t = metrics["timing"]
    lines.append("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items()))
    extra = ", curves.jsonl, curves.svg, checkpoints/" if "training" in metrics else ""
    lines.append(f"outputs: {run_dir}/ (config.toml, metrics.json, splits.json{extra}, bundle/)")
    lines.append(f"predict: headstart predict --model {run_dir} IMAGE...")
    return "\n".join(lines)
