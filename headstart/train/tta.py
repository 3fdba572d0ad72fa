"""Test-time augmentation: average the softmax over several views of each image, built from the backbone spec.

Views (``S`` = ``spec.input_size``, ``R`` = ``spec.resize_size``):

    none        the eval view: short side → R, centre S×S crop
    flip        the eval view and its horizontal mirror
    10crop      short side → R; the 4 corner and the centre S×S crops, and their mirrors (10 views)
    multiscale  short side → round(s·R) for s in (1.0, 1.14, 1.29), centre S×S crop each
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.data.loader import BatchLoader
from headstart.data.transforms import _normalize, _resample, center_crop, resize_short_side
from headstart.errors import ConfigError
from headstart.models.spec import PreprocessSpec
from headstart.train.prefix import ImageSet

__all__ = ["MULTISCALES", "TTA_MODES", "TTAViews", "evaluate"]

TTA_MODES = ("none", "flip", "10crop", "multiscale")
MULTISCALES = (1.0, 1.14, 1.29)


def _mirror(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


class TTAViews:
    """``views(img) -> (V, 3, S, S)`` float32, normalised like ``EvalTransform``."""

    def __init__(self, spec: PreprocessSpec, mode: str = "none", scales: Sequence[float] = MULTISCALES) -> None:
        if mode not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
        _resample(spec.interpolation)  # fail now on a bad interpolation, not in a worker thread
        self.spec, self.mode, self.scales = spec, mode, tuple(scales)
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
        top = max(self.scales) if mode == "multiscale" else 1.0
        self.draft_size = int(round(spec.resize_size * top))  # JPEG draft decoding never goes below it

    @property
    def n_views(self) -> int:
        return {"none": 1, "flip": 2, "10crop": 10, "multiscale": len(self.scales)}[self.mode]

    def crops(self, img: Image.Image) -> list[Image.Image]:
        """The views as PIL images (before normalisation)."""
        s, r, interp = self.spec.input_size, self.spec.resize_size, self.spec.interpolation
        img = img.convert("RGB") if img.mode != "RGB" else img
        if self.mode == "multiscale":
            return [center_crop(resize_short_side(img, int(round(r * k)), interp), s) for k in self.scales]
        base = resize_short_side(img, r, interp)
        centre = center_crop(base, s)
        if self.mode == "none":
            return [centre]
        if self.mode == "flip":
            return [centre, _mirror(centre)]
        w, h = base.size
        five = [base.crop(box) for box in ((0, 0, s, s), (w - s, 0, w, s), (0, h - s, s, h), (w - s, h - s, w, h))]
        five.append(centre)
        return five + [_mirror(c) for c in five]

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.stack([_normalize(c, self._mean, self._inv_std) for c in self.crops(img)])


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet | Sequence[str | Path], *, tta: str = "none", batch_size: int = 32,
             spec: PreprocessSpec | None = None, workers: int | None = None,
             scales: Sequence[float] = MULTISCALES) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) — the mean softmax over the ``tta`` views — and labels (N,).

    Images that fail to decode are skipped (with one warning), so N counts the decoded ones; labels are
    -1 when ``data`` is a list of paths. ``model`` runs in eval mode on its own device.
    """
    images = data if isinstance(data, ImageSet) else ImageSet(list(data), np.full(len(data), -1))
    views = TTAViews(spec or model.spec, tta, scales)  # type: ignore[arg-type]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    probs, labels = [], []
    loader = BatchLoader(images.paths, views, batch_size=max(1, batch_size // views.n_views), workers=workers,
                         draft_size=views.draft_size)
    for batch in loader:
        b, v = batch.images.shape[:2]
        x = torch.from_numpy(batch.images.reshape(b * v, *batch.images.shape[2:])).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.softmax(model(x).float(), dim=1).reshape(b, v, -1).mean(dim=1)
        probs.append(p.cpu().numpy())
        labels.append(images.labels[batch.indices])
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(probs).astype(np.float32), np.concatenate(labels)
