"""Training-time augmentation built from a backbone's ``PreprocessSpec``. Pure Pillow + NumPy.

Every random draw comes from the ``numpy.random.Generator`` passed to the call, never from global
state, so a training loop that seeds one generator per (seed, epoch, sample index) gets the same
augmented views on every run and after a resume, whatever the thread scheduling.

Order of operations: crop (random-resized, scale jitter or centre) → horizontal flip → colour
jitter (brightness, contrast, saturation) → PCA lighting → the backbone's normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.data.decode import decode_image
from headstart.data.transforms import EvalTransform, _resample, resize_center_crop, resize_short_side
from headstart.errors import ConfigError, DatasetError, DecodeError
from headstart.models.spec import PreprocessSpec
from headstart.settings import check_settings, setting

__all__ = ["AugmentConfig", "PcaLighting", "TrainTransform", "compute_pca_lighting"]

CROPS = ("rrc", "scale_jitter", "center")
_GRAY = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L" mode


# Every random augmentation off (``--no-augment``; tune's coarse stage): then the frozen prefix is cached.
AUGMENT_OFF: dict[str, Any] = {"hflip": False, "crop": "center", "brightness": 0.0, "contrast": 0.0,
                               "saturation": 0.0, "pca_lighting": 0.0, "downscale": 0.0}


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise. All off (``hflip=False, crop="center"``, zero strengths) = the eval transform.

    ``crop``: ``"rrc"`` crops a random box of ``rrc_scale`` × the image area and aspect ratio in
    ``rrc_ratio`` (log-uniform), resized to ``input_size`` (Inception/torchvision);
    ``"scale_jitter"`` resizes the short side to ``S ~ U[lo, hi] × input_size``, ``(lo, hi) =
    jitter_range``, then takes a random ``input_size`` square (ResNet: 256-480 for 224 ≈ (1.14, 2.14));
    ``"center"`` keeps the eval resize + centre crop. Colour strengths ``b`` draw a factor in
    ``U[1-b, 1+b]``; ``pca_lighting`` is the std of AlexNet's per-image lighting coefficients (0.1).
    ``downscale`` is the probability of a resolution drop (albumentations' Downscale): the view is shrunk
    to a side of ``U[downscale_range] × input_size`` and enlarged back, so that sharpness, which often
    tells the *source* of an image (a scanner, a website) rather than its class, stops being a cue.

    >>> off = dict(hflip=False, crop="center", brightness=0.0, contrast=0.0, saturation=0.0, downscale=0.0)
    >>> AugmentConfig().enabled, AugmentConfig(**off).enabled
    (True, False)
    """

    hflip: bool = setting(True, flag="--hflip", help="finetune: random horizontal flips")
    crop: str = setting("rrc", choices=CROPS, flag="--crop", help="finetune: training crop rrc (random "
                        "resized), scale_jitter (ResNet short-side jitter) or center")
    rrc_scale: tuple[float, float] = setting((0.35, 1.0), help="rrc: range of the crop's share of the image area")
    rrc_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), help="rrc: range of the crop's aspect ratio")
    jitter_range: tuple[float, float] = setting((1.0, 1.75), help="scale_jitter: short side range, x input size")
    brightness: float = setting(0.3, ge=0, help="colour jitter: brightness factor in 1 +- this (--color-jitter)")
    contrast: float = setting(0.3, ge=0, help="colour jitter: contrast factor in 1 +- this (--color-jitter)")
    saturation: float = setting(0.3, ge=0, help="colour jitter: saturation factor in 1 +- this (--color-jitter)")
    pca_lighting: float = setting(0.0, ge=0, flag="--pca-lighting", help="finetune: AlexNet PCA colour "
                                  "augmentation, std of the coefficients, e.g. 0.1")
    downscale: float = setting(0.8, ge=0, le=1, flag="--downscale", help="finetune: probability of a random "
                               "resolution drop (shrink, enlarge back), so sharpness stops telling the image's "
                               "source")
    downscale_range: tuple[float, float] = setting((0.35, 0.9), help="downscale: side range, x input size")

    def __post_init__(self) -> None:
        check_settings(self, "finetune.augment")
        for name, lo_min, hi_max in (("rrc_scale", 0.0, 1.0), ("rrc_ratio", 0.0, math.inf),
                                     ("jitter_range", 1.0, math.inf), ("downscale_range", 0.0, 1.0)):
            value = getattr(self, name)
            try:
                pair = tuple(float(v) for v in value) if not isinstance(value, str) else ()
            except (TypeError, ValueError):
                pair = ()
            # jitter must not go below input_size: a random crop needs a short side >= input_size.
            lo_ok = len(pair) == 2 and (pair[0] >= lo_min if name == "jitter_range" else pair[0] > lo_min)
            if not (lo_ok and pair[0] <= pair[1] <= hi_max):
                bound = ">= 1" if name == "jitter_range" else f"> {lo_min:g}"
                top = f" <= {hi_max:g}" if hi_max < math.inf else ""
                raise ConfigError(f"finetune.augment.{name} must be a pair lo <= hi with lo {bound}{top}; "
                                  f"got {value!r}")
            object.__setattr__(self, name, pair)  # lists from TOML/JSON become tuples

    @property
    def enabled(self) -> bool:
        """False when nothing is random: training can then reuse cached (prefix) features."""
        return (self.hflip or self.crop != "center" or self.brightness > 0 or self.contrast > 0
                or self.saturation > 0 or self.pca_lighting > 0 or self.downscale > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        return cls(**d)


@dataclass
class PcaLighting:
    """AlexNet's lighting noise: add ``eigvecs @ (alpha * sqrt(eigvals))``, ``alpha ~ N(0, std)``, per image.

    ``eigvals`` (descending) / ``eigvecs`` (columns) are those of the 3×3 RGB covariance of training
    pixels on the 0-255 scale. AlexNet writes ``alpha * eigval``, which only makes sense for its
    pixel scale; with ``sqrt(eigval)`` (the pixel std along that axis) ``std`` is the fraction of the
    natural colour spread, whatever the scale. The offset is not clipped, so its mean stays 0.

    >>> pca = PcaLighting(np.array([400.0, 25.0, 4.0]), np.eye(3), std=0.1)
    >>> pca(np.zeros((2, 2, 3), np.float32), np.random.default_rng(0)).shape
    (2, 2, 3)
    """

    eigvals: np.ndarray
    eigvecs: np.ndarray
    std: float = 0.1

    def __post_init__(self) -> None:
        self.eigvals = np.asarray(self.eigvals, dtype=np.float64).reshape(3)
        self.eigvecs = np.asarray(self.eigvecs, dtype=np.float64).reshape(3, 3)
        if (self.eigvals < 0).any() or not np.isfinite(self.eigvals).all() or not self.std >= 0:
            raise ConfigError(f"PCA lighting needs eigvals >= 0 and std >= 0; got {self.eigvals}, {self.std}")

    def offset(self, rng: np.random.Generator) -> np.ndarray:
        """One random RGB offset (3,), on the 0-255 scale."""
        alpha = rng.normal(0.0, self.std, size=3)
        return self.eigvecs @ (alpha * np.sqrt(self.eigvals))

    def __call__(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add one offset to every pixel of an HWC float 0-255 array; returns float32."""
        return (np.asarray(arr, dtype=np.float32) + self.offset(rng).astype(np.float32)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"eigvals": self.eigvals.tolist(), "eigvecs": self.eigvecs.tolist(), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PcaLighting:
        return cls(np.asarray(d["eigvals"]), np.asarray(d["eigvecs"]), float(d.get("std", 0.1)))


def compute_pca_lighting(
    paths: Sequence[Path], *, max_images: int = 500, pixels_per_image: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance of training pixels.

    Samples ``max_images`` files and ``pixels_per_image`` pixels of each (0-255 scale). Undecodable
    files are skipped; none decodable raises ``DatasetError``. Computed once per run and stored.

        vals, vecs = compute_pca_lighting(train_paths)
    """
    rng = np.random.default_rng(seed)
    paths = list(paths)
    if len(paths) > max_images:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=max_images, replace=False))]
    chunks = []
    for p in paths:
        try:
            # Colour statistics do not need full resolution; JPEG draft decoding makes this ~10x faster.
            arr = np.asarray(decode_image(p, draft_size=256), dtype=np.float64).reshape(-1, 3)
        except DecodeError:
            continue
        if len(arr) > pixels_per_image:
            arr = arr[rng.choice(len(arr), size=pixels_per_image, replace=False)]
        chunks.append(arr)
    if not chunks:
        raise DatasetError(f"PCA lighting: none of the {len(paths)} sampled images could be decoded")
    cov = np.cov(np.concatenate(chunks), rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    # Fix each eigenvector's sign (largest component positive) so stored runs are reproducible.
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(3)])
    return vals, vecs * np.where(signs == 0, 1.0, signs)


