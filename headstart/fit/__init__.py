"""`fit`: train a classifier on an image folder with the configured strategy."""

from __future__ import annotations

from typing import Any

from headstart.config import FitConfig


def fit(cfg: FitConfig, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run ``cfg.strategy`` end to end; writes ``cfg.out`` (config.toml, splits.json, metrics.json, curves,
    bundle/, summary.txt) and returns the metrics (as in metrics.json).

    ``resume`` continues a killed fine-tuning run from its last checkpoint in ``cfg.out``.
    """
    cfg = cfg.validate()
    if cfg.strategy == "finetune":
        from headstart.fit.finetune import fit_finetune

        metrics = fit_finetune(cfg, progress=progress, resume=resume)
    else:
        from headstart.fit.linear import fit_linear

        metrics = fit_linear(cfg, progress=progress)
    from headstart.evaluate.report import summary_text
    from headstart.fit.rundir import RunDir

    RunDir(cfg.out).write_text("summary.txt", summary_text(metrics, cfg.out) + "\n")
    return metrics
