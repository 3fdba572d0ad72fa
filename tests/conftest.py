"""Shared fixtures: generated images only (no dataset files are committed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# report.html is drawn with matplotlib (about a second per process for its import and fonts) and no test but
# test_report.py reads it; that one turns it back on. Subprocesses inherit the setting.
os.environ.setdefault("HEADSTART_REPORT", "0")


def class_image(cls_index: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """One picture of class ``cls_index``: a colour (and, for odd classes, a square) plus noise."""
    base = np.zeros((size, size, 3), np.float32)
    base[..., cls_index % 3] = 180.0
    if cls_index % 2:
        base[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255.0
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def make_class_folder(root: Path, n_per_class: int = 12, classes: tuple[str, ...] = ("circle", "square"),
                      size: int = 40, seed: int = 0) -> Path:
    """``root/<class>/<class>_NNN.png``: a small but learnable dataset (see ``class_image``)."""
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(class_image(ci, rng, size)).save(d / f"{cls}_{i:03d}.png")
    return root


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """``data/{train,test}/<a|b|c>/``: a folder with its own test split (20 training, 6 test images a class)."""
    root = tmp_path / "data"
    make_class_folder(root / "train", n_per_class=20, classes=("a", "b", "c"), seed=1)
    make_class_folder(root / "test", n_per_class=6, classes=("a", "b", "c"), seed=2)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-image's chelsea (a cat) and coffee (an espresso cup) as JPEG files."""
    skdata = pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        p = d / f"{name}.jpg"
        Image.fromarray(getattr(skdata, name)()).save(p, quality=95)
        paths[name] = p
    return paths


def fit_tiny(root: Path, data: Path, strategy: str) -> Path:
    """``root/<strategy>``: a run of ``strategy`` on ``data`` with the tiny test backbone (fine-tuning: 2
    epochs, 1 stage frozen), its codes cached in ``root/cache``."""
    from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig
    from headstart.fit import fit

    cfg = FitConfig(out=str(root / strategy), strategy=strategy, model="tiny_test", data=DataConfig(path=str(data)),
                    engine=EngineConfig(backend="torch", cache_dir=str(root / "cache"), batch_size=8),
                    finetune=FinetuneConfig(epochs=2, freeze=1))
    fit(cfg, progress=False)
    return root / strategy
