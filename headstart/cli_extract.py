"""`headstart extract` (CNN codes to files, computed here or on Ray) and `headstart cache` (the feature cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from headstart.cli_fit import BackendOpt, _batch_size

__all__ = ["cache_app", "extract_command"]

console = Console(soft_wrap=True)


def extract_command(
    data: Annotated[Path, typer.Argument(help="Image folder (class subfolders) or a folder of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for codes_<tap>.npy and index.json.")],
    model: Annotated[str, typer.Option("--model", "-m", help=(
        "Backbone name, or onnx:PATH, onnx:PATH@PRESET (any ONNX image classifier)."))] = "efficientnet_lite0",
    layer: Annotated[str, typer.Option(help="Tap(s), comma-separated: e.g. pooled or stage5,stage6.")] = "pooled",
    backend: BackendOpt = "auto",
    batch_size: Annotated[str, typer.Option(help="Images per batch, or auto: start at 64 and halve on "
                                            "out-of-memory.")] = "32",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache \\[default: ~/.cache/headstart].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split recorded beside the codes.")] = 0,
    engine: Annotated[str, typer.Option(help="local, or ray: Ray Data computes the codes missing from the cache "
                                        "(pip install 'headstart\\[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster (auto, ray://head:10001); "
                                                   "default: a local one.")] = None,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU if PyTorch sees one), cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="fp32; bf16 (PyTorch under bf16 autocast: faster on a GPU); or "
                                           "int8 (OpenVINO, quantised by NNCF on 300 of these images: 1.2x faster "
                                           "here, see BENCHMARKS.md §17; needs the int8 extra). Each is cached "
                                           "apart.")] = "fp32",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Write CNN codes (float16 .npy per tap) with paths, labels and splits (index.json)."""
    from headstart.features.command import run_extract

    summary = run_extract(data, out, model=model, layer=layer, backend=backend, batch_size=_batch_size(batch_size),
                          cache_dir=cache_dir, seed=seed, progress=not quiet, engine=engine, address=address,
                          device=device, precision=precision)
    console.print(escape(summary), highlight=False)


cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)


@cache_app.command("info")
def cache_info(cache_dir: Annotated[Optional[Path], typer.Option(help="Cache folder.")] = None) -> None:
    """What is cached: one row per (model, weights, tap, preprocessing)."""
    from headstart.features import FeatureCache, default_cache_dir

    cache = FeatureCache(cache_dir or default_cache_dir())
    table = Table(title=f"feature cache: {cache.root}")
    for col in ("extractor", "model", "tap", "entries", "MB"):
        table.add_column(col)
    for row in cache.info():
        table.add_row(row["extractor"][:12], str(row.get("model")), str(row.get("tap")), str(row["entries"]),
                      f"{row['bytes'] / 1e6:.1f}")
    console.print(table)


@cache_app.command("clear")
def cache_clear(cache_dir: Annotated[Optional[Path], typer.Option(help="Cache folder.")] = None) -> None:
    """Delete every cached code."""
    from headstart.features import FeatureCache, default_cache_dir

    cache = FeatureCache(cache_dir or default_cache_dir())
    cache.clear()
    console.print(f"cleared {cache.root}")
