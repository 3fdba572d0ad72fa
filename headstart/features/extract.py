"""Streaming extraction of CNN codes: hash → look up the cache → decode and run only what is missing.

Codes are committed to the cache chunk by chunk while they are computed, so an interrupted run keeps its
finished chunks and the next run picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text
from torch import nn

from headstart.data import BatchLoader, DecodeFailure, EvalTransform
from headstart.data.loader import warn_failures
from headstart.engine import Engine, make_engine
from headstart.engine.base import AUTO_BATCH_START, PRECISIONS, AutoBatchEngine, resolve_device
from headstart.engine.codes import CodesModule
from headstart.engine.openvino import CALIBRATION_IMAGES, Calibration, calibration_id
from headstart.errors import ConfigError, HeadstartError, NonFiniteError
from headstart.io import clean_stale_tmp, tmp_path_for
from headstart.features.cache import (
    CacheWriter,
    FeatureCache,
    extractor_id,
    extractor_meta,
    hash_file,
)
from headstart.models.base import Backbone

__all__ = ["ExtractResult", "extract_codes"]

_F16_MAX = float(np.finfo(np.float16).max)
_HASH_BLOCK = 4096  # paths hashed per pool.map call: bounds the futures alive at once
ENGINES = ("local", "ray")


@dataclass
class ExtractResult:
    """Codes of the images that could be read, in input order.

    ``codes[tap]`` is (n_ok, D): float32 in memory, or a read-only float16 memmap of ``out_dir/codes_<tap>.npy``
    when extracting to a directory. Row ``r`` is ``paths[r]``, which was ``inputs[index[r]]``.
    Values are rounded to float16 (what the cache stores) either way, so they never depend on cache hits.
    ``n_cached + n_computed == len(paths)``.
    """

    codes: dict[str, np.ndarray]
    paths: list[Path]
    index: np.ndarray
    hashes: list[str]
    failures: list[DecodeFailure] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0
    seconds: float = 0.0
    n_inputs: int = 0
    batch_size: int = 0  # the engine's batch size: the one --batch-size auto settled on, when it was asked for


def extract_codes(
    paths: Sequence[str | Path],
    backbone: Backbone,
    taps: Sequence[str],
    *,
    cache: FeatureCache | None,
    out_dir: str | Path | None = None,
    backend: str = "auto",
    batch_size: int = 32,
    chunk_size: int = 256,
    progress: bool = True,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    engine: str = "local",
    address: str | None = None,
    precision: str = "fp32",
    calibrate_on: Sequence[str | Path] | None = None,
) -> ExtractResult:
    """CNN codes of ``paths`` at each tap, from ``cache`` where possible; unreadable files go to ``failures``.

    ``batch_size=0`` (auto) starts at ``AUTO_BATCH_START`` and halves on out-of-memory errors; the size
    it settled on is ``ExtractResult.batch_size``. Non-finite codes (a broken engine or weights) raise
    ``NonFiniteError`` before they can reach the cache.

    ``device``: where the network runs ("auto": a CUDA GPU if PyTorch sees one). ``precision``: fp32 (the
    default on every device: the codes a head is fitted on are those ``predict`` computes on a CPU, and they
    share cache entries) or bf16 (PyTorch under bf16 autocast: faster on a GPU, cosine similarity >= 0.99
    to fp32's, cached apart) or int8 (OpenVINO, quantised by NNCF on 300 images in content order, of
    ``calibrate_on`` or else of ``paths``; cached under that calibration set's id).

    ``engine="ray"``: the images missing from the cache are decoded and run on Ray Data (the cluster at
    ``address``, or a local one), which commits their codes to the cache (``headstart.features.ray_extract``);
    the result is the same as the local path's.

    With ``out_dir`` the codes are streamed into ``out_dir/codes_<tap>.npy`` (float16) and memory stays
    bounded by a chunk whatever the dataset size; ``write_codes`` then adds ``index.json``.

        r = extract_codes(paths, create_model("efficientnet_lite0"), ["pooled"], cache=FeatureCache())
        r.codes["pooled"].shape
    (3264, 1280)
    """
    t0 = time.perf_counter()
    taps = backbone.check_taps(taps)
    if not taps:
        raise ConfigError("taps is empty; pass at least one layer name, e.g. ['pooled']")
    for name, value, least in (("batch_size", batch_size, 0), ("chunk_size", chunk_size, 1)):
        if value < least:  # checked up front: a fully cached run would never reach the code that uses them
            raise ConfigError(f"{name}={value} is invalid; use a positive integer"
                              + (" (0: auto)" if least == 0 else ""))
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "int8" and engine == "ray":
        raise ConfigError("--precision int8 runs locally (its calibration happens in this process); drop --engine ray")
    inputs = [Path(p) for p in paths]
    dev = resolve_device(device)
    if cache is not None and backbone.weights_id == "random":
        # Random weights differ per instance: their codes must never be served to another run.
        warnings.warn(f"{backbone.name} has random weights; its codes are not cached", stacklevel=2)
        cache = None
    if engine == "ray":
        from headstart.features.ray_extract import compute_with_ray

        if cache is None and out_dir is None:
            why = " (codes of random weights are never cached)" if backbone.weights_id == "random" else ""
            raise ConfigError(f"engine='ray' passes codes through a cache folder the workers write to: give a "
                              f"cache (or out_dir){why}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(out)

    with _progress_bar(progress) as bar, _store(cache, out) as store:
        hashes, failures = _hash_files(inputs, workers, bar)
        ok = [i for i, h in enumerate(hashes) if h is not None]
        ok_hashes: list[str] = [hashes[i] for i in ok]  # type: ignore[misc]
        calibration = _calibration_set(calibrate_on, inputs, ok, ok_hashes) if precision == "int8" else {}
        tag = f"int8-{calibration_id(list(calibration))}" if calibration else precision  # int8 codes depend on it
        ids = {t: extractor_id(backbone, t, tag) for t in taps}
        dims = backbone.num_features
        mem = None if out is not None else {t: np.zeros((len(ok), dims[t]), np.float32) for t in taps}
        hit = np.full(len(ok), store is not None)
        for t in taps if store is not None else ():  # an image counts as cached only when every tap has it
            hit &= store.read_into(ids[t], ok_hashes, mem[t]) if mem is not None else store.contains(ids[t], ok_hashes)
        todo: dict[str, list[int]] = {}  # hash → rows; identical files are decoded once
        for r in np.flatnonzero(~hit):
            todo.setdefault(ok_hashes[r], []).append(int(r))
        reps = [inputs[ok[rows[0]]] for rows in todo.values()]

        if engine == "ray":
            assert store is not None
            used = batch_size or AUTO_BATCH_START
            bad = compute_with_ray(reps, list(todo), backbone, taps, cache=store, backend=backend, batch_size=used,
                                   address=address, precision=precision) if todo else {}
            if mem is not None:  # the codes the workers committed, read back as a local run reads its own
                _read_back(store, ids, [r for h, rs in todo.items() if h not in bad for r in rs], ok_hashes, mem)
        else:
            with contextlib.ExitStack() as stack:
                writers = {t: stack.enter_context(store.writer(ids[t], extractor_meta(backbone, t, tag),
                                                              chunk_size))
                           for t in taps} if store is not None else {}
                bad, used = _compute(reps, list(todo), todo, backbone, taps, writers=writers, mem=mem,
                                     backend=backend, batch_size=batch_size, workers=workers, bar=bar, device=dev,
                                     precision=precision,
                                     calibration=list(calibration.values()), calibration_key=tag)
        for h, reason in bad.items():  # every copy of an undecodable file fails, not just the one tried
            failures += [DecodeFailure(inputs[ok[r]], reason) for r in todo[h]]
        keep = np.array([r for r in range(len(ok)) if ok_hashes[r] not in bad], dtype=np.int64)
        kept_hashes = [ok_hashes[r] for r in keep]
        if mem is not None:
            codes = {t: a if len(keep) == len(ok) else a[keep] for t, a in mem.items()}
        else:
            assert out is not None and store is not None
            codes = {t: _assemble_npy(out, t, store, ids[t], kept_hashes, dims[t]) for t in taps}

    n_cached = int(hit[keep].sum())
    position = {p: i for i, p in enumerate(inputs)}
    failures.sort(key=lambda f: position.get(f.path, 0))
    # one warning for every skipped file: unreadable ones, and every copy of an undecodable one
    warn_failures(failures, len(inputs))
    index = np.asarray(ok, dtype=np.int64)[keep]
    return ExtractResult(codes=codes, paths=[inputs[i] for i in index], index=index, hashes=kept_hashes,
                         failures=failures, n_cached=n_cached, n_computed=len(keep) - n_cached,
                         seconds=time.perf_counter() - t0, n_inputs=len(inputs), batch_size=used)


def _compute(paths: list[Path], hashes: list[str], rows: dict[str, list[int]], backbone: Backbone,
             taps: list[str], *, writers: dict[str, CacheWriter], mem: dict[str, np.ndarray] | None, backend: str,
             batch_size: int, workers: int | None, bar: Progress,
             device: torch.device = torch.device("cpu"), precision: str = "fp32",
             calibration: Sequence[Path] = (), calibration_key: str = "") -> tuple[dict[str, str], int]:
    """Decode and run ``paths`` (one per hash); store codes in ``writers`` and ``mem``.

    Returns hash → failure, and the batch size used (``batch_size``, or where auto (0) settled).
    """
    if not paths:
        return {}, batch_size or AUTO_BATCH_START
    transform = EvalTransform(backbone.spec)
    size = backbone.spec.input_size
    def decoded() -> np.ndarray:  # int8: what the quantisation is calibrated on
        return np.concatenate([b.images for b in BatchLoader(list(calibration), transform, batch_size=32,
                                                             workers=workers, draft_size=transform.draft_size,
                                                             warn=False)])

    calib = Calibration(calibration_key, decoded) if calibration else None
    engine = _make_engine(CodesModule(backbone, taps), (3, size, size), backend, device, precision, calib)
    if batch_size == 0:
        engine = AutoBatchEngine(engine)
    loader = BatchLoader(paths, transform, batch_size=batch_size or AUTO_BATCH_START, workers=workers,
                         draft_size=transform.draft_size, warn=False)
    task = bar.add_task("extracting", total=len(paths))
    for batch in loader:
        batch_hashes = [hashes[i] for i in batch.indices]
        for t, codes in zip(taps, engine(batch.images), strict=True):
            _check_finite(codes, t, [paths[i] for i in batch.indices], getattr(engine, "name", "inference"))
            # Round once, here, so fresh codes equal what a later cache hit returns.
            codes16 = np.clip(codes, -_F16_MAX, _F16_MAX).astype(np.float16)
            if t in writers:
                writers[t].add(batch_hashes, codes16)
            if mem is not None:
                dst = [r for h in batch_hashes for r in rows[h]]
                src = [j for j, h in enumerate(batch_hashes) for _ in rows[h]]
                mem[t][dst] = codes16[src]
        bar.advance(task, len(batch.indices))
    used = engine.size if isinstance(engine, AutoBatchEngine) else batch_size
    by_path = {p: h for p, h in zip(paths, hashes, strict=True)}
    return {by_path[f.path]: f.reason for f in loader.failures}, used


def _calibration_set(calibrate_on: Sequence[str | Path] | None, inputs: list[Path], ok: list[int],
                     ok_hashes: list[str]) -> dict[str, Path]:
    """int8's calibration images, hash → file: the first ``CALIBRATION_IMAGES`` in content order of
    ``calibrate_on`` (e.g. the training split only), or else of the inputs. Unreadable files are passed over."""
    pool: dict[str, Path] = {}
    if calibrate_on is None:
        for r, h in zip(ok, ok_hashes, strict=True):
            pool.setdefault(h, inputs[r])
    else:
        for p in map(Path, calibrate_on):
            with contextlib.suppress(OSError):
                pool.setdefault(hash_file(p), p)
    if not pool:
        raise ConfigError("precision int8 needs images to calibrate on, and none could be read")
    return {h: pool[h] for h in sorted(pool)[:CALIBRATION_IMAGES]}


def _read_back(store: FeatureCache, ids: dict[str, str], rows: list[int], hashes: list[str],
               mem: dict[str, np.ndarray]) -> None:
    for t, eid in ids.items():
        got = np.zeros((len(rows), mem[t].shape[1]), np.float32)
        filled = store.read_into(eid, [hashes[r] for r in rows], got)
        if not filled.all():
            raise HeadstartError(f"Ray finished, but {int((~filled).sum())} codes are missing from the cache "
                                 f"{store.root}: it must be a folder every Ray worker can write (a shared "
                                 "filesystem on a cluster of several machines)")
        mem[t][rows] = got


def _check_finite(codes: np.ndarray, tap: str, paths: list[Path], engine: str) -> None:
    """NaN/inf codes come from a broken engine or weights, never from an image: stop before they are cached
    (where they would poison every later run) or fitted on."""
    bad = ~np.isfinite(codes).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"the {engine} engine produced NaN/inf codes at tap {tap} for {int(bad.sum())} "
                             f"image(s), e.g. {paths[int(np.argmax(bad))]}; the network's output is unusable: "
                             "try --backend torch, or reinstall the model weights")


def _make_engine(module: nn.Module, input_shape: tuple[int, int, int], backend: str,
                 device: torch.device = torch.device("cpu"), precision: str = "fp32",
                 calibration: Calibration | None = None) -> Engine:
    """The one place the engine is built (tests wrap it to slow extraction down)."""
    return make_engine(module, input_shape, backend=backend, device=device, precision=precision,
                       calibration=calibration)


def _hash_files(paths: list[Path], workers: int | None, bar: Progress) -> tuple[list[str | None], list[DecodeFailure]]:
    """SHA-256 of every file (threads: hashlib releases the GIL); unreadable files become failures (reported
    with the undecodable ones by ``extract_codes``)."""
    def one(p: Path) -> str | DecodeFailure:
        try:
            return hash_file(p)
        except OSError as e:
            return DecodeFailure(p, f"cannot read file ({e.strerror or type(e).__name__})")

    task = bar.add_task("hashing", total=len(paths))
    hashes: list[str | None] = []
    failures: list[DecodeFailure] = []
    with ThreadPoolExecutor(max_workers=workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
        for start in range(0, len(paths), _HASH_BLOCK):
            for res in pool.map(one, paths[start:start + _HASH_BLOCK]):
                hashes.append(res if isinstance(res, str) else None)
                if isinstance(res, DecodeFailure):
                    failures.append(res)
            bar.advance(task, min(_HASH_BLOCK, len(paths) - start))
    return hashes, failures


@contextlib.contextmanager
def _store(cache: FeatureCache | None, out: Path | None) -> Iterator[FeatureCache | None]:
    """Where computed codes go: the cache; with ``out_dir`` and no cache, a scratch one removed afterwards."""
    if cache is not None or out is None:
        yield cache
        return
    scratch = tmp_path_for(out / "scratch-cache")
    try:
        yield FeatureCache(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _assemble_npy(out: Path, tap: str, store: FeatureCache, eid: str, hashes: list[str], dim: int) -> np.ndarray:
    """Fill ``out/codes_<tap>.npy`` from the store one chunk at a time; publish it atomically."""
    final = out / f"codes_{tap}.npy"
    tmp = tmp_path_for(final)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(hashes), dim))
        filled = store.read_into(eid, hashes, arr)
        if not filled.all():
            raise HeadstartError(f"{int((~filled).sum())} cached codes vanished during extraction "
                                 "(was the cache cleared meanwhile?); run the extraction again")
        arr.flush()
        del arr
        # Only now do the codes files change: an old index.json would describe the wrong rows. (Removed no
        # earlier, so that an extraction that fails before this point leaves the previous one usable.)
        (out / "index.json").unlink(missing_ok=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(final, mmap_mode="r")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "", style="progress.data.speed")


def _progress_bar(enabled: bool) -> Progress:
    """A rich bar on stderr with images/s and ETA; silent when disabled or not on a terminal (logs, CI)."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                    TimeRemainingColumn(), console=console, disable=not (enabled and console.is_terminal))
