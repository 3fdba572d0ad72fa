"""The candidates of ``fit --strategy auto`` and the choice between them, on validation figures only.

Each candidate's figure is its own run's ``val.accuracy``: on the validation split, or by cross-validation
on train when its run has none (the linear plan on small data). The plan is the prior: the runner-up
replaces it only when its figure is higher by more than one standard error of the difference of the two
(the one-standard-error rule advise uses between stages), since on a 15% split of a small dataset two
strategies a point apart are a coin toss, and the plan comes with measured reasons. The test figures are
never read here.

    choose([plan, runner_up])   # (runner_up, 'its validation accuracy is 4.1 points higher than ...')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.config import FitConfig

__all__ = ["Candidate", "ValFigure", "choose", "comparison_record", "val_figure"]


@dataclass
class Candidate:
    """One option of the plan, as it is run (or skipped) by ``fit_auto``."""

    role: str  # "plan" or "runner-up"
    strategy: str  # linear | finetune
    what: str  # in words, e.g. "linear classifier on top codes"
    cfg: FitConfig
    advised_epochs: int = field(init=False)
    estimate_s: float = 0.0
    skipped: str = ""  # why it did not run
    metrics: dict[str, Any] | None = None  # its run's metrics.json, once it ran
    cost_s: float = 0.0  # measured wall time

    def __post_init__(self) -> None:
        self.advised_epochs = self.cfg.finetune.epochs


@dataclass(frozen=True)
class ValFigure:
    accuracy: float | None  # None: the run had no validation split (fine-tuning with val_fraction 0)
    images: int  # how many held-out predictions the figure averages
    protocol: str

    @property
    def se(self) -> float:
        """Binomial standard error of the accuracy."""
        if self.accuracy is None or self.images == 0:
            return math.inf
        return math.sqrt(self.accuracy * (1 - self.accuracy) / self.images)


def val_figure(metrics: dict[str, Any]) -> ValFigure:
    """A run's validation figure: ``val.accuracy`` with the number of images behind it (``val.images``; in
    older runs the val split's, or every training image's when C was cross-validated: each is predicted once
    out of fold per repeat)."""
    val, counts = metrics["val"], metrics.get("counts", {})
    acc = val.get("accuracy")
    known = acc is not None and not math.isnan(acc)  # NaN: metrics.json of runs older than the null
    images = val.get("images") or counts.get("val") or counts.get("train", 0)
    return ValFigure(float(acc) if known else None, int(images), str(val.get("protocol", "")))


def choose(ran: list[Candidate]) -> tuple[Candidate, str]:
    """The candidate to keep among those that ran, with the reason in words (see the module)."""
    plan = next(c for c in ran if c.role == "plan")
    runner = next((c for c in ran if c.role == "runner-up"), None)
    if runner is None:
        return plan, "the plan ran alone"
    fp, fr = val_figure(plan.metrics or {}), val_figure(runner.metrics or {})
    if fp.accuracy is None or fr.accuracy is None:
        missing = plan if fp.accuracy is None else runner
        return plan, (f"{missing.strategy} has no validation figure (no validation split), so the two cannot be "
                      "compared; the plan stands")
    diff, noise = fr.accuracy - fp.accuracy, math.hypot(fp.se, fr.se)
    figures = (f"{runner.strategy} {100 * fr.accuracy:.1f}% vs {plan.strategy} {100 * fp.accuracy:.1f}% on "
               "validation")
    if diff > noise:
        return runner, (f"{figures}: the runner-up is {100 * diff:.1f} points better, more than the "
                        f"{100 * noise:.1f}-point standard error of the difference")
    if diff > 0:
        return plan, (f"{figures}: the runner-up is {100 * diff:.1f} points better, within the "
                      f"{100 * noise:.1f}-point standard error of the difference, so the plan stands")
    return plan, f"{figures}: the plan is as good or better"


def comparison_record(c: Candidate, run_dir: Path) -> dict[str, Any]:
    """What metrics.json says of one candidate: what it was, its validation figure and its cost."""
    rec: dict[str, Any] = {"role": c.role, "strategy": c.strategy, "what": c.what,
                           "dir": str(Path(c.cfg.out).relative_to(run_dir)) if c.metrics is not None else None,
                           "ran": c.metrics is not None, "skipped": c.skipped or None,
                           "estimated_s": round(c.estimate_s, 1), "cost_s": round(c.cost_s, 1)}
    if c.strategy == "finetune":
        rec["epochs"] = {"run_with": c.cfg.finetune.epochs, "advised": c.advised_epochs}
    if c.metrics is not None:
        f = val_figure(c.metrics)
        rec |= {"val_accuracy": f.accuracy, "val_se": None if math.isinf(f.se) else round(f.se, 4),
                "val_images": f.images, "val_protocol": f.protocol}
    return rec
