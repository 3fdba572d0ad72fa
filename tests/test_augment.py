"""Training augmentation: determinism from the rng argument, geometry, colour, AlexNet PCA lighting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data.augment import AugmentConfig, PcaLighting, TrainTransform, compute_pca_lighting
from headstart.data.transforms import EvalTransform
from headstart.errors import ConfigError
from headstart.models.spec import PreprocessSpec

SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)


def quiet(**kw: object) -> AugmentConfig:
    """An augmentation with only what the test names: the defaults' colour jitter and resolution drops off."""
    return AugmentConfig(**{"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "downscale": 0.0, **kw})


OFF = quiet(hflip=False, crop="center")


def _photo(w: int = 53, h: int = 41, seed: int = 0) -> Image.Image:
    """Asymmetric content (a gradient plus noise) so flips and crops are visible."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    x[..., 1] = np.linspace(0, 255, h)[:, None]
    return Image.fromarray(np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8))


def _true_pca() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A covariance with distinct eigenvalues and non-axis-aligned eigenvectors."""
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    vals = np.array([900.0, 150.0, 20.0])
    return q @ np.diag(vals) @ q.T, vals, q


@pytest.mark.parametrize("crop", ["rrc", "scale_jitter", "center"])
def test_train_transform_deterministic_from_rng(crop: str) -> None:
    cfg = quiet(crop=crop, brightness=0.4, contrast=0.4, saturation=0.4)
    t, img = TrainTransform(SPEC, cfg), _photo()
    a = t(img, np.random.default_rng(7))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, t(img, np.random.default_rng(7)))
    assert not np.array_equal(a, t(img, np.random.default_rng(8)))


def test_hflip_mirrors_the_eval_view() -> None:
    t, img = TrainTransform(SPEC, quiet(hflip=True, crop="center")), _photo()
    ref = EvalTransform(SPEC)(img)
    seen = set()
    for seed in range(20):
        out = t(img, np.random.default_rng(seed))
        if np.array_equal(out, ref):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out, ref[:, :, ::-1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_disabled_equals_eval_transform() -> None:
    assert not OFF.enabled
    assert quiet(hflip=False, crop="center", saturation=0.1).enabled
    img = _photo(60, 45)
    np.testing.assert_array_equal(TrainTransform(SPEC, OFF)(img, np.random.default_rng(0)),
                                  EvalTransform(SPEC)(img))


def test_crops_cover_different_regions_and_draft_size() -> None:
    img = _photo(80, 60)
    for cfg, draft in ((quiet(hflip=False, rrc_scale=(0.25, 1.0)), 64),
                       (quiet(hflip=False, crop="scale_jitter"), 56)):
        t = TrainTransform(SPEC, cfg)
        assert t.draft_size == draft
        outs = [t(img, np.random.default_rng(s)) for s in range(5)]
        assert len({o.tobytes() for o in outs}) == 5
    assert TrainTransform(SPEC, OFF).draft_size == SPEC.resize_size


def test_colour_jitter_changes_brightness_only_by_factor() -> None:
    img = Image.new("RGB", (40, 40), (100, 100, 100))
    t = TrainTransform(SPEC, quiet(hflip=False, crop="center", brightness=0.5))
    means = {float((t(img, np.random.default_rng(s)) * 128 + 127).mean().round(3)) for s in range(10)}
    assert len(means) == 10 and all(50 - 1e-3 <= m <= 150 + 1e-3 for m in means)


def test_config_validation_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match="crop"):
        AugmentConfig(crop="random")
    with pytest.raises(ConfigError, match="jitter_range"):
        AugmentConfig(jitter_range=(0.5, 1.0))
    with pytest.raises(ConfigError, match="brightness"):
        AugmentConfig(brightness=-1)
    with pytest.raises(ConfigError, match="pca"):
        TrainTransform(SPEC, AugmentConfig(pca_lighting=0.1))
    assert AugmentConfig.from_dict(json.loads(json.dumps(AugmentConfig().to_dict()))) == AugmentConfig()


def test_compute_pca_lighting_matches_true_covariance(tmp_path: Path) -> None:
    cov, vals, vecs = _true_pca()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        px = rng.multivariate_normal([128, 128, 128], cov, size=64 * 64)
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8).reshape(64, 64, 3)).save(p)
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    got_vals, got_vecs = compute_pca_lighting([*paths, tmp_path / "bad.jpg"], pixels_per_image=4000)
    np.testing.assert_allclose(got_vals, vals, rtol=0.1, atol=3.0)
    # Eigenvectors are defined up to sign.
    np.testing.assert_allclose(np.abs(np.sum(got_vecs * vecs, axis=0)), 1.0, atol=0.02)
    np.testing.assert_allclose(got_vecs.T @ got_vecs, np.eye(3), atol=1e-9)


