"""`fit`: train a classifier on an image folder with the configured strategy."""

from __future__ import annotations

from typing import Any

from headstart.config import FitConfig


def fit(cfg: FitConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg.strategy`` end to end; writes ``cfg.out`` and returns the metrics (as in metrics.json)."""
    cfg = cfg.validate()
    if cfg.strategy == "linear":
        from headstart.fit.linear import fit_linear

        return fit_linear(cfg, progress=progress)
    raise NotImplementedError(f"strategy {cfg.strategy!r} is not available yet")
