"""`headstart bench`: the CPU-vs-GPU table of every zoo backbone, measured on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["bench_command"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def bench_command(
    device: Annotated[str, typer.Option(help="cpu, cuda, or all (every device present).")] = "all",
    models: Annotated[Optional[str], typer.Option(help="Comma-separated backbones; default: every zoo backbone "
                                                  "with weights (headstart models).")] = None,
    freeze: Annotated[str, typer.Option(help="Fine-tuning rows: numbers of frozen stages, comma-separated.")]
    = "0,5",
    images: Annotated[Optional[Path], typer.Option(help="A folder of real images: adds an end-to-end extraction "
                                                   "figure (decode, resize, network) per row.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many of --images.")] = 256,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed iterations first.")] = 2,
    iters: Annotated[int, typer.Option(min=1, help="Timed iterations (the figure is their mean).")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """Time each backbone of the zoo on each device: batch size, forward ms, forward+backward ms, images/s
    for extraction and for fine-tuning at K frozen stages, precision, speed-up over the CPU row."""
    from rich.console import Console

    from headstart.bench import devices_present, machine, run_bench, zoo_models
    from headstart.errors import ConfigError
    from headstart.models import model_entry

    names = [m.strip() for m in models.split(",") if m.strip()] if models else zoo_models()
    for name in names:
        model_entry(name)  # an unknown name: the error lists the known ones
    try:
        ks = [int(k) for k in freeze.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--freeze {freeze!r}: give numbers of stages, e.g. 0,5") from None
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)[:limit] if images else []
    if images and not files:
        raise ConfigError(f"--images {images}: no image files found there")
    console = Console(stderr=as_json, soft_wrap=True)
    console.print(f"machine: {machine()}; {warmup} warm-up + {iters} timed iterations per figure")
    rows = run_bench(names, devices_present(device), freeze=ks, warmup=warmup, iters=iters, images=files,
                     on_row=lambda r: console.print(f"  measured {r.model} on {r.device}"))
    if as_json:
        print(json.dumps({"machine": machine(), "warmup": warmup, "iters": iters,
                          "rows": [r.to_dict() for r in rows]}, indent=1))
        return
    console.print(_table(rows))


def _table(rows: list) -> object:  # noqa: ANN001 - rows: list[BenchRow]
    from rich.table import Table

    ks = list(dict.fromkeys(k for r in rows for k in r.finetune_img_s))  # K is capped per backbone
    table = Table(title="headstart bench: ms per batch, images/s", caption="extract: fp32, the engine named; "
                  "FT K=k: fine-tuning steps, first k stages frozen, in the precision shown; speed-up: FT K=0 over "
                  "the CPU row")
    cols = ("model", "device", "batch", "fwd ms", "train ms", "extract/s", *(f"FT {k}/s" for k in ks), "speed-up",
            "JPEG e2e/s")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "device") else "right")
    for r in rows:
        ft = (f"{r.finetune_img_s[k]:.1f}" if k in r.finetune_img_s else "-" for k in ks)
        table.add_row(r.model.removeprefix("efficientnet_"), f"{r.device} {r.precision}", str(r.batch_size),
                      f"{r.forward_ms:.0f}", f"{r.train_ms:.0f}", f"{r.extract_img_s:.0f} {r.engine}", *ft,
                      f"{r.speedup:.1f}x" if r.speedup else "-",
                      f"{r.end_to_end_img_s:.0f}" if r.end_to_end_img_s else "-")
    return table
