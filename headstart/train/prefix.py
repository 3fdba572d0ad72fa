"""Feeding the trainable part of a partly frozen network: run the frozen prefix once, or without autograd.

The first K stages are a fixed function (``headstart.train.freeze``). Without augmentation every image
gives the same prefix output each epoch, so ``PrefixFeatureSet`` computes it ONCE per image through the
fastest inference engine (ONNX Runtime/OpenVINO, 3-5x faster than eager PyTorch on CPU), stores it as
float16 (in memory, or an ``np.memmap`` under the run dir for big sets), and each epoch only runs
``SuffixModel`` (remaining stages + pool + dropout + classifier). With augmentation, ``OnlineFeed`` decodes
and augments in threads and runs the prefix per batch, still through the engine, never under autograd.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from headstart.data.augment import AugmentConfig, PcaLighting, TrainTransform
from headstart.data.folder import Sample
from headstart.data.loader import BatchLoader
from headstart.data.transforms import EvalTransform
from headstart.engine import make_engine, precision_for
from headstart.engine.onnx_export import module_fingerprint
from headstart.errors import DatasetError
from headstart.models.base import Backbone

__all__ = ["Feed", "ImageSet", "OnlineFeed", "PrefixFeatureSet", "PrefixRunner", "SuffixModel", "prefix_module"]

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
MEMORY_LIMIT = 1 << 30  # bytes of cached features kept in RAM; above this they go to a memmap in the run dir


@dataclass
class ImageSet:
    """Labelled image files, and how to augment them when training (``None`` or disabled: eval transform)."""

    paths: list[Path]
    labels: np.ndarray
    augment: AugmentConfig | None = None
    pca: PcaLighting | None = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], augment: AugmentConfig | None = None,
                     pca: PcaLighting | None = None) -> ImageSet:
        return cls([s.path for s in samples], np.array([s.label for s in samples]), augment, pca)

    @property
    def augmented(self) -> bool:
        return self.augment is not None and self.augment.enabled

    def __len__(self) -> int:
        return len(self.paths)


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x  # a vector stage (an ONNX net's fc7) is pooled already


def prefix_module(model: Backbone, k: int) -> nn.Module:
    """The frozen first ``k`` stages as one module; when every stage is frozen it also pools, so the cache
    holds (N, C) vectors instead of (N, C, H, W) maps (the suffix then starts at dropout)."""
    stages = list(model.stages.values())[:k]
    return nn.Sequential(*stages, _Pool()) if k == len(model.stages) else nn.Sequential(*stages)


class SuffixModel(nn.Module):
    """Stages ``k..`` + global pooling + dropout + classifier, sharing their parameters with ``model``.

    Build it after ``reset_classifier``: it holds the classifier object it was given. Dropout follows the
    classifier's train/eval mode, so ``set_train_mode(model, ...)`` drives this module too.
    """

    def __init__(self, model: Backbone, k: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(list(model.stages.values())[k:])
        self.classifier = model.classifier
        self.drop_rate = model.drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        if x.ndim == 4:
            x = x.mean(dim=(2, 3))
        return self.classifier(F.dropout(x, self.drop_rate, self.classifier.training))


class PrefixRunner:
    """Runs the frozen prefix on a float32 NCHW batch, without autograd, through ``make_engine``.

    The engine gets a deep copy of the prefix: engines switch their module to eval/channels_last, which
    must not leak into the shared modules of the model being trained. An empty prefix is the identity.
    """

    def __init__(self, prefix: nn.Module, input_shape: tuple[int, int, int], *, backend: str = "auto",
                 device: torch.device | str = "cpu") -> None:
        self.identity = len(prefix) == 0 if isinstance(prefix, nn.Sequential) else False
        self.precision = precision_for(device)  # bf16 autocast on CUDA: part of the cached features' key
        self.fingerprint = "identity" if self.identity else f"{module_fingerprint(prefix)}-{self.precision}"
        self.engine = None if self.identity else make_engine(copy.deepcopy(prefix).eval(), input_shape,
                                                             backend=backend, device=device, precision=self.precision)
        self.name = "identity" if self.engine is None else self.engine.name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.engine is None:
            return np.ascontiguousarray(batch, dtype=np.float32)
        (out,) = self.engine(batch)
        return out


class Feed:
    """Batches ``(suffix input float32, labels int64)`` on ``device``, in the order of given positions."""

    labels: np.ndarray

    def __init__(self, device: torch.device, channels_last: bool) -> None:
        self.device, self.channels_last = device, channels_last

    def __len__(self) -> int:
        return len(self.labels)

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type == "cuda":  # pinned: the copy to the GPU is asynchronous
            xt = xt.pin_memory()
        xt = xt.to(self.device, non_blocking=True)
        if self.channels_last and xt.ndim == 4:
            xt = xt.contiguous(memory_format=torch.channels_last)
        return xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def batches(self, order: np.ndarray, batch_size: int, epoch: int = 0) -> Batches:
        raise NotImplementedError


class PrefixFeatureSet(Feed):
    """Prefix outputs of every decodable image, computed once, stored as ``dtype`` (float16: half the RAM).

    Above ``memory_limit`` bytes the array is an ``np.memmap`` in ``store_dir``, named by a fingerprint of
    prefix weights + files + preprocessing, so a resumed run reuses it instead of recomputing.
    """

    def __init__(self, images: ImageSet, runner: PrefixRunner, eval_tf: EvalTransform, *, batch_size: int,
                 device: torch.device, channels_last: bool = False, dtype: type = np.float16,
                 workers: int | None = None, store_dir: Path | None = None, memory_limit: int = MEMORY_LIMIT,
                 name: str = "train") -> None:
        super().__init__(device, channels_last)
        key = hashlib.sha256(repr((runner.fingerprint, [str(p) for p in images.paths], repr(eval_tf),
                                   np.dtype(dtype).str)).encode()).hexdigest()[:20]
        path = store_dir / f"{name}-{key}.npy" if store_dir is not None else None
        if path is not None and path.exists() and path.with_suffix(".rows.npy").exists():
            self.features = np.load(path, mmap_mode="r")
            rows = np.load(path.with_suffix(".rows.npy"))
        else:
            self.features, rows = self._compute(images, runner, eval_tf, batch_size, dtype, workers, path,
                                                memory_limit)
        self.rows = rows  # positions in ``images`` that decoded; failures are skipped
        self.labels = images.labels[rows]

    @staticmethod
    def _compute(images: ImageSet, runner: PrefixRunner, eval_tf: EvalTransform, batch_size: int, dtype: type,
                 workers: int | None, path: Path | None, memory_limit: int) -> tuple[np.ndarray, np.ndarray]:
        loader = BatchLoader(images.paths, eval_tf, batch_size=batch_size, workers=workers,
                             draft_size=eval_tf.draft_size)
        store: np.ndarray | None = None
        ok = np.zeros(len(images), dtype=bool)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp") if path is not None else None
        for batch in loader:
            out = runner(batch.images)
            if store is None:  # the output shape is known only after the first batch
                shape = (len(images), *out.shape[1:])
                big = int(np.prod(shape)) * np.dtype(dtype).itemsize > memory_limit and tmp is not None
                if big:
                    assert tmp is not None
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                store = (np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape) if big
                         else np.empty(shape, dtype=dtype))
            store[batch.indices] = out.astype(dtype)
            ok[batch.indices] = True
        if store is None:
            raise DatasetError(f"none of the {len(images)} images could be decoded; nothing to train on")
        rows = np.flatnonzero(ok)
        if isinstance(store, np.memmap) and path is not None and tmp is not None:
            store.flush()
            np.save(path.with_suffix(".rows.npy"), rows)
            os.replace(tmp, path)  # complete files only: a killed build is redone, never half-read
            store = np.load(path, mmap_mode="r")
        return store, rows

    def batches(self, order: np.ndarray, batch_size: int, epoch: int = 0) -> Batches:
        for start in range(0, len(order), batch_size):
            pos = np.asarray(order[start:start + batch_size])
            # Sorted gathers read a memmap sequentially; the batch is then put back in ``order``.
            srt = np.argsort(pos, kind="stable")
            x = np.empty((len(pos), *self.features.shape[1:]), dtype=self.features.dtype)
            x[srt] = self.features[self.rows[pos[srt]]]
            yield self._tensors(x, self.labels[pos])


class OnlineFeed(Feed):
    """Decode (+ augment) in a thread pool each epoch, then the prefix engine per batch.

    Augmented views use ``np.random.default_rng([seed, epoch, index])`` per image: the same views on every
    run, on a resume, whatever the thread scheduling.
    """

    def __init__(self, images: ImageSet, runner: PrefixRunner, transform: EvalTransform | TrainTransform, *,
                 seed: int, device: torch.device, channels_last: bool = False, workers: int | None = None) -> None:
        super().__init__(device, channels_last)
        self.images, self.runner, self.transform, self.seed, self.workers = images, runner, transform, seed, workers
        self.labels = images.labels

    def batches(self, order: np.ndarray, batch_size: int, epoch: int = 0) -> Batches:
        order = np.asarray(order)
        tf = self.transform

        def item(img: Image.Image, j: int) -> np.ndarray:
            if isinstance(tf, TrainTransform):
                return tf(img, np.random.default_rng([self.seed, epoch, int(order[j])]))
            return tf(img)

        loader = BatchLoader([self.images.paths[i] for i in order], None, item_transform=item,
                             batch_size=batch_size, workers=self.workers, draft_size=tf.draft_size)
        for batch in loader:
            yield self._tensors(self.runner(batch.images), self.labels[order[batch.indices]])


def make_feeds(model: Backbone, k: int, train: ImageSet, val: ImageSet | None, *, seed: int, batch_size: int,
               device: torch.device, channels_last: bool, cache: bool | None, cache_dtype: type,
               backend: str, workers: int | None, store_dir: Path | None) -> tuple[Feed, Feed | None, str]:
    """The train and val feeds for ``train()``: cached prefix features unless training augments (or
    ``cache=False``); validation is never augmented, so it is cached whenever caching is allowed."""
    spec = model.spec
    runner = PrefixRunner(prefix_module(model, k), (3, spec.input_size, spec.input_size), backend=backend,
                          device=device)
    eval_tf = EvalTransform(spec)
    use_cache = (not train.augmented) if cache is None else (cache and not train.augmented)
    kw: dict = dict(batch_size=batch_size, device=device, channels_last=channels_last, dtype=cache_dtype,
                    workers=workers, store_dir=store_dir)

    def build(images: ImageSet, name: str, augmented: bool, cached: bool) -> Feed:
        if cached:
            return PrefixFeatureSet(images, runner, eval_tf, name=name, **kw)
        tf: EvalTransform | TrainTransform = (TrainTransform(spec, images.augment, images.pca)  # type: ignore[arg-type]
                                              if augmented else eval_tf)
        return OnlineFeed(images, runner, tf, seed=seed, device=device, channels_last=channels_last,
                          workers=workers)

    train_feed = build(train, "train", train.augmented, use_cache)
    val_feed = build(val, "val", False, cache is not False) if val is not None else None
    how = f"{'cached' if use_cache else 'online'} prefix ({k} stages, {runner.name})"
    return train_feed, val_feed, how


