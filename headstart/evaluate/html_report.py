"""``RUN_DIR/report.html``: one self-contained page (charts and thumbnails embedded, no network) on whether the
model is any good, where it fails and why. ``fit`` writes it; ``headstart report RUN_DIR`` renders it again.

It reads the run's own files only (metrics.json, splits.json, config.toml, curves.jsonl, advice.json,
test_predictions.json) and the images they name, so it shows the figures the run reported.

    write_report("runs/first")   # -> runs/first/report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.evaluate.curves import read_curves
from headstart.evaluate.plots import learning_curves, reliability_diagram
from headstart.evaluate.predictions import read_test_predictions
from headstart.evaluate.report import candidate_what
from headstart.errors import HeadstartError
from headstart.io import atomic_write

__all__ = ["REPORT", "write_report"]

REPORT = "report.html"
THUMBS_PER_CLASS = 6
TOP_LOSSES = 12
_THUMB = 112  # pixels, the longer side

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:960px;padding:12px;
color:#222;line-height:1.45}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.big{font-size:1.6em;font-weight:600}.muted{color:#666}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}th,td{border:1px solid #ddd;padding:3px 7px;
text-align:left}table.num td:not(:first-child),table.num th:not(:first-child){text-align:right}
img.chart{max-width:100%;height:auto}.strip{display:flex;flex-wrap:wrap;gap:4px;margin:.3em 0}
.strip img{width:84px;height:84px;object-fit:cover;border-radius:3px}
.loss{display:inline-block;width:132px;margin:3px;font-size:.75em;vertical-align:top}
.loss img{width:128px;height:128px;object-fit:cover;border:2px solid #d62728;border-radius:3px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.8em}li{margin:.15em 0}
"""


