"""Test-time augmentation averages the softmax over exactly the documented views; snapshot ensembles average."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from headstart.bundle import load, save_finetune_bundle
from headstart.ensemble import run_proba
from headstart.models import create_model
from headstart.models.spec import PreprocessSpec
from headstart.train import ImageSet, TTAViews, evaluate

SPEC = PreprocessSpec(input_size=16, crop_pct=0.8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # resize 20


class RegionModel(nn.Module):
    """Logits = means of image regions: any wrong crop, flip or scale changes them."""

    spec = SPEC

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1 / 40))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.stack([x[:, 0, :8, :8].mean((1, 2)), x[:, 1, 4:, :5].mean((1, 2)),
                                         x[:, 2, :, 9:].mean((1, 2))], dim=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d, rng = tmp_path_factory.mktemp("tta"), np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(27, 21), (20, 31), (24, 24)]):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        paths.append(d / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _resize_short(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def _centre(img: Image.Image, s: int = 16) -> Image.Image:
    w, h = img.size
    left, top = int(round((w - s) / 2)), int(round((h - s) / 2))
    return img.crop((left, top, left + s, top + s))


def _manual_views(img: Image.Image, mode: str) -> list[Image.Image]:
    base = _resize_short(img, 20)
    w, h = base.size
    if mode == "none":
        return [_centre(base)]
    if mode == "flip":
        return [_centre(base), ImageOps.mirror(_centre(base))]
    if mode == "multiscale":
        return [_centre(_resize_short(img, s)) for s in (20, 23, 26)]  # round(20 × 1, 1.14, 1.29)
    five = [base.crop((0, 0, 16, 16)), base.crop((w - 16, 0, w, 16)), base.crop((0, h - 16, 16, h)),
            base.crop((w - 16, h - 16, w, h)), _centre(base)]
    return five + [ImageOps.mirror(v) for v in five]


@pytest.mark.parametrize("mode,n", [("none", 1), ("flip", 2), ("10crop", 10), ("multiscale", 3)])
def test_tta_averages_softmax_over_the_documented_views(images: list[Path], mode: str, n: int) -> None:
    model = RegionModel()
    probs, labels = evaluate(model, ImageSet(images, [0, 1, 2]), tta=mode, batch_size=7)
    assert probs.shape == (3, 3) and labels.tolist() == [0, 1, 2] and TTAViews(SPEC, mode).n_views == n
    for p, path in zip(probs, images):
        views = _manual_views(Image.open(path).convert("RGB"), mode)
        assert len(views) == n and len({v.tobytes() for v in views}) == n  # really different views
        x = torch.stack([torch.from_numpy(np.asarray(v, np.float32).transpose(2, 0, 1).copy()) for v in views])
        expected = torch.softmax(model(x), dim=1).mean(0).detach().numpy()
        np.testing.assert_allclose(p, expected, atol=1e-6)


def test_snapshot_ensemble_averages_snapshots(images: list[Path], tmp_path: Path) -> None:
    """A bundle with snapshots predicts (with or without TTA) the mean softmax of its members."""
    torch.manual_seed(0)
    model = create_model("tiny_test", num_classes=3)
    data = ImageSet(images, [0, 1, 2])
    states, singles = {}, {"flip": [], "none": []}
    for epoch in (1, 2):
        with torch.no_grad():
            model.classifier.weight.normal_(std=0.5)
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        for mode in singles:
            singles[mode].append(evaluate(model, data, tta=mode)[0])
    save_finetune_bundle(tmp_path / "bundle", model=model, classes=["a", "b", "c"], snapshots={1: states[1]})
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["snapshots"] == [
        "snapshots/epoch-001.safetensors"]
    loaded = load(tmp_path / "bundle", backend="torch")
    np.testing.assert_allclose(run_proba(loaded, data, tta="flip"), (singles["flip"][0] + singles["flip"][1]) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(images), (singles["none"][0] + singles["none"][1]) / 2, atol=1e-6)
    # A bundle saved again without snapshots is a plain model, and the old member file is gone.
    save_finetune_bundle(tmp_path / "bundle", model=model, classes=["a", "b", "c"])
    assert not list((tmp_path / "bundle" / "snapshots").glob("*"))
    np.testing.assert_allclose(load(tmp_path / "bundle", backend="torch").predict_proba(images), singles["none"][1],
                               atol=1e-6)
