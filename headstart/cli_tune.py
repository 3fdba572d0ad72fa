"""`headstart tune DATA`: fit's options (the base recipe) plus --trials; a thin layer over ``headstart.tune``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from headstart.cli_fit import _EXTRA, _param, fit_config, option_fields, overrides_from

__all__ = ["tune_command"]

_TRIALS = inspect.Parameter("trials", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
    Optional[int], typer.Option(help="Trials in all, half coarse, half fine (finished ones count on a rerun); "
                                "without it, --budget alone bounds the search \\[default: none]",
                                show_default=False, min=2)])


def tune_command(run: Callable[..., None]) -> Callable[..., None]:
    """``run(cfg, trials=, budget_min=, freeze=, quiet=, overwrite=)`` as a Typer command."""

    def tune(**kw: Any) -> None:
        """Search the fine-tuning options (learning rates, weight decay, label smoothing, dropout) on Optuna.

        Coarse: wide log-uniform ranges at a deep freeze, no augmentation (cheap epochs), from your options' recipe.

        Fine: ranges narrowed around the coarse best, at the depth headstart advise proposes (or --freeze).

        Bounded by --trials and/or --budget MINUTES (of this call); trials whose validation loss trails are pruned.

        Run the same command again to continue after a kill. RUN/best.toml is the best trial's configuration.
        """
        overrides = overrides_from(kw)
        budget = overrides.get("auto", {}).get("budget")
        freeze = overrides.get("finetune", {}).get("freeze")
        run(fit_config(kw.get("config"), overrides), trials=kw.get("trials"), budget_min=budget, freeze=freeze,
            given=overrides, quiet=bool(kw.get("quiet")), overwrite=bool(kw.get("overwrite")))

    skip = {"strategy"}  # tune searches fine-tuning
    resume = next(p for p in _EXTRA if p.name == "resume")
    params = [_EXTRA[0], *(_param(path, f) for path, f in option_fields() if path not in skip), _TRIALS,
              *(p for p in _EXTRA[1:] if p is not resume)]
    tune.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return tune
