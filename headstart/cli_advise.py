"""`headstart advise DATA`: a thin Typer layer over ``headstart.advise.advise``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["advise_command"]


def advise_command(
    data: Annotated[Path, typer.Argument(help="Image folder: DATA/<class>/<images> or "
                                         "DATA/{train,val,test}/<class>/<images>.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts, scores and plan as one JSON "
                                          "object.")] = False,
    model: Annotated[str, typer.Option("--model", "-m", help=(
        "Backbone from `headstart models`, or onnx:PATH, onnx:PATH@PRESET (any ONNX image classifier)."))]
    = "efficientnet_lite0",
    seed: Annotated[int, typer.Option(min=0, help="Seed of fit's test split, which advise leaves unread (use "
                                      "the one you will fit with); the scores' folds do not depend on it.")] = 0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache \\[default: $HEADSTART_CACHE/features, "
                                                      "else ~/.cache/headstart/features].",
                                                      show_default=False)] = None,
    batch_size: Annotated[str, typer.Option(help="Images per batch, or auto: start at 64 and halve on "
                                            "out-of-memory.")] = "32",
    backend: Annotated[str, typer.Option(help="Inference engine: auto, openvino, onnxruntime or torch.")]
    = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Look at a dataset and say how to train on it: facts, how well each stage's codes transfer, the plan.

    Reads the images fit may choose with (not fit's test split), extracts every stage's codes (cached for
    fit), scores each stage by cross-validation and LogME, and prints the quadrant (size x similarity to
    ImageNet) with the fit command to run and why.
    """
    from headstart.advise import advise
    from headstart.advise.report import advice_text
    from headstart.cli_fit import _batch_size

    advice = advise(data, model=model, seed=seed, cache_dir=cache_dir, batch_size=_batch_size(batch_size),
                    backend=backend, progress=not quiet)
    if as_json:
        print(json.dumps(advice), flush=True)
    else:
        Console(soft_wrap=True).print(escape(advice_text(advice)), highlight=False)
