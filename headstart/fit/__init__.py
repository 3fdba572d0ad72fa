"""`fit`: train a classifier on an image folder with the configured strategy."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headstart.config import FitConfig
from headstart.errors import ConfigError

if TYPE_CHECKING:
    from headstart.train.distributed import Dist


def fit(cfg: FitConfig, *, progress: bool = True, resume: bool = False, overwrite: bool = False,
        on_epoch_end: Callable[[dict[str, Any]], str | None] | None = None, report: bool = True) -> dict[str, Any]:
    """Run ``cfg.strategy`` end to end; writes ``cfg.out`` (config.toml, splits.json, metrics.json, curves,
    bundle/, summary.txt, and run.json last) and returns the metrics (as in metrics.json).

    ``strategy = "auto"`` advises, runs the plan (and, within ``cfg.auto.budget``, the runner-up) as
    candidate runs in ``cfg.out/candidates/<strategy>/``, and makes the better on validation the run's own
    (``headstart.fit.auto``). ``on_epoch_end(row)`` sees each fine-tuning epoch's curves row; a non-empty
    string returned stops training after that epoch, with it as the reason.

    ``report`` (and the environment variable ``HEADSTART_REPORT``, unless it is ``0``) writes ``report.html``,
    a page drawn from the run's files: skipping it changes no result.

    ``resume`` continues a killed run in ``cfg.out``: fine-tuning from its last checkpoint; auto from its
    finished candidates and the checkpoint of the one that was training (a linear run is run again). ``cfg.out`` has one
    writer at a time (a second process gets one line naming the first's PID); a folder holding another
    run is refused unless ``overwrite``, which clears it first.

    Under ``torchrun`` fine-tuning runs data-parallel: every process joins the process
    group, rank 0 holds the lock, writes the run and returns the metrics; the other ranks return ``{}``
    (see ``headstart.train.distributed``).

        fit(FitConfig(out="runs/a", data=DataConfig(path="photos")), progress=False)["test"]["accuracy"]  # e.g. 0.93
    """
    cfg = cfg.validate()
    from headstart.evaluate.report import summary_text
    from headstart.fit.rundir import RunDir, check_output_places, claim_run_dir, seal_run
    from headstart.io import lock_dir, new_run_id
    from headstart.train.distributed import barrier, joined, launched

    if launched() and cfg.strategy != "finetune":
        raise ConfigError(f"under torchrun only fine-tuning runs data-parallel, and --strategy is {cfg.strategy}; "
                          "pass --strategy finetune, or run the linear and auto strategies as one process "
                          "(headstart fit DATA)")
    if launched() and cfg.engine.extract_engine == "ray":
        raise ConfigError("--engine ray under torchrun would start one Ray pipeline per process; extract the codes "
                          "first (headstart extract DATA --engine ray --out DIR: they land in the cache), then run "
                          "torchrun without --engine ray")
    with joined(cfg.engine.device) as d:
        from headstart.fit.finetune import TRAIN_BATCH_SIZE
        from headstart.train.distributed import check_batch

        check_batch(cfg.engine.batch_size or TRAIN_BATCH_SIZE, d)  # before any image is read
        if not d.is_main:
            return _follow(cfg, d, resume=resume)
        check_output_places(cfg)
        with lock_dir(cfg.out):
            claim_run_dir(cfg, overwrite=overwrite, resume=resume)
            barrier(d)  # torchrun's other processes start once cfg.out is this run's
            if cfg.strategy == "auto":
                from headstart.fit.auto import fit_auto

                metrics = fit_auto(cfg, progress=progress, resume=resume)
            elif cfg.strategy == "finetune":
                from headstart.fit.finetune import fit_finetune

                metrics = fit_finetune(cfg, progress=progress, resume=resume, on_epoch_end=on_epoch_end)
            else:
                from headstart.fit.linear import fit_linear

                metrics = fit_linear(cfg, progress=progress)
            report = report and os.environ.get("HEADSTART_REPORT", "1") != "0"
            RunDir(cfg.out).write_text("summary.txt", summary_text(metrics, cfg.out, report=report) + "\n")
            if report:
                _report(cfg.out)
            seal_run(cfg.out, new_run_id())
    return metrics


def _follow(cfg: FitConfig, d: Dist, *, resume: bool) -> dict[str, Any]:
    """A torchrun process other than rank 0: once rank 0 has claimed ``cfg.out``, train its share of every
    batch, quietly (rank 0 reports; W copies of each warning help nobody), and write nothing."""
    import warnings

    from headstart.fit.finetune import fit_finetune
    from headstart.train.distributed import barrier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        barrier(d)
        return fit_finetune(cfg, progress=False, resume=resume)


def _report(out: str) -> None:
    """report.html: derived from the run's files, so a failure to draw it warns and loses nothing (``headstart
    report RUN_DIR`` draws it again)."""
    import warnings

    from headstart.evaluate.html_report import write_report

    try:
        write_report(out)
    except Exception as e:  # noqa: BLE001 - the run's results stand without their page
        warnings.warn(f"report.html could not be written ({type(e).__name__}: {e}); the run is complete; "
                      f"`headstart report {out}` tries again", stacklevel=2)