class TrainTransform:
    """Random training view of a PIL image → float32 CHW array, normalised like ``EvalTransform``.

    ``cfg.pca_lighting > 0`` needs ``pca`` (from ``compute_pca_lighting``); ``cfg.pca_lighting`` is
    then the std used, overriding ``pca.std``.

    >>> t = TrainTransform(PreprocessSpec(224), AugmentConfig(brightness=0.4))
    >>> t(Image.new("RGB", (300, 200)), np.random.default_rng(0)).shape
    (3, 224, 224)
    """

    def __init__(self, spec: PreprocessSpec, cfg: AugmentConfig, pca: PcaLighting | None = None) -> None:
        self.spec, self.cfg = spec, cfg
        self._eval = EvalTransform(spec)  # validates the interpolation at construction
        self._resample = _resample(spec.interpolation)
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
        self.pca: PcaLighting | None = None
        if cfg.pca_lighting > 0:
            if pca is None:
                raise ConfigError("augment pca_lighting > 0 needs the eigen-decomposition of the training "
                                  "pixels: pass pca=PcaLighting(*compute_pca_lighting(paths))")
            self.pca = replace(pca, std=cfg.pca_lighting)
        # JPEG draft decoding must keep enough pixels for the most zoomed-in view we may produce.
        size = spec.input_size
        if cfg.crop == "rrc":
            self.draft_size = int(math.ceil(size / math.sqrt(cfg.rrc_scale[0])))
        elif cfg.crop == "scale_jitter":
            self.draft_size = int(math.ceil(size * cfg.jitter_range[1]))
        else:
            self.draft_size = spec.resize_size

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if not cfg.enabled:
            return self._eval(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self._crop(img, rng)
        if cfg.downscale > 0 and rng.random() < cfg.downscale:
            size = img.size[0]
            low = max(1, int(round(size * rng.uniform(*cfg.downscale_range))))
            img = img.resize((low, low), self._resample).resize((size, size), self._resample)
        if cfg.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.float32)  # H, W, 3 on 0-255
        if cfg.brightness > 0:
            arr = _blend(arr, 0.0, _factor(rng, cfg.brightness))
        if cfg.contrast > 0:
            arr = _blend(arr, float((arr @ _GRAY).mean()), _factor(rng, cfg.contrast))
        if cfg.saturation > 0:
            arr = _blend(arr, (arr @ _GRAY)[..., None], _factor(rng, cfg.saturation))
        if self.pca is not None:
            arr = self.pca(arr, rng)
        arr = (arr - self._mean) * self._inv_std
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)

    def _crop(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        size, cfg = self.spec.input_size, self.cfg
        if cfg.crop == "center":
            return resize_center_crop(img, self.spec.resize_size, size, self.spec.interpolation)
        if cfg.crop == "scale_jitter":
            lo, hi = cfg.jitter_range
            short = max(size, int(round(rng.uniform(lo * size, hi * size))))
            img = resize_short_side(img, short, self.spec.interpolation)
            w, h = img.size
            left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
            return img.crop((left, top, left + size, top + size))
        left, top, w, h = _rrc_box(img.size, cfg.rrc_scale, cfg.rrc_ratio, rng)
        # Crop and resize in one resampling pass (box=), as torchvision's resized_crop does.
        return img.resize((size, size), self._resample, box=(left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"TrainTransform(input_size={self.spec.input_size}, {self.cfg})"


def _factor(rng: np.random.Generator, strength: float) -> float:
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def _blend(arr: np.ndarray, other: float | np.ndarray, factor: float) -> np.ndarray:
    """``other + factor * (arr - other)`` clipped to 0-255, the blend PIL.ImageEnhance uses."""
    return np.clip(other + factor * (arr - other), 0.0, 255.0).astype(np.float32)


def _rrc_box(
    wh: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: 10 tries, then a centre crop within the ratio range."""
    width, height = wh
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        fw, fh = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if not (fw < width + 0.5 and fh < height + 0.5):  # too big, or an extreme ratio's overflow (inf)
            continue
        w, h = int(round(fw)), int(round(fh))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        w, h = max(1, int(round(height * ratio[1]))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
