"""`headstart report`, `serve` and `export`: a trained run, looked at, served over HTTP, or taken elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headstart.cli_fit import BackendOpt
from headstart.errors import HeadstartError

__all__ = ["export_command", "report_command", "serve_command"]


def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory from `headstart fit`.")],
) -> None:
    """Render RUN_DIR/report.html again from the run's files: data, the choice and its evidence, curves,
    confusion matrix, per-class figures, calibration, top losses, timings. One self-contained file."""
    from headstart.evaluate.html_report import write_report
    from headstart.fit.rundir import check_run

    check_run(run)  # the files it reads must be one run's
    print(f"wrote {write_report(run)}")


def serve_command(
    run: Annotated[Path, typer.Argument(help="Run directory from `headstart fit` (or its bundle/ folder).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    batch_size: Annotated[int, typer.Option(min=1, help="Most images run together; concurrent requests are "
                                            "batched up to it.")] = 32,
    backend: BackendOpt = "auto",
) -> None:
    """An HTTP JSON API for the trained model: POST /predict (multipart files or JSON base64 images),
    GET /health, GET /model. Needs the serve extra: pip install 'headstart\\[serve]'."""
    try:
        import uvicorn

        from headstart.serve import create_app
    except ImportError as e:
        raise HeadstartError(f"headstart serve needs FastAPI and uvicorn ({e.name} is missing): "
                             "pip install 'headstart[serve]'") from None
    app_ = create_app(run, backend=backend, batch_size=batch_size)
    print(f"serving {run} on http://{host}:{port} (POST /predict, GET /health, GET /model; Ctrl-C stops)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def export_command(
    run: Annotated[Path, typer.Argument(help="Run directory from `headstart fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write: model.onnx, labels.json, "
                                      "preprocess.json, predict.py, README.md.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx (model.onnx, for ONNX Runtime) or openvino "
                                     "(model.xml + model.bin, for OpenVINO).")] = "onnx",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """The trained model as a folder that predicts with ONNX Runtime (or OpenVINO) and numpy alone (plus Pillow
    to read images): uint8 RGB images in, class probabilities out."""
    from headstart.export import export_run

    folder = export_run(run, out, fmt=fmt, overwrite=overwrite)
    print(f"exported to {folder}/ · try: python {folder}/predict.py IMAGE...")
