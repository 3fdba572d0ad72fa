"""Small training callbacks with hooks — EMA, early stopping, curves, snapshots, a non-finite guard — and
``diagnose``, one line on what the curves say.

Hooks, in the order ``train()`` calls them: ``on_train_begin`` → per step ``on_loss(state, loss)`` (before
the update) and ``on_step_end(state, loss)`` (after it) →
per epoch ``eval_context(state)`` (entered around validation *and* ``on_epoch_end``, so EMA weights are what
is validated, kept as best and snapshotted) → ``on_train_end``. ``state_dict``/``load_state_dict`` go into
checkpoints (tensors to safetensors, the rest to JSON), which is how a resume restores them exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.features.atomic import atomic_write

__all__ = ["EMA", "Callback", "CurveLogger", "EarlyStopping", "LoopState", "NonFiniteGuard", "SnapshotEnsemble",
           "TrainingDiverged", "diagnose"]


class TrainingDiverged(HeadstartError):
    """The training loss became NaN or infinite."""


@dataclass
class LoopState:
    """What callbacks see. ``epoch`` is the 0-based index of the running epoch; ``metrics`` those of the
    epoch just validated (``on_epoch_end``); set ``stop`` (+ ``stop_reason``) to end training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    run_dir: Path | None
    epoch: int = 0
    step: int = 0
    lr: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: str = "none yet"
    stop: bool = False
    stop_reason: str = ""


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, state: LoopState) -> None: ...
    def on_loss(self, state: LoopState, loss: float) -> None: ...
    def on_step_end(self, state: LoopState, loss: float) -> None: ...
    def eval_context(self, state: LoopState) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()
    def on_epoch_end(self, state: LoopState) -> None: ...
    def on_train_end(self, state: LoopState) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EMA(Callback):
    """Exponential moving average of the trainable weights, updated every step:
    ``shadow ← d·shadow + (1-d)·param``; buffers (BN statistics) are copied, not averaged.

    ``warmup`` (TensorFlow's ``num_updates``, timm's EMA warm-up): ``d = min(decay, (1+t)/(10+t))`` at update
    ``t``, so early, poor weights fade out fast. Without it, decay 0.999 averages over ~1000 steps: longer
    than a whole 12-epoch run on 2,400 images (900 steps), whose average then still holds 40% of the
    starting weights, e.g. a random head. ``evaluate=True`` validates (and early-stops, snapshots) with the
    averaged weights.
    """

    def __init__(self, decay: float = 0.999, *, evaluate: bool = True, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.evaluate, self.warmup, self.updates = decay, evaluate, warmup, 0
        self.shadow: dict[str, torch.Tensor] = {}

    def _tracked(self, model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
        # Frozen parameters never change, so their average is themselves: not tracked, not swapped.
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        named += [(n, b) for n, b in model.named_buffers()]
        return [n for n, _ in named], [t for _, t in named]

    def init(self, model: nn.Module) -> None:
        names, tensors = self._tracked(model)
        self.shadow = {n: t.detach().clone() for n, t in zip(names, tensors)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, tensors = self._tracked(model)
        params = {n for n, _ in model.named_parameters()}
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for n, t in zip(names, tensors):
            if n in params:
                self.shadow[n].lerp_(t.detach(), 1.0 - d)
            else:
                self.shadow[n].copy_(t)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` for good (e.g. to keep them after training)."""
        names, tensors = self._tracked(model)
        for n, t in zip(names, tensors):
            t.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swap(self, model: nn.Module) -> Iterator[None]:
        """Evaluate with the averaged weights inside the block; the live ones are back afterwards."""
        names, tensors = self._tracked(model)
        saved = [t.detach().clone() for t in tensors]
        with torch.no_grad():
            for n, t in zip(names, tensors):
                t.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s)

    def on_train_begin(self, state: LoopState) -> None:
        if not self.shadow:
            self.init(state.model)

    def on_step_end(self, state: LoopState, loss: float) -> None:
        self.update(state.model)

    def eval_context(self, state: LoopState) -> contextlib.AbstractContextManager[Any]:
        return self.swap(state.model) if self.evaluate else contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


class EarlyStopping(Callback):
    """Stop when validation loss has not improved by ``min_delta`` for ``patience`` epochs; at the end, load
    the weights of the best epoch (the evaluated ones: EMA weights when an EMA evaluates)."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0, *, restore_best: bool = True) -> None:
        self.patience, self.min_delta, self.restore_best = patience, min_delta, restore_best
        self.best, self.best_epoch, self.bad = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] = {}

    def on_epoch_end(self, state: LoopState) -> None:
        loss = state.metrics.get("val_loss", math.nan)
        if loss < self.best - self.min_delta:  # NaN compares False: a non-finite epoch is never the best
            self.best, self.best_epoch, self.bad = loss, state.epoch + 1, 0
            self.best_state = clone_state(state.model)
        else:
            self.bad += 1
            if self.bad >= self.patience:
                state.stop = True
                state.stop_reason = (f"early stopping: val loss has not improved for {self.bad} epochs "
                                     f"(best {self.best:.4f} at epoch {self.best_epoch})")

    def on_train_end(self, state: LoopState) -> None:
        if self.restore_best and self.best_state:
            state.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad = float(state["best"]), int(state["best_epoch"]), int(state["bad"])
        self.best_state = dict(state["best_state"])


CURVE_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def _json_line(row: dict[str, float]) -> str:
    """Strict JSON (``null`` for a value that is missing or not finite: no val split, a diverged loss), so
    that jq, pandas and browsers read the file too; :meth:`CurveLogger.read` turns ``null`` back into NaN."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()},
                      allow_nan=False) + "\n"


class CurveLogger(Callback):
    """One JSON line per epoch in ``DIR/curves.jsonl`` (``DIR`` = ``path`` or the run dir), plus ``curves.svg``.

    On (re)start it drops lines of epochs not yet (re)done, so a resumed run never logs an epoch twice.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.dir = Path(path) if path is not None else None

    def on_train_begin(self, state: LoopState) -> None:
        self.dir = self.dir or state.run_dir
        if self.dir is None:
            raise ValueError("CurveLogger needs a directory: pass path= or give train() a run_dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        rows = [r for r in self.read() if r["epoch"] <= state.epoch]
        atomic_write(self.dir / "curves.jsonl", "".join(_json_line(r) for r in rows).encode())

    def read(self) -> list[dict[str, float]]:
        """The logged rows; a line cut short by a kill mid-append is dropped (its epoch is then redone)."""
        assert self.dir is not None
        f = self.dir / "curves.jsonl"
        rows = []
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if f.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
                rows.append({k: math.nan if v is None else v for k, v in row.items()})
        return rows

    def on_epoch_end(self, state: LoopState) -> None:
        assert self.dir is not None
        row = {k: state.metrics.get(k, math.nan) for k in CURVE_KEYS}
        row["epoch"] = state.epoch + 1
        with open(self.dir / "curves.jsonl", "a", encoding="utf-8") as f:
            f.write(_json_line(row))
        write_curves_svg(self.read(), self.dir / "curves.svg")


def write_curves_svg(rows: Sequence[dict[str, float]], dest: Path, width: int = 360, height: int = 220) -> None:
    """Two hand-made panels (loss, accuracy) vs epoch as SVG polylines: no plotting library needed."""
    panels = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")))
    colours, pad = {"train": "#1f77b4", "val": "#d62728"}, 36
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    epochs = [float(r["epoch"]) for r in rows]
    for i, (title, keys) in enumerate(panels):
        x0, series = i * width, {k: [float(r.get(k, math.nan)) for r in rows] for k in keys}
        vals = [v for s in series.values() for v in s if math.isfinite(v)] or [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1.0
        e_lo, e_hi = (min(epochs), max(epochs)) if len(set(epochs)) > 1 else (0.0, max(epochs + [1.0]))

        def xy(e: float, v: float) -> str:
            x = x0 + pad + (e - e_lo) / (e_hi - e_lo) * (width - 2 * pad)
            return f"{x:.1f},{height - pad - (v - lo) / (hi - lo) * (height - 2 * pad):.1f}"

        parts.append(f'<rect x="{x0 + pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
                     'fill="none" stroke="#999"/>')
        parts.append(f'<text x="{x0 + width / 2}" y="{pad - 12}" text-anchor="middle">{title} vs epoch</text>')
        parts.append(f'<text x="{x0 + 2}" y="{pad + 4}">{hi:.3g}</text>'
                     f'<text x="{x0 + 2}" y="{height - pad}">{lo:.3g}</text>'
                     f'<text x="{x0 + pad}" y="{height - pad + 14}">{e_lo:g}</text>'
                     f'<text x="{x0 + width - pad}" y="{height - pad + 14}" text-anchor="end">{e_hi:g}</text>')
        for j, (key, ys) in enumerate(series.items()):
            name = key.split("_")[0]
            pts = " ".join(xy(e, v) for e, v in zip(epochs, ys) if math.isfinite(v))
            parts.append(f'<polyline fill="none" stroke="{colours[name]}" stroke-width="1.5" points="{pts}"/>')
            parts.append(f'<text x="{x0 + width - pad - 4}" y="{pad + 14 + 13 * j}" text-anchor="end" '
                         f'fill="{colours[name]}">{name}</text>')
    parts.append("</svg>\n")
    atomic_write(dest, "\n".join(parts).encode())


class SnapshotEnsemble(Callback):
    """Save the weights at the end of the given (1-based) epochs — by default the schedule's cycle ends
    (SGDR) — to ``DIR/snapshots/epoch-NNN.safetensors``; ``predict`` averages the snapshots' softmax."""

    def __init__(self, epochs: Sequence[int] | None = None, path: str | Path | None = None) -> None:
        self.epochs = None if epochs is None else sorted(int(e) for e in epochs)
        self.dir = Path(path) if path is not None else None
        self.saved: list[str] = []

    def on_train_begin(self, state: LoopState) -> None:
        self.dir = self.dir or (state.run_dir / "snapshots" if state.run_dir else None)
        if self.dir is None:
            raise ValueError("SnapshotEnsemble needs a directory: pass path= or give train() a run_dir")
        if self.epochs is None:
            ends = getattr(state.scheduler, "cycle_ends", lambda: [state.epochs])()
            self.epochs = sorted({int(e) for e in ends} | {state.epochs})

    def on_epoch_end(self, state: LoopState) -> None:
        from headstart.train.checkpoint import save_tensors  # lazy: checkpoint imports this module

        assert self.dir is not None and self.epochs is not None
        if state.epoch + 1 in self.epochs:
            dest = self.dir / f"epoch-{state.epoch + 1:03d}.safetensors"
            save_tensors(dest, {k: v.detach() for k, v in state.model.state_dict().items()})
            self.saved = sorted({*self.saved, str(dest)})

    def predict(self, model: nn.Module, data: Any, *, tta: str = "none", **kw: Any) -> tuple[Any, Any]:
        """Mean softmax of the snapshots (``tta.evaluate`` on each); ``model``'s own weights are kept."""
        from safetensors.torch import load_file

        from headstart.train.tta import evaluate

        if not self.saved:
            raise HeadstartError("no snapshot was saved; train with SnapshotEnsemble through its epochs first")
        keep, total, labels = clone_state(model), None, None
        try:
            for path in self.saved:
                model.load_state_dict(load_file(self._inside(path)))
                probs, labels = evaluate(model, data, tta=tta, **kw)
                total = probs if total is None else total + probs
        finally:
            model.load_state_dict(keep)
        return total / len(self.saved), labels

    def _inside(self, saved: str) -> Path:
        """A recorded snapshot, looked up by file name in this run's snapshot folder: a checkpoint is data and
        must not make us read elsewhere (and a moved run dir still finds its snapshots)."""
        name = Path(saved).name
        if self.dir is None or not re.fullmatch(r"epoch-\d+\.safetensors", name):
            raise HeadstartError(f"snapshot {saved!r} is not an epoch-NNN.safetensors file of this run; "
                                 "the checkpoint is damaged, train again without --resume")
        return self.dir / name

    def state_dict(self) -> dict[str, Any]:
        return {"saved": list(self.saved), "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved, self.epochs = list(state["saved"]), state["epochs"]


class NonFiniteGuard(Callback):
    """Stop when training diverges, saying what to do: a NaN/inf or exploding (> ``max_loss``) training loss,
    caught before the step that would spread it into the weights, or such a validation loss at an epoch's
    end, caught before that epoch is checkpointed. So the last checkpoint holds good weights and stays usable.

    ``max_loss``: a cross-entropy of 1e4 needs logit gaps of about 1e4, which only exploded weights produce
    (an untrained head scores about log K, a confidently wrong one tens).
    """

    def __init__(self, max_loss: float = 1e4) -> None:
        self.max_loss = max_loss

    def _diverged(self, value: float) -> bool:
        return not math.isfinite(value) or value > self.max_loss

    def _advice(self, state: LoopState) -> str:
        return (f"lower the learning rate (now {state.lr:.3g}), e.g. by 10x, or use warm-up / label smoothing; "
                f"the last good checkpoint is {state.last_checkpoint}")

    def on_loss(self, state: LoopState, loss: float) -> None:
        if self._diverged(loss):
            raise TrainingDiverged(f"training diverged: loss became {loss:.4g} at epoch {state.epoch + 1} step "
                                   f"{state.step}; " + self._advice(state))

    def on_epoch_end(self, state: LoopState) -> None:
        loss, acc = state.metrics.get("val_loss", math.nan), state.metrics.get("val_acc", math.nan)
        if math.isfinite(acc) and self._diverged(loss):  # no validation data: both are NaN by design
            raise TrainingDiverged(f"training diverged: validation loss became {loss:.4g} at the end of epoch "
                                   f"{state.epoch + 1}; " + self._advice(state))


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
