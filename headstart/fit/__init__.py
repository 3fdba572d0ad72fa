"""`fit`: train a classifier on an image folder with the configured strategy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headstart.config import FitConfig


def fit(cfg: FitConfig, *, progress: bool = True, resume: bool = False, overwrite: bool = False,
        on_epoch_end: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Run ``cfg.strategy`` end to end; writes ``cfg.out`` (config.toml, splits.json, metrics.json, curves,
    bundle/, summary.txt, and run.json last) and returns the metrics (as in metrics.json).

    ``strategy = "auto"`` advises, runs the plan (and, within ``cfg.auto.budget``, the runner-up) as
    candidate runs in ``cfg.out/candidates/<strategy>/``, and makes the better on validation the run's own
    (``headstart.fit.auto``). ``on_epoch_end(row)`` sees each fine-tuning epoch's curves row; a non-empty
    string returned stops training after that epoch, with it as the reason.

    ``resume`` continues a killed run in ``cfg.out``: fine-tuning from its last checkpoint; auto from its
    finished candidates and the checkpoint of the one that was training (a linear run is run again). ``cfg.out`` has one
    writer at a time (a second process gets one line naming the first's PID); a folder holding another
    run is refused unless ``overwrite``, which clears it first.

        fit(FitConfig(out="runs/a", data=DataConfig(path="photos")), progress=False)["test"]["accuracy"]  # e.g. 0.93
    """
    cfg = cfg.validate()
    from headstart.evaluate.report import summary_text
    from headstart.fit.rundir import (
        RunDir,
        check_output_places,
        claim_run_dir,
        seal_run,
    )
    from headstart.io import lock_dir, new_run_id

    check_output_places(cfg)
    with lock_dir(cfg.out):
        claim_run_dir(cfg, overwrite=overwrite, resume=resume)
        if cfg.strategy == "auto":
            from headstart.fit.auto import fit_auto

            metrics = fit_auto(cfg, progress=progress, resume=resume)
        elif cfg.strategy == "finetune":
            from headstart.fit.finetune import fit_finetune

            metrics = fit_finetune(cfg, progress=progress, resume=resume, on_epoch_end=on_epoch_end)
        else:
            from headstart.fit.linear import fit_linear

            metrics = fit_linear(cfg, progress=progress)
        RunDir(cfg.out).write_text("summary.txt", summary_text(metrics, cfg.out) + "\n")
        seal_run(cfg.out, new_run_id())
    return metrics