def test_pca_lighting_offsets_statistics_and_round_trip() -> None:
    _, vals, vecs = _true_pca()
    pca = PcaLighting(vals, vecs, std=0.1)
    rng = np.random.default_rng(0)
    offsets = np.stack([pca(np.zeros((2, 2, 3), np.float32), rng)[0, 0] for _ in range(20000)])
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=0.1)
    coords = offsets @ vecs  # coordinates along each eigenvector; the span is all of R^3 here
    np.testing.assert_allclose(coords.var(axis=0), vals * 0.1**2, rtol=0.05)
    np.testing.assert_allclose(np.corrcoef(coords.T), np.eye(3), atol=0.03)
    again = PcaLighting.from_dict(json.loads(json.dumps(pca.to_dict())))
    np.testing.assert_array_equal(again.eigvecs, pca.eigvecs)
    assert again.std == 0.1


def test_train_transform_pca_uses_config_std() -> None:
    _, vals, vecs = _true_pca()
    cfg = quiet(hflip=False, crop="center", pca_lighting=0.2)
    t = TrainTransform(SPEC, cfg, PcaLighting(vals, vecs, std=5.0))
    assert t.pca is not None and t.pca.std == 0.2
    img = Image.new("RGB", (40, 40), (120, 120, 120))
    out = t(img, np.random.default_rng(3)) * 128 + 127
    shift = out.reshape(3, -1).mean(axis=1) - 120
    np.testing.assert_allclose(out.reshape(3, -1).std(axis=1), 0.0, atol=1e-3)  # one offset per image
    assert 0 < np.linalg.norm(shift) < 0.2 * np.sqrt(vals.sum()) * 5


def test_downscale_blurs_only_when_drawn() -> None:
    rng = np.random.default_rng(0)
    sharp = Image.fromarray(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")  # 1-px checks
    spec = PreprocessSpec(input_size=64, crop_pct=1.0)
    plain = TrainTransform(spec, OFF)(sharp, rng)

    def detail(a: np.ndarray) -> float:  # mean absolute difference between neighbouring pixels
        return float(np.abs(np.diff(a, axis=2)).mean())

    always = TrainTransform(spec, quiet(hflip=False, crop="center", downscale=1.0))
    views = [always(sharp, np.random.default_rng(i)) for i in range(5)]
    assert all(v.shape == plain.shape for v in views)
    assert all(detail(v) < 0.5 * detail(plain) for v in views)  # the 1-px pattern cannot survive a shrink
    assert len({round(detail(v), 4) for v in views}) > 1  # the drop in resolution is random
    never = TrainTransform(spec, quiet(hflip=False, crop="center", downscale=0.0, brightness=1e-9))
    assert detail(never(sharp, np.random.default_rng(0))) == pytest.approx(detail(plain), rel=1e-3)
    # Half the views are dropped in resolution: about half of 200 are blurred.
    half = TrainTransform(spec, quiet(hflip=False, crop="center", downscale=0.5))
    blurred = sum(detail(half(sharp, np.random.default_rng(i))) < 0.5 * detail(plain) for i in range(200))
    assert 70 < blurred < 130
    assert quiet(hflip=False, crop="center", downscale=0.3).enabled  # no prefix cache then
    with pytest.raises(ConfigError, match="downscale"):
        AugmentConfig(downscale=1.5)
    with pytest.raises(ConfigError, match="downscale_range"):
        AugmentConfig(downscale_range=(0.0, 0.5))


@pytest.mark.parametrize("ratio", [(2.225073858507203e-309, 1.0), (1.0, 1e308), (1e300, 1e300), (1e-300, 1e-300)])
def test_random_resized_crop_boxes_stay_inside_the_image_at_any_accepted_ratio(ratio: tuple[float, float]) -> None:
    from headstart.data.augment import _rrc_box

    AugmentConfig(rrc_ratio=ratio)  # accepted: any positive pair
    for seed in range(20):
        left, top, w, h = _rrc_box((32, 24), (0.35, 1.0), ratio, np.random.default_rng(seed))
        assert 0 < w and 0 < h and 0 <= left and left + w <= 32 and 0 <= top and top + h <= 24
