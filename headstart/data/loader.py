"""Batched, threaded image loading that overlaps decoding with the consumer's compute.

Threads, not processes: Pillow releases the GIL while decoding and resizing, and threads need no
pickling, no start-up cost and no ``if __name__ == "__main__"`` guard in user scripts.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.decode import decode_image
from headstart.errors import ConfigError, DecodeError

__all__ = ["Batch", "BatchLoader", "DecodeFailure", "failure_message", "failures_reported_once", "warn_failures"]

_MAX_LISTED = 20


@dataclass
class Batch:
    """Transformed images of one batch; ``indices`` are positions in the loader's ``paths``."""

    indices: list[int]
    images: np.ndarray  # (N, C, H, W) float32, successfully decoded items only


@dataclass
class DecodeFailure:
    path: Path
    reason: str


class BatchLoader:
    """Iterate ``paths`` as ``Batch`` objects, in order, decoding ahead in a thread pool.

    ``transform(img)`` makes each item; or ``item_transform(img, i)``, told the item's position ``i`` in
    ``paths``, for random augmentation seeded per item (the same views whatever the thread scheduling).
    At most ``prefetch`` batches are decoded ahead of the consumer, so memory stays bounded.
    Files that fail to decode are skipped and collected in ``failures``; one warning lists them
    when iteration finishes. A batch in which every file failed is not yielded.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[Image.Image], np.ndarray] | None,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        draft_size: int | None = None,
        prefetch: int = 2,
        item_transform: Callable[[Image.Image, int], np.ndarray] | None = None,
        warn: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} is invalid; use a positive integer, e.g. 32")
        if prefetch < 1:
            raise ConfigError(f"prefetch={prefetch} is invalid; use a positive integer, e.g. 2")
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if workers < 1:
            raise ConfigError(f"workers={workers} is invalid; use a positive integer or leave it unset")
        if (transform is None) == (item_transform is None):
            raise ValueError("pass exactly one of transform(img) and item_transform(img, index)")
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.item_transform = item_transform
        self.batch_size = batch_size
        self.workers = workers
        self.draft_size = draft_size
        self.prefetch = prefetch
        self.warn = warn  # False: the caller reports ``failures`` itself (e.g. with files that failed earlier)
        self.failures: list[DecodeFailure] = []

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def _load(self, i: int) -> np.ndarray | DecodeFailure:
        path = self.paths[i]
        try:
            img = decode_image(path, draft_size=self.draft_size)
        except DecodeError as e:
            reason = str(e)
            prefix = f"{path}: "
            return DecodeFailure(path, reason[len(prefix) :] if reason.startswith(prefix) else reason)
        # Transform errors are bugs or bad configuration, not bad files: let them propagate.
        if self.item_transform is not None:
            return self.item_transform(img, i)
        assert self.transform is not None
        return self.transform(img)

    def __iter__(self) -> Iterator[Batch]:
        self.failures = []
        n_batches = len(self)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="headstart-decode")
        pending: deque[list[tuple[int, Future[np.ndarray | DecodeFailure]]]] = deque()
        next_batch = 0

        def submit() -> None:
            nonlocal next_batch
            start = next_batch * self.batch_size
            stop = min(start + self.batch_size, len(self.paths))
            pending.append([(i, pool.submit(self._load, i)) for i in range(start, stop)])
            next_batch += 1

        try:
            while next_batch < n_batches and len(pending) < self.prefetch:
                submit()
            while pending:
                indices: list[int] = []
                arrays: list[np.ndarray] = []
                for i, fut in pending.popleft():
                    result = fut.result()
                    if isinstance(result, DecodeFailure):
                        self.failures.append(result)
                    else:
                        indices.append(i)
                        arrays.append(result)
                # Refill before yielding so decoding overlaps with the consumer's work.
                if next_batch < n_batches:
                    submit()
                if arrays:
                    yield Batch(indices=indices, images=np.stack(arrays))
        finally:
            # An early `break` by the consumer must not wait for batches nobody will read.
            pool.shutdown(wait=True, cancel_futures=True)
        if self.warn:
            warn_failures(self.failures, len(self.paths))


# Paths already reported as undecodable in this scope (``failures_reported_once``); None: no scope, every
# reader reports every failure it meets.
_REPORTED: ContextVar[set[Path] | None] = ContextVar("headstart_reported_failures", default=None)


@contextmanager
def failures_reported_once() -> Iterator[None]:
    """Within this block each undecodable file is reported once, by the first reader that meets it: one
    command that reads the folder several times (``fit --strategy auto``: advise, then each candidate)
    warns once per bad file, not once per pass."""
    token = _REPORTED.set(set())
    try:
        yield
    finally:
        _REPORTED.reset(token)


def warn_failures(failures: Sequence[DecodeFailure], total: int, *, stacklevel: int = 2) -> None:
    """One warning for the files of ``failures`` not yet reported (see ``failures_reported_once``)."""
    seen = _REPORTED.get()
    new = [f for f in failures if seen is None or f.path not in seen]
    if seen is not None:
        seen.update(f.path for f in new)
    if new:
        warnings.warn(failure_message(new, total), stacklevel=stacklevel + 1)


def failure_message(failures: Sequence[DecodeFailure], total: int) -> str:
    """One warning for all skipped files: how many, then each with its reason (the first 20)."""
    n = len(failures)
    lines = [f"{n} of {total} image(s) could not be decoded and were skipped:"]
    lines += [f"  {f.path}: {f.reason}" for f in failures[:_MAX_LISTED]]
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    return "\n".join(lines)
