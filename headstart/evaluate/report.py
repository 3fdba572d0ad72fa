"""The short human summary printed at the end of a run (and saved as RUN_DIR/summary.txt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _known(x: float | None) -> bool:
    """A figure that exists: not None (no validation split) and not NaN (metrics.json of older runs)."""
    return x is not None and x == x


def summary_text(metrics: dict[str, Any], run_dir: str | Path, *, report: bool | None = None) -> str:
    """The run in a few lines; ``report``: whether it has a report.html (None: whether the file is there)."""
    if report is None:
        report = (Path(run_dir) / "report.html").is_file()
    test, counts = metrics["test"], metrics.get("counts", {})
    lines = _auto_lines(metrics["auto"], run_dir) if "auto" in metrics else []
    lines += [
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
    if near := metrics.get("near_duplicates_across_splits"):
        lines.append(f"caution: {near} more test image(s) are near-copies of training images (re-encoded or "
                     "resized: CNN codes 0.99+ similar), so the test figure is optimistic")
    lines += [f"caution: {c}" for c in metrics.get("cautions", [])]
    worst = sorted(test["per_class"].items(), key=lambda kv: kv[1]["recall"])[:3]
    lines.append("lowest recall: " + ", ".join(f"{c} {m['recall']:.0%}" for c, m in worst))
    if len(rows := metrics.get("selection", [])) > 1:
        if all("probe_cv_accuracy" in r for r in rows):  # cross-validated: the ridge probe ranked the layers
            ranked = sorted(rows, key=lambda r: -r["probe_cv_accuracy"])
            lines.append("layers tried (ridge probe, CV acc +- se): " + ", ".join(
                f"{r['layer']} {r['probe_cv_accuracy']:.1%} +- {100 * r['probe_cv_se']:.1f}" for r in ranked))
        else:
            ranked = sorted(rows, key=lambda r: -r["val_accuracy"])
            lines.append("layers tried (val acc): "
                         + ", ".join(f"{r['layer']} {r['val_accuracy']:.1%}" for r in ranked))
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
    if metrics.get("left_out_files"):
        lines.append(f"left out {len(metrics['left_out_files'])} file(s) that are not images: listed in metrics.json")
    t = metrics["timing"]
    lines.append("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items()))
    extra = ", curves.jsonl, checkpoints/" if "training" in metrics else ""
    if "auto" in metrics:  # the kept candidate's curves are copied up; its checkpoints stay with it
        extra = (", curves.jsonl" if "training" in metrics else "") + ", advice.json, candidates/"
    lines.append(f"outputs: {run_dir}/ ({'report.html, ' if report else ''}config.toml, metrics.json, splits.json, "
                 f"summary.txt, test_predictions.json{extra}, bundle/)")
    if report:
        lines.append(f"report: {Path(run_dir) / 'report.html'} (open it in a browser)")
    lines.append(f"predict: headstart predict --model {run_dir} IMAGE...")
    return "\n".join(lines)


def _auto_lines(auto: dict[str, Any], run_dir: str | Path) -> list[str]:
    """What ``--strategy auto`` planned, why, what it compared (validation figures and cost) and kept."""
    plan = auto["plan"]
    lines = [f"auto: {plan['summary']}"] + [f"  - {e}" for e in plan["evidence"]]
    for role, kept in auto.get("yours_over_plan", {}).items():
        lines.append(f"  your options, kept over the plan's ({role}): " + ", ".join(
            f"{k} = {v['yours']!r} (plan: {v['plan']!r})" for k, v in kept.items()))
    lines.append("  compared on validation (the test split is never used to choose):")
    for c in auto["candidates"]:
        if not c["ran"]:
            lines.append(f"    {c['role']}: {c['what']}: not run, {c['skipped']}")
            continue
        what = candidate_what(c)
        figure = (f"{c['val_accuracy']:.1%} +- {100 * c['val_se']:.1f} ({c['val_protocol']}, {c['val_images']} "
                  "images)" if _known(c["val_accuracy"]) else f"no figure ({c['val_protocol']})")
        lines.append(f"    {c['role']}: {what}: val {figure}; took {_dur(c['cost_s'])} "
                     f"(estimated {_dur(c['estimated_s'])})")
    kept = next(c for c in auto["candidates"] if c["role"] == auto["winner_role"])
    lines += [f"  kept {auto['winner']} ({auto['winner_role']}): {auto['why']}",
              f"  its own config: {Path(run_dir) / kept['dir'] / 'config.toml'} (fit --config reruns it alone)"]
    return lines


def candidate_what(c: dict[str, Any]) -> str:
    """An auto candidate in words, with its epochs when the budget cut them (the figure then says little)."""
    epochs = c.get("epochs")
    what = c["what"] + (f", {epochs['run_with']} epochs" if epochs else "")
    if epochs and epochs["run_with"] < epochs["advised"]:
        what += f" (of {epochs['advised']} advised, cut to fit the budget)"
    return what


def _dur(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"
