"""A content-addressed cache of CNN codes: same image bytes + same extractor → same code, computed once.

Layout under the cache root (see ``FeatureCache``)::

    <root>/<extractor_id>/meta.json                   what the id stands for (model, weights, tap, preprocessing)
    <root>/<extractor_id>/chunk-<digest>.safetensors  tensor "codes" (n×D float16), metadata {"hashes": JSON list};
                                                      named by a digest of its hashes

Chunks are immutable and only ever added, each written to a temp file, fsynced, then renamed into place,
so a killed process leaves complete chunks or none; readers need no locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _st_save

from headstart.io import atomic_write, clean_stale_tmp
from headstart.models.base import Backbone

__all__ = ["CODES_VERSION", "CacheWriter", "FeatureCache", "default_cache_dir", "extractor_id", "extractor_meta",
           "hash_file"]

# Bump when the meaning of a code changes (pooling, activation...): old entries then stop matching.
CODES_VERSION = "relu-avgpool-v1"
_CHUNK_GLOB = "chunk-*.safetensors"
_F16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE/features``, else ``$XDG_CACHE_HOME/headstart/features``, else ``~/.cache/...``.

    ``HEADSTART_CACHE`` is the root of all headstart caches (engines use ``$HEADSTART_CACHE/engines``).
    """
    root = os.environ.get("HEADSTART_CACHE")
    if root:
        return Path(root).expanduser() / "features"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "headstart" / "features"


def check_cache_dir(cache_dir: str | Path | None) -> Path:
    """The cache folder to use (``cache_dir`` or the default), refused up front — before any image is
    extracted — when it cannot hold files (a file, under a file, /proc, /sys, /dev)."""
    from headstart.io import check_writable_dir

    if cache_dir:
        check_writable_dir(cache_dir, what="--cache-dir")
        return Path(cache_dir)
    root = default_cache_dir()
    check_writable_dir(root, what="HEADSTART_CACHE" if os.environ.get("HEADSTART_CACHE") else "the cache folder")
    return root