def write_report(run_dir: str | Path) -> Path:
    """Render ``RUN_DIR/report.html`` from the run's files; returns its path."""
    run = Path(run_dir)
    if not (run / "metrics.json").is_file() or not (run / "splits.json").is_file():
        raise HeadstartError(f"{run} holds no finished run (metrics.json or splits.json missing); pass a run "
                             "directory made by `headstart fit`")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    sections = [_header(run, metrics), _choice(run, metrics), _data(run, metrics, splits),
                _curves(run, metrics), _confusion(metrics), _per_class(metrics),
                *_predictions(run, splits), _reproduce(run), _machine(run, metrics)]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>headstart · {_e(run.name)}</title><style>{_CSS}</style></head><body>"
            + "".join(s for s in sections if s) + "</body></html>\n")
    dest = run / REPORT
    atomic_write(dest, page.encode("utf-8", errors="replace"))  # a file name that is not UTF-8 shows as ?
    return dest


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _png(data: bytes, alt: str) -> str:
    return f"<img class='chart' alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _thumb(path: Path, alt: str) -> str:
    """An embedded JPEG thumbnail, or a note when the file cannot be read any more."""
    from PIL import Image

    from headstart.data.decode import decode_image
    from headstart.errors import DecodeError

    try:
        img = decode_image(path, draft_size=_THUMB)
    except (DecodeError, OSError):
        return f"<span class='muted'>({_e(path.name)}: unreadable)</span>"
    img.thumbnail((_THUMB, _THUMB), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return f"<img alt='{_e(alt)}' src='data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], table_id: str = "", numeric: bool = True) -> str:
    ident = f" id='{table_id}'" if table_id else ""
    cls = " class='num'" if numeric else ""
    out = [f"<div class='scroll'><table{ident}{cls}><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table></div>"


def _header(run: Path, m: dict[str, Any]) -> str:
    test = m["test"]
    what = m["strategy"] + (f" · layer {m['layer']}" if m["strategy"] == "linear" else f" · {m.get('freeze')} "
                                                                                         "stages frozen")
    val = m.get("val", {})
    return (f"<h1>{_e(run.name)}</h1><p class='muted'>{_e(m['model'])} · {_e(what)} · {len(m['classes'])} classes"
            f"</p><p><span class='big'>{_pct(test['accuracy'])}</span> test accuracy on {test['n']} images that "
            f"no choice saw · balanced {_pct(test['balanced_accuracy'])} · log-loss {test['log_loss']:.3f}</p>"
            f"<p class='muted'>validation: {_pct(val.get('accuracy'))} ({_e(val.get('protocol', ''))})</p>")


def _choice(run: Path, m: dict[str, Any]) -> str:
    auto = m.get("auto")
    if not auto:
        return ""
    plan = auto["plan"]
    items = [f"<li>{_e(e)}</li>" for e in plan["evidence"]]
    for role, kept in auto.get("yours_over_plan", {}).items():
        items.append(f"<li>your options kept over the plan's ({_e(role)}): " + ", ".join(
            f"{_e(k)} = {_e(v['yours'])} (plan: {_e(v['plan'])})" for k, v in kept.items()) + "</li>")
    rows = []
    for c in auto["candidates"]:
        if c["ran"]:
            rows.append([_e(c["role"]), _e(candidate_what(c)), _pct(c.get("val_accuracy")),
                         _e(c.get("val_protocol", "")), f"{c['cost_s']:.0f} s"])
        else:
            rows.append([_e(c["role"]), _e(c["what"]), "not run", _e(c.get("skipped") or ""), "-"])
    cautions = "".join(f"<li>{_e(c)}</li>" for c in plan.get("cautions", []))
    return (f"<h2>How it was chosen</h2><p><b>{_e(plan['summary'])}</b></p><ul>{''.join(items)}</ul>"
            + (f"<p>Cautions:</p><ul>{cautions}</ul>" if cautions else "")
            + _table(["candidate", "what", "validation", "how measured", "took"], rows, numeric=False)
            + f"<p>kept <b>{_e(auto['winner'])}</b> ({_e(auto['winner_role'])}): {_e(auto['why'])}</p>")


def _data(run: Path, m: dict[str, Any], splits: dict[str, Any]) -> str:
    classes, root = splits["classes"], Path(splits["root"])
    names = [s for s in ("train", "val", "test") if s in splits["splits"]]
    skipped = {os.path.realpath(s["path"]) for s in m.get("skipped_files", [])}

    def used(split: str) -> np.ndarray:  # the images the run used: listed, minus the undecodable
        rec = splits["splits"][split]
        labels = [y for p, y in zip(rec["paths"], rec["labels"]) if os.path.realpath(root / p) not in skipped]
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))

    counts = {s: used(s) for s in names}
    rows = [[_e(c), *(int(counts[s][i]) for s in names)] for i, c in enumerate(classes)]
    out = ["<h2>Data</h2>", f"<p class='muted'>{_e(root)} · images used per split (undecodable files left out)"
           "</p>", _table(["class", *names], rows, "counts")]
    train = splits["splits"].get("train", {"paths": [], "labels": []})
    for i, c in enumerate(classes):
        paths = [p for p, y in zip(train["paths"], train["labels"]) if y == i][:THUMBS_PER_CLASS]
        out.append(f"<p><b>{_e(c)}</b></p><div class='strip'>"
                   + "".join(_thumb(root / p, f"{c}: {p}") for p in paths) + "</div>")
    notes = [f"<li>{_e(c)}</li>" for c in m.get("cautions", [])]
    if failed := m.get("skipped_files", []):
        notes.append(f"<li>{len(failed)} file(s) could not be decoded and were skipped:<ul>" + "".join(
            f"<li>{_e(s['path'])}: {_e(s['reason'])}</li>" for s in failed[:50]) + "</ul></li>")
    if m.get("left_out_files"):
        notes.append(f"<li>{len(m['left_out_files'])} file(s) are not images and were left out</li>")
    if m.get("duplicates_across_splits"):
        notes.append(f"<li>{m['duplicates_across_splits']} test image(s) are byte-identical copies of training "
                     "images: the test figure is optimistic</li>")
    if m.get("near_duplicates_across_splits"):
        notes.append(f"<li>{m['near_duplicates_across_splits']} test image(s) are near-copies of training images "
                     "(the same picture re-encoded or resized)</li>")
    out.append("<ul>" + "".join(notes) + "</ul>" if notes else "<p class='muted'>No skipped files, no copies "
               "across splits, no size shortcut found.</p>")
    return "".join(out)


