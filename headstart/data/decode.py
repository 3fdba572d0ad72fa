"""Decode any image file into a fully loaded 8-bit RGB ``PIL.Image``, or raise ``DecodeError``.

Real-world folders hold CMYK JPEGs, 16-bit PNGs, palette images with transparency, rotated phone
photos and the odd corrupt file; everything downstream can then assume plain RGB.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from headstart.errors import DecodeError

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_FORMATS", "MAX_ASPECT_RATIO", "MAX_IMAGE_PIXELS", "decode_image",
           "header_size", "is_image_file", "sniff_image"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

# The formats of those suffixes, as Pillow names them (its JPEG opener also opens the multi-picture JPEGs of
# cameras). A file with another suffix is read when its content is one of these (a JPEG named .heic), and left
# out otherwise.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

# Twice Pillow's default warning threshold, i.e. where Pillow itself refuses to open a file
# (~179 M pixels, ~0.5 GB as RGB). Anything larger is treated as a decompression bomb.
MAX_IMAGE_PIXELS: int = 89_478_485 * 2
# Resizing the short side to ~256 multiplies the long side by 256/short: a 166-byte 1x20000 PNG would
# become a 256x5,120,000 image (~4 GB as RGB). Beyond this ratio no photo is left; up to it, the transforms
# crop before resizing (``transforms.resize_center_crop``), so memory stays bounded whatever the shape.
MAX_ASPECT_RATIO: int = 1000

# `warnings.catch_warnings` swaps process-global state and is not thread-safe; the loader decodes
# from several threads, so header parsing (cheap: no pixels are decoded) is serialised.
_OPEN_LOCK = threading.Lock()

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def is_image_file(path: Path) -> bool:
    """Whether ``path`` looks like an image by its suffix; hidden files and AppleDouble ``._x`` are not."""
    name = Path(path).name
    if name.startswith("."):  # covers macOS AppleDouble "._x.jpg" resource forks too
        return False
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def sniff_image(path: str | Path) -> bool:
    """Whether the content of ``path`` is an image of one of ``IMAGE_FORMATS`` (the header only is read).

    The rule every command follows for a file whose suffix is not an image suffix: read it when its content
    is such an image, leave it out otherwise (a HEIC, a text file, a broken link), counted and named.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS):
                return True
    except Image.DecompressionBombError:
        return True  # an image, one the decoder will skip with its name and reason
    except Exception:  # noqa: BLE001 - unreadable or not one of our formats: not an image to us
        return False


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the header, no pixel decoded; None when the file cannot be opened. Pillow's
    decompression-bomb warning, which does not name the file, is not shown: ``decode_image`` names it."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - reported by the decoder when the file is read
        return None


def decode_image(
    path: str | Path, *, draft_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open ``path`` and return it as a loaded RGB image, EXIF orientation applied.

    ``draft_size`` lets libjpeg decode JPEGs at a reduced scale (1/2, 1/4, 1/8) while keeping both
    sides >= ``draft_size``; pass the resize size of the eval transform. ``max_pixels`` bounds
    width*height, checked from the header before any pixel is decoded. Pillow's own refusal
    (``PIL.Image.MAX_IMAGE_PIXELS``, twice over) still applies on top of it.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Our explicit max_pixels check below supersedes Pillow's warning; without this the
            # warning would fire for every legitimately large image under the default limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"{path}: image is too large to decode safely ({e}); resize it") from e
    except Image.UnidentifiedImageError as e:
        raise DecodeError(
            f"{path}: not a recognised image file (corrupt or wrong suffix); remove or replace it"
        ) from e
    except IsADirectoryError as e:
        raise DecodeError(f"{path}: is a directory, not an image file") from e
    except PermissionError as e:
        raise DecodeError(f"{path}: permission denied; make the file readable") from e
    except FileNotFoundError as e:
        raise DecodeError(f"{path}: no such file") from e
    except Exception as e:  # noqa: BLE001 - any parser failure means "this file is unusable"
        raise DecodeError(f"{path}: cannot open image ({_why(e)}); remove or replace the file") from e

    with im:
        try:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(
                    f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                    "(possible decompression bomb); downscale the image or raise max_pixels"
                )
            if max(w, h) > MAX_ASPECT_RATIO * max(1, min(w, h)):
                raise DecodeError(
                    f"{path}: {w}x{h} has an aspect ratio beyond {MAX_ASPECT_RATIO}:1, too thin to resize "
                    "safely (possible decompression bomb); crop the image or remove it"
                )
            if draft_size is not None and im.format == "JPEG":
                # DCT-domain downscaling; Pillow keeps both sides >= the requested size.
                im.draft("RGB", (draft_size, draft_size))
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF/WebP/TIFF: first frame
            im.load()
            out = _to_rgb(_exif_transpose(im))
            if out is im:  # never hand back the object tied to the file, which closes below
                out = im.copy()
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated data, bad tiles, unsupported modes...
            raise DecodeError(f"{path}: cannot decode image ({_why(e)}); remove or replace the file") from e
    if w * h > (Image.MAX_IMAGE_PIXELS or max_pixels):  # in place of Pillow's warning, which names no file
        warnings.warn(f"{path}: {w}x{h} = {w * h:,} pixels, more than Pillow's decompression-bomb warning "
                      f"threshold of {Image.MAX_IMAGE_PIXELS:,}; decoded (headstart's limit is {max_pixels:,}), at "
                      "a cost in memory and time: downscale it if that size is not needed", stacklevel=2)
    return out


def _why(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored, the pixels are still good."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - corrupt metadata must not reject a decodable image
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        # Composite instead of dropping alpha: dropped alpha turns transparent areas black
        # (or into whatever garbage colour the encoder stored there).
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16"):
        # 16-bit grey: Pillow's convert clips at 255; scale the full 0..65535 range instead.
        a = np.asarray(im).astype(np.uint32)
        return _gray_to_rgb(((a * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "I":
        return _gray_to_rgb(_rescale(np.asarray(im).astype(np.float64), is_float=False))
    if mode == "F":
        return _gray_to_rgb(_rescale(np.asarray(im).astype(np.float64), is_float=True))
    return im.convert("RGB")  # 1, L, P, CMYK (incl. YCCK, which libjpeg hands over as CMYK), YCbCr, HSV


def _rescale(a: np.ndarray, *, is_float: bool) -> np.ndarray:
    """Map a 32-bit int or float grey image to uint8 by guessing its nominal range."""
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if is_float and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0  # normalised float image
    elif lo >= 0.0 and hi <= 255.0:
        pass  # already 8-bit range
    elif lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0  # 16-bit data stored as 32-bit int (older Pillow, some TIFFs)
    else:
        a = (a - lo) * (255.0 / (hi - lo))  # unknown range (e.g. signed/scientific data): stretch
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _gray_to_rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).convert("RGB")  # 2-D uint8 -> "L"