def hash_file(path: str | Path, block_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks (raises ``OSError`` if unreadable)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            h.update(block)
    return h.hexdigest()


def extractor_meta(backbone: Backbone, tap: str, precision: str = "fp32") -> dict[str, Any]:
    """Everything that determines a code besides the image bytes. The engines that compute in fp32 agree to
    ~1e-5 (below the cache's float16) and share entries; another precision (bf16 on CUDA) gets its own."""
    meta = {"model": backbone.name, "weights_id": backbone.weights_id, "tap": tap,
            "preprocess": backbone.spec.to_dict(), "codes": CODES_VERSION}
    return meta if precision == "fp32" else meta | {"precision": precision}


def extractor_id(backbone: Backbone, tap: str, precision: str = "fp32") -> str:
    """SHA-256 of the canonical JSON of ``extractor_meta``: the cache namespace of one (model, weights, tap).

    >>> from headstart.models import create_model
    >>> len(extractor_id(create_model("tiny_test"), "pooled"))
    64
    """
    return _meta_id(extractor_meta(backbone, tap, precision))


def _meta_id(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_extractor_dir(p: Path) -> bool:
    # Only directories named like an id are ours: never delete anything else a misconfigured root holds.
    return p.is_dir() and len(p.name) == 64 and all(c in "0123456789abcdef" for c in p.name)


class FeatureCache:
    """Content-addressed store of float16 codes, keyed by (extractor id, SHA-256 of the image file).

        cache = FeatureCache(default_cache_dir())
        with cache.writer(eid, meta) as w: w.add(hashes, codes)
        cache.lookup(eid, hashes)
    {'9f86d0...': array([...], dtype=float32), ...}
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        # Per extractor: hash → (chunk file name, row), and the chunk files already read (or found bad).
        self._index: dict[str, dict[str, tuple[str, int]]] = {}
        self._seen: dict[str, set[str]] = {}
        self._cleaned: set[str] = set()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    # -- reading ------------------------------------------------------------------------------------------
    def _refresh(self, eid: str) -> dict[str, tuple[str, int]]:
        """Index chunks that appeared since the last call (other processes may be writing): headers only."""
        d = self.root / eid
        index = self._index.setdefault(eid, {})
        seen = self._seen.setdefault(eid, set())
        if eid not in self._cleaned:  # once per extractor and process: leftovers of killed writers
            self._cleaned.add(eid)
            clean_stale_tmp(d)
        if not d.is_dir():
            return index
        for p in sorted(d.glob(_CHUNK_GLOB)):
            if p.name in seen:
                continue
            seen.add(p.name)
            hashes = _read_chunk_hashes(p)
            if hashes is not None:
                index.update((h, (p.name, row)) for row, h in enumerate(hashes))
        return index

    def contains(self, extractor_id: str, hashes: Sequence[str]) -> np.ndarray:
        """Boolean mask: which ``hashes`` have a code for this extractor (no tensor data is read)."""
        index = self._refresh(extractor_id)
        return np.fromiter((h in index for h in hashes), dtype=bool, count=len(hashes))

    def read_into(self, extractor_id: str, hashes: Sequence[str], out: np.ndarray) -> np.ndarray:
        """Fill ``out[i]`` with the code of ``hashes[i]`` where cached; return the mask of rows filled.

        Each chunk is read once, so memory stays bounded by one chunk whatever ``out`` is (e.g. a memmap).
        """
        if len(out) != len(hashes):
            raise ValueError(f"out has {len(out)} rows but {len(hashes)} hashes were given")
        filled = np.zeros(len(hashes), dtype=bool)
        for dst, rows in self._rows(extractor_id, hashes):
            if rows.shape[1] != out.shape[1]:
                raise ValueError(f"cached codes have {rows.shape[1]} features, out has {out.shape[1]}")
            out[dst] = rows
            filled[dst] = True
        return filled

    def lookup(self, extractor_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Codes (float32 rows) of the ``hashes`` that are cached; misses are absent from the result."""
        uniq = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for dst, rows in self._rows(extractor_id, uniq):
            found.update((uniq[i], r) for i, r in zip(dst, rows.astype(np.float32), strict=True))
        return found

    def _rows(self, eid: str, hashes: Sequence[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Per chunk holding some of ``hashes``: their positions in ``hashes`` and their float16 codes."""
        index = self._refresh(eid)
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for i, h in enumerate(hashes):
            if (loc := index.get(h)) is not None:
                dst, src = by_chunk.setdefault(loc[0], ([], []))
                dst.append(i)
                src.append(loc[1])
        for name, (dst, src) in by_chunk.items():
            codes = self._load_chunk(eid, name)
            if codes is not None:
                yield dst, codes[src]

    def _load_chunk(self, eid: str, name: str) -> np.ndarray | None:
        try:
            with safe_open(self.root / eid / name, framework="numpy") as f:
                return f.get_tensor("codes")
        except Exception as e:  # noqa: BLE001 - a bad or vanished chunk is a miss, not a crash
            warnings.warn(f"feature cache: ignoring unreadable chunk {self.root / eid / name} ({e})", stacklevel=3)
            index = self._index.get(eid, {})
            for h in [h for h, (c, _) in index.items() if c == name]:
                del index[h]
            return None

    # -- writing ------------------------------------------------------------------------------------------
    def writer(self, extractor_id: str, meta: dict[str, Any], chunk_size: int = 256) -> CacheWriter:
        """A buffered writer that commits a chunk every ``chunk_size`` codes (and the rest on ``flush``)."""
        if _meta_id(meta) != extractor_id:
            raise ValueError("meta does not hash to extractor_id; build both with extractor_meta/extractor_id")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return CacheWriter(self, extractor_id, meta, chunk_size)

    def commit_chunk(self, extractor_id: str, meta: dict[str, Any], hashes: Sequence[str], codes: np.ndarray) -> None:
        """Store ``codes[i]`` under ``hashes[i]`` as one chunk, now. Idempotent: the chunk is named by its
        content, so writing the same codes again (a task retried after a crash) rewrites the same file."""
        if _meta_id(meta) != extractor_id:
            raise ValueError("meta does not hash to extractor_id; build both with extractor_meta/extractor_id")
        codes = np.asarray(codes)
        if codes.ndim != 2 or len(codes) != len(hashes):
            raise ValueError(f"codes must be (len(hashes), D) = ({len(hashes)}, D), got {codes.shape}")
        self._commit(extractor_id, meta, list(hashes), np.clip(codes, -_F16_MAX, _F16_MAX).astype(np.float16))

    def _commit(self, eid: str, meta: dict[str, Any], hashes: list[str], codes: np.ndarray) -> None:
        d = self.root / eid
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "meta.json").exists():
            atomic_write(d / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
        # Named by content: the same codes committed twice (a retried task) are one file, not two; the second
        # write is skipped, so a reader never meets a chunk replaced under it (ESTALE on NFS).
        name = f"chunk-{hashlib.sha256(chr(10).join(hashes).encode()).hexdigest()[:32]}.safetensors"
        # C order: safetensors.numpy writes the raw buffer whatever the strides.
        codes = np.ascontiguousarray(codes)
        if not (d / name).exists():
            atomic_write(d / name, _st_save({"codes": codes}, metadata={"hashes": json.dumps(hashes)}))
        # Make our own commit visible to this process at once (the extractor reads back what it wrote);
        # no directory scan here: that would cost O(chunks) per commit.
        self._seen.setdefault(eid, set()).add(name)
        self._index.setdefault(eid, {}).update((h, (name, row)) for row, h in enumerate(hashes))

    # -- housekeeping -------------------------------------------------------------------------------------
    def info(self) -> list[dict[str, Any]]:
        """One dict per extractor: extractor, model, weights_id, tap, entries, chunks, bytes."""
        rows = []
        for d in sorted(p for p in self.root.glob("*") if _is_extractor_dir(p)):
            try:
                meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            index = self._refresh(d.name)
            chunks = list(d.glob(_CHUNK_GLOB))
            rows.append({"extractor": d.name, "model": meta.get("model", "?"),
                         "weights_id": meta.get("weights_id", "?"), "tap": meta.get("tap", "?"),
                         "entries": len(index), "chunks": len(chunks),
                         "bytes": sum(_size(p) for p in d.iterdir())})
        return rows

    def clear(self, extractor_id: str | None = None) -> int:
        """Delete one extractor's entries, or all of them; returns the bytes freed."""
        dirs = [self.root / extractor_id] if extractor_id else list(self.root.glob("*"))
        freed = 0
        for d in dirs:
            if _is_extractor_dir(d):
                freed += sum(_size(p) for p in d.rglob("*"))
                shutil.rmtree(d, ignore_errors=True)
            self._index.pop(d.name, None)
            self._seen.pop(d.name, None)
        return freed


class CacheWriter:
    """Buffers codes of one extractor and commits them as immutable chunks; use as a context manager."""

    def __init__(self, cache: FeatureCache, eid: str, meta: dict[str, Any], chunk_size: int) -> None:
        self._cache, self._eid, self._meta, self.chunk_size = cache, eid, meta, chunk_size
        self._hashes: list[str] = []
        self._codes: list[np.ndarray] = []
        self._pending: set[str] = set()
        self.written = 0
        cache._refresh(eid)  # so that codes already on disk are not stored twice

    def add(self, hashes: Sequence[str], codes: np.ndarray) -> None:
        """Queue ``codes[i]`` under ``hashes[i]``; hashes already cached or queued are skipped."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or len(codes) != len(hashes):
            raise ValueError(f"codes must be (len(hashes), D) = ({len(hashes)}, D), got {codes.shape}")
        index = self._cache._index.get(self._eid, {})
        for h, c in zip(hashes, codes, strict=True):
            if h in self._pending or h in index:
                continue
            self._pending.add(h)
            self._hashes.append(h)
            # Clip before the cast: a code beyond float16's range would otherwise be stored as inf.
            self._codes.append(np.clip(c, -_F16_MAX, _F16_MAX).astype(np.float16))
            if len(self._hashes) >= self.chunk_size:
                self._write()

    def flush(self) -> None:
        """Commit whatever is buffered as a (short) chunk."""
        if self._hashes:
            self._write()

    def _write(self) -> None:
        hashes, codes = self._hashes[: self.chunk_size], np.stack(self._codes[: self.chunk_size])
        self._cache._commit(self._eid, self._meta, hashes, codes)
        del self._hashes[: self.chunk_size], self._codes[: self.chunk_size]
        self._pending.difference_update(hashes)
        self.written += len(hashes)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Codes computed before an error are still valid: keep them.
        self.flush()


def _read_chunk_hashes(p: Path) -> list[str] | None:
    """The hashes stored in a chunk's header, or None (with a warning) if the chunk is unusable."""
    try:
        with safe_open(p, framework="numpy") as f:
            hashes = json.loads((f.metadata() or {})["hashes"])
            shape = f.get_slice("codes").get_shape()
        if len(shape) != 2 or len(hashes) != shape[0] or not all(isinstance(h, str) for h in hashes):
            raise ValueError(f"{len(hashes)} hashes for codes of shape {shape}")
        return hashes
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or foreign file: skip it, never crash
        warnings.warn(f"feature cache: ignoring corrupt chunk {p} ({e}); `headstart cache clear` removes it",
                      stacklevel=4)
        return None


def _size(p: Path) -> int:
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0