def _curves(run: Path, m: dict[str, Any]) -> str:
    rows = read_curves(run)
    if not rows:
        return ""
    training = m.get("training", {})
    return ("<h2>Learning curves</h2>" + _png(learning_curves(rows, best_epoch=training.get("best_epoch")),
                                               "learning curves")
            + f"<p>{_e(training.get('diagnosis', ''))}</p>")


def _confusion(m: dict[str, Any]) -> str:
    cm, classes = np.asarray(m["test"]["confusion_matrix"]), m["classes"]
    rows = []
    for i, c in enumerate(classes):
        total = max(int(cm[i].sum()), 1)
        cells = []
        for j in range(len(classes)):
            share = cm[i, j] / total
            colour = f"rgba(31,119,180,{share:.2f})" if i == j else f"rgba(214,39,40,{share:.2f})"
            cells.append(f"<span style='display:block;background:{colour}'>{int(cm[i, j])}</span>")
        rows.append([_e(c), *cells])
    return ("<h2>Confusion matrix (test)</h2><p class='muted'>rows: true class, columns: predicted</p>"
            + _table(["true \\ predicted", *classes], rows, "confusion"))


def _per_class(m: dict[str, Any]) -> str:
    rows = [[_e(c), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
            for c, v in m["test"]["per_class"].items()]
    return "<h2>Per class (test)</h2>" + _table(["class", "precision", "recall", "F1", "images"], rows, "per-class")


def _predictions(run: Path, splits: dict[str, Any]) -> list[str]:
    pred = read_test_predictions(run)
    if not pred or not pred["rows"]:
        return []
    rows, classes = pred["rows"], pred["classes"]
    conf = np.array([r[3] for r in rows], dtype=np.float64)
    correct = np.array([r[1] == r[2] for r in rows], dtype=np.float64)
    chart, ece = reliability_diagram(conf, correct)
    calibration = ("<h2>Calibration</h2>" + _png(chart, "reliability diagram")
                   + f"<p>Expected calibration error {100 * ece:.1f} points: how far the top probability is from "
                   "the accuracy at that confidence, on the test images.</p>")
    wrong = sorted((r for r in rows if r[1] != r[2]), key=lambda r: -r[3])[:TOP_LOSSES]
    root = Path(splits["root"])
    cards = [f"<div class='loss'>{_thumb(_resolve(root, r[0]), r[0])}<br>true <b>{_e(classes[r[1]])}</b><br>"
             f"predicted <b>{_e(classes[r[2]])}</b> ({r[3]:.2f})<br><span class='muted'>{_e(Path(r[0]).name)}"
             "</span></div>" for r in wrong]
    losses = ("<h2>Top losses</h2><p class='muted'>The test images the model got most confidently wrong: look "
              "here for wrong labels and classes that look alike.</p>"
              + ("".join(cards) if cards else "<p>No test image was misclassified.</p>"))
    return [calibration, losses]


def _resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _reproduce(run: Path) -> str:
    cfg = (run / "config.toml").read_text(encoding="utf-8") if (run / "config.toml").is_file() else ""
    return ("<h2>Reproduce</h2><pre>headstart fit --config " + _e(run / "config.toml") + " --out NEW_RUN_DIR</pre>"
            + f"<details><summary>config.toml</summary><pre>{_e(cfg)}</pre></details>")


def _config(run: Path) -> dict[str, Any]:
    from headstart.config import load_toml

    return load_toml(run / "config.toml") if (run / "config.toml").is_file() else {}


def _machine(run: Path, m: dict[str, Any]) -> str:
    import torch

    from headstart import __version__

    timing = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.get("timing", {}).items())
    engine = _config(run).get("engine", {})
    facts = [("timing (s)", timing), ("engine", engine.get("backend", "-")), ("batch size", m.get("batch_size", "-")),
             ("headstart", __version__), ("torch", torch.__version__), ("python", sys.version.split()[0]),
             ("machine", f"{platform.platform()} · {os.cpu_count()} CPUs")]
    return "<h2>Timings and machine</h2>" + _table(["", ""], [[_e(k), _e(v)] for k, v in facts], numeric=False)
