"""Predict classes for image files with a frozen network: ImageNet zoo models or trained bundles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import softmax
from torch import nn

from headstart.data import BatchLoader, DecodeFailure, EvalTransform, find_images
from headstart.engine import make_engine
from headstart.errors import NonFiniteError
from headstart.models import create_model, imagenet_labels
from headstart.models.spec import PreprocessSpec

ToProba = Callable[[tuple[np.ndarray, ...]], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (label, probability), best first

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "top": [{"label": lbl, "prob": round(p, 6)} for lbl, p in self.top]}


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[DecodeFailure] = field(default_factory=list)


class Predictor:
    """A frozen network plus what turns its outputs into class probabilities.

        p = Predictor.from_zoo("efficientnet_lite0")
        p.predict(["cat.jpg"], top_k=3).predictions[0].top
    [('tabby', 0.61), ('tiger cat', 0.2), ('Egyptian cat', 0.1)]
    """

    def __init__(self, module: nn.Module, spec: PreprocessSpec, labels: Sequence[str], to_proba: ToProba,
                 *, backend: str = "auto") -> None:
        self.module, self.spec, self.labels, self.to_proba = module, spec, list(labels), to_proba
        self.backend = backend
        self._engine = None

    @classmethod
    def from_zoo(cls, name: str, *, backend: str = "auto") -> Predictor:
        """An ImageNet-1k classifier from the model zoo."""
        model = create_model(name, pretrained=True)
        return cls(model, model.spec, imagenet_labels(), lambda outs: softmax(outs[0], axis=1), backend=backend)

    def _get_engine(self):
        if self._engine is None:
            s = self.spec.input_size
            self._engine = make_engine(self.module, (3, s, s), backend=self.backend)
        return self._engine

    def batch_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of preprocessed images (N, C, H, W), as ``EvalTransform`` makes them."""
        return self.to_proba(self._get_engine()(images))

    def predict_proba(self, paths: Sequence[Path], *,
                      batch_size: int = 32) -> tuple[np.ndarray, list[int], list[DecodeFailure]]:
        """Class probabilities for the decodable files; returns (probs, their indices in ``paths``, failures)."""
        transform = EvalTransform(self.spec)
        loader = BatchLoader(list(paths), transform, batch_size=batch_size, draft_size=transform.draft_size)
        probs, idx = [], []
        for batch in loader:
            p = self.batch_proba(batch.images)
            if not np.isfinite(p).all():  # broken weights or engine: never print "nan%" as a prediction
                bad = loader.paths[batch.indices[int(np.argmax(~np.isfinite(p).all(axis=1)))]]
                raise NonFiniteError(f"the model produced NaN/inf probabilities, e.g. for {bad}; its weights are "
                                     "damaged (re-run `headstart fit`) or the engine is faulty: try --backend torch")
            probs.append(p)
            idx.extend(batch.indices)
        out = np.concatenate(probs) if probs else np.zeros((0, len(self.labels)), np.float32)
        return out, idx, list(loader.failures)

    def predict(self, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 32) -> PredictResult:
        """Top-k labels for files and folders (scanned recursively); undecodable files land in ``failures``."""
        files = find_images(paths)
        probs, idx, failures = self.predict_proba(files, batch_size=batch_size)
        k = max(1, min(top_k, len(self.labels)))
        result = PredictResult(failures=failures)
        for row, i in zip(probs, idx):
            best = np.argsort(-row, kind="stable")[:k]
            result.predictions.append(Prediction(files[i], [(self.labels[j], float(row[j])) for j in best]))
        return result
