"""Extraction on Ray Data: decoding in CPU tasks, the network in an actor pool, codes into the shared cache.

``extract_codes(..., engine="ray")`` hashes the files and looks them up in the content-addressed cache as
always; only the images it is missing go through this pipeline:

    paths ─ map_batches(_decode)  (tasks, 1 CPU each: read, decode, resize, normalise)
          ─ map_batches(_Codes)   (actors: one backbone each, on a GPU where the cluster has them)
          ─ rows {hash, error}    (small: the driver merges them into its index)

Each actor commits its batch's codes as one cache chunk named by the batch's content (``commit_chunk``), so
a task Ray retries after a crash writes the same file again: idempotent. The driver then reads the codes
back from the cache, exactly as a local run reads its own. The cache folder must be one every worker can
reach (local disk for a one-machine cluster; a shared filesystem for several machines).

Actors take one CPU each and the pool leaves at least one CPU free, so the decoding tasks that feed it are
never starved.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data import BatchLoader, EvalTransform
from headstart.errors import ConfigError
from headstart.features.cache import FeatureCache, extractor_id, extractor_meta
from headstart.models.base import Backbone

__all__ = ["compute_with_ray"]

# What an actor reserves: a backbone, its compiled engine and a few batches in flight. Asking for it also keeps
# Ray from fusing the decoding into the actors (fused, each actor would decode its own batches one after the
# other while the CPUs left for decoding sat idle): differing resources are never fused.
ACTOR_MEMORY = 1 << 30


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'headstart[ray]'") from None
    return ray


def _connect(address: str | None) -> Any:
    """Ray, connected to ``address`` (a running cluster, e.g. ray://head:10001 or auto), or a local one."""
    ray = _ray()
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as e:  # e.g. --address auto with no cluster on this machine
            raise ConfigError(f"--address {address}: no Ray cluster there ({str(e).splitlines()[0]}); start one "
                              "(ray start --head) or leave --address out for a local one") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-stage INFO lines drown headstart's own
    return ray


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A host:port address (ray://host:port too) must accept a connection within ``timeout``: Ray itself
    retries an unreachable one for minutes before it gives up."""
    if not address or address == "auto" or address.startswith("local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: nothing answers there ({e.strerror or type(e).__name__}); start "
                          "the cluster (ray start --head) or leave --address out for a local one") from None


def _decode(batch: dict[str, np.ndarray], transform: EvalTransform) -> dict[str, np.ndarray]:
    """A Ray task: decode + preprocess a batch of files. An undecodable file keeps its row, with an error and
    a zero image (Ray batches need one shape per column), so the driver learns why it failed."""
    paths = [Path(p) for p in batch["path"]]
    size = transform.spec.input_size
    images = np.zeros((len(paths), 3, size, size), np.float32)
    errors = [""] * len(paths)
    loader = BatchLoader(paths, transform, batch_size=len(paths) or 1, workers=1, draft_size=transform.draft_size,
                         warn=False)
    for b in loader:
        images[b.indices] = b.images
    position = {p: i for i, p in enumerate(paths)}
    for f in loader.failures:
        errors[position[f.path]] = f.reason
    return {"hash": batch["hash"], "image": images, "error": np.array(errors, dtype=object)}


class _Codes:
    """A Ray actor: one backbone and engine, run on every batch, codes committed to the cache."""

    def __init__(self, backbone: Backbone, taps: Sequence[str], cache_root: str, backend: str,
                 precision: str) -> None:
        import torch

        from headstart.engine import make_engine
        from headstart.engine.codes import CodesModule

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = precision
        size = backbone.spec.input_size
        cpu_engine = self.device == "cpu" and precision == "fp32"
        self.engine = make_engine(CodesModule(backbone, list(taps)), (3, size, size), device=self.device,
                                  backend=backend if cpu_engine else "torch", precision=precision)
        self.taps, self.cache = list(taps), FeatureCache(cache_root)
        self.ids = {t: extractor_id(backbone, t, self.precision) for t in taps}
        self.meta = {t: extractor_meta(backbone, t, self.precision) for t in taps}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        hashes = [str(h) for h in batch["hash"][ok]]
        if hashes:
            outs = self.engine(np.ascontiguousarray(batch["image"][ok]))
            for t, codes in zip(self.taps, outs, strict=True):
                if not np.isfinite(codes).all():
                    raise ValueError(f"the engine produced NaN/inf codes at tap {t}")
                self.cache.commit_chunk(self.ids[t], self.meta[t], hashes, codes)
        return {"hash": batch["hash"], "error": batch["error"]}


def compute_with_ray(paths: Sequence[Path], hashes: Sequence[str], backbone: Backbone, taps: Sequence[str], *,
                     cache: FeatureCache, backend: str, batch_size: int, address: str | None,
                     precision: str = "fp32") -> dict[str, str]:
    """Codes of ``paths`` (one per hash in ``hashes``) computed on Ray and committed to ``cache``; returns
    hash → reason for the files that could not be decoded."""
    ray = _connect(address)
    if not paths:
        return {}
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    # One actor per GPU; on CPUs, all but one CPU (the decode tasks need at least one), and no more than the
    # cluster's memory holds. With fewer than 2 CPUs, actor and decoding share the one (half a CPU each).
    share = 1.0 if cpus >= 2 else cpus / 2
    actors = gpus if gpus else max(1, int(cpus - 1))
    actors = max(1, min(actors, int(resources.get("memory", ACTOR_MEMORY) // ACTOR_MEMORY)))
    ds = ray.data.from_items([{"path": str(p), "hash": h} for p, h in zip(paths, hashes, strict=True)],
                             override_num_blocks=max(1, min(len(paths) // max(batch_size, 1), 4 * cpus)))
    # Ray Data retries a task whose worker died, and restarts a dead actor and retries its batch.
    ds = ds.map_batches(_decode, fn_kwargs={"transform": EvalTransform(backbone.spec)}, batch_size=batch_size,
                        num_cpus=share)
    ds = ds.map_batches(_Codes, fn_constructor_kwargs={"backbone": backbone, "taps": list(taps),
                                                       "cache_root": str(cache.root), "backend": backend,
                                                       "precision": precision},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                        num_cpus=0 if gpus else share, num_gpus=1 if gpus else 0, memory=ACTOR_MEMORY)
    rows = ds.take_all()
    return {str(r["hash"]): str(r["error"]) for r in rows if r["error"]}
