"""A generated corpus of the image files and folders people really have: nothing binary is committed.

Every file-level item is written by a small function into a class folder. ``FILE_ITEMS`` says, for each,
what headstart must do with it: ``"ok"`` (decoded, labelled by its folder) or ``"skip"`` (skipped, with a
warning naming the file and a reason). Folder-level situations (empty class, one-image class, a symlink
loop, duplicates across splits...) have their own builders below.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import class_image  # the fast tests' images: one recipe for both suites

__all__ = ["FILE_ITEMS", "FileItem", "build_corpus_folder", "class_image", "make_ycck_jpeg", "png_bytes",
           "write_non_utf8", "ycck_expected_rgb"]

# A non-UTF-8 file name (Latin-1 "café"): on Linux file names are bytes, and Python maps the invalid byte
# to a lone surrogate ("caf\udce9.png") that cannot be printed to a UTF-8 terminal as is.
NON_UTF8_NAME = b"caf\xe9.png"


def _rgb(path: Path, cls: int, seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray(class_image(cls, np.random.default_rng(seed), size))


def png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, raw: bytes | None = None) -> bytes:
    """A PNG written by hand, so its header can claim anything (a decompression bomb, 16-bit RGB...)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(raw if raw is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_ycck_jpeg(path: Path, cmyk: tuple[int, int, int, int] = (0, 255, 255, 0), size: int = 40) -> Path:
    """A YCCK JPEG: Pillow cannot write one, so write an Adobe CMYK JPEG and set APP14's transform flag to 2.

    libjpeg then decodes the (same) samples as YCCK and hands Pillow CMYK; the colours change, which is
    expected: what matters is that it decodes to a sane RGB image, not garbage or an error.
    """
    Image.new("CMYK", (size, size), cmyk).save(path, quality=95)
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xee")  # APP14 "Adobe": length(2) "Adobe"(5) version(2) flags0(2) flags1(2) transform(1)
    if at < 0 or data[at + 4: at + 9] != b"Adobe":
        raise RuntimeError("Pillow wrote no Adobe APP14 marker; cannot make a YCCK JPEG")
    data[at + 15] = 2  # transform: 0 = CMYK (unknown), 1 = YCbCr, 2 = YCCK
    path.write_bytes(bytes(data))
    return path


def write_non_utf8(folder: Path, name: bytes, image: Image.Image) -> Path:
    """Write ``image`` under a file name that is not valid UTF-8 (bytes path); returns the str Path."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(buf.getvalue())
    return folder / os.fsdecode(name)


# -- file-level items -------------------------------------------------------------------------------------
Builder = Callable[[Path, int, int], Path]  # (class folder, class index, seed) -> the file written


@dataclass(frozen=True)
class FileItem:
    name: str
    build: Builder
    expect: str  # "ok": decoded and labelled by its folder; "skip": skipped with a warning naming the file
    reason: str = ""  # for "skip": a phrase the warning must contain (case-insensitive)


def _truncated_jpeg(d: Path, c: int, s: int) -> Path:
    p = d / "truncated.jpg"
    _rgb(p, c, s, 64).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.6)])
    return p


def _zero_byte(d: Path, c: int, s: int) -> Path:
    (p := d / "empty.jpg").write_bytes(b"")
    return p


def _text_as_jpg(d: Path, c: int, s: int) -> Path:
    (p := d / "notes.jpg").write_text("this is a text file that was renamed to .jpg\n")
    return p


def _html_as_jpg(d: Path, c: int, s: int) -> Path:
    # What a browser "Save image as..." writes when the server answered with an error page.
    (p := d / "download.jpg").write_text("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>"
                                         "<body>Forbidden</body></html>\n")
    return p


def _png_named_jpg(d: Path, c: int, s: int) -> Path:
    p = d / "really_a_png.jpg"
    _rgb(p, c, s).save(p, format="PNG")
    return p


def _jpeg_named_png(d: Path, c: int, s: int) -> Path:
    p = d / "really_a_jpeg.png"
    _rgb(p, c, s).save(p, format="JPEG", quality=95)
    return p


def _cmyk_jpeg(d: Path, c: int, s: int) -> Path:
    p = d / "cmyk.jpg"
    _rgb(p, c, s).convert("CMYK").save(p, quality=95)
    return p


def _ycck_jpeg(d: Path, c: int, s: int) -> Path:
    return make_ycck_jpeg(d / "ycck.jpg")


def _png16_grey(d: Path, c: int, s: int) -> Path:
    p = d / "grey16.png"
    a = (class_image(c, np.random.default_rng(s))[..., c % 3].astype(np.uint16) * 257)
    Image.fromarray(a).save(p)
    return p


def _png16_rgb(d: Path, c: int, s: int) -> Path:
    # 48-bit RGB: Pillow cannot write it, so the PNG is built by hand (filter byte 0 per row).
    a = class_image(c, np.random.default_rng(s)).astype(">u2") * 257
    raw = b"".join(b"\0" + row.tobytes() for row in a)
    (p := d / "rgb16.png").write_bytes(png_bytes(a.shape[1], a.shape[0], bit_depth=16, colour_type=2, raw=raw))
    return p


def _palette_png(d: Path, c: int, s: int) -> Path:
    p = d / "palette.png"
    _rgb(p, c, s).quantize(64).save(p)
    return p


def _palette_transparent_png(d: Path, c: int, s: int) -> Path:
    p = d / "palette_alpha.png"
    im = _rgb(p, c, s).quantize(64)
    im.save(p, transparency=0)
    return p


def _rgba_png(d: Path, c: int, s: int) -> Path:
    p = d / "alpha.png"
    im = _rgb(p, c, s).convert("RGBA")
    a = np.asarray(im).copy()
    a[:8, :, 3] = 0  # a transparent band
    Image.fromarray(a).save(p)
    return p


def _la_png(d: Path, c: int, s: int) -> Path:
    p = d / "grey_alpha.png"
    _rgb(p, c, s).convert("LA").save(p)
    return p


def _exif_rotated(d: Path, c: int, s: int) -> Path:
    p = d / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    _rgb(p, c, s).resize((48, 32)).save(p, exif=exif, quality=95)
    return p


def _one_pixel(d: Path, c: int, s: int) -> Path:
    p = d / "one_pixel.png"
    Image.fromarray(class_image(c, np.random.default_rng(s))[:1, :1]).save(p)
    return p


def _wide(d: Path, c: int, s: int) -> Path:
    p = d / "wide.png"
    _rgb(p, c, s, 10).resize((10000, 10)).save(p)
    return p


def _tall(d: Path, c: int, s: int) -> Path:
    p = d / "tall.png"
    _rgb(p, c, s, 10).resize((10, 10000)).save(p)
    return p


def _bomb(d: Path, c: int, s: int) -> Path:
    # The header claims 100000 x 100000 = 10^10 pixels (30 GB as RGB); the file is 100 bytes.
    (p := d / "bomb.png").write_bytes(png_bytes(100_000, 100_000))
    return p


def _animated_gif(d: Path, c: int, s: int) -> Path:
    p = d / "anim.gif"
    frames = [_rgb(p, c, s + k) for k in range(3)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return p


def _animated_webp(d: Path, c: int, s: int) -> Path:
    p = d / "anim.webp"
    frames = [_rgb(p, c, s + k) for k in range(3)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, loop=0, quality=90)
    return p


def _symlink_loop_file(d: Path, c: int, s: int) -> Path:
    p = d / "loop.jpg"
    os.symlink(p.name, p)  # points at itself: ELOOP on open
    return p


def _dangling_symlink(d: Path, c: int, s: int) -> Path:
    p = d / "moved.jpg"
    os.symlink(d / "does-not-exist.jpg", p)
    return p


def _non_utf8_name(d: Path, c: int, s: int) -> Path:
    return write_non_utf8(d, NON_UTF8_NAME, _rgb(d, c, s))


def _unreadable(d: Path, c: int, s: int) -> Path:
    """A file the OS refuses to read. chmod 0 does not stop root, so tests also patch ``open`` (see
    ``deny_reads``); the mode is set anyway, which is what a non-root run exercises for real."""
    p = d / "locked.png"
    _rgb(p, c, s).save(p)
    p.chmod(0)
    return p


FILE_ITEMS: tuple[FileItem, ...] = (
    FileItem("truncated_jpeg", _truncated_jpeg, "skip", "truncated"),
    FileItem("zero_byte", _zero_byte, "skip", "not a recognised image"),
    FileItem("text_named_jpg", _text_as_jpg, "skip", "not a recognised image"),
    FileItem("html_named_jpg", _html_as_jpg, "skip", "not a recognised image"),
    FileItem("png_named_jpg", _png_named_jpg, "ok"),
    FileItem("jpeg_named_png", _jpeg_named_png, "ok"),
    FileItem("cmyk_jpeg", _cmyk_jpeg, "ok"),
    FileItem("ycck_jpeg", _ycck_jpeg, "ok"),
    FileItem("png16_grey", _png16_grey, "ok"),
    FileItem("png16_rgb", _png16_rgb, "ok"),
    FileItem("palette_png", _palette_png, "ok"),
    FileItem("palette_png_transparency", _palette_transparent_png, "ok"),
    FileItem("rgba_png", _rgba_png, "ok"),
    FileItem("grey_alpha_png", _la_png, "ok"),
    FileItem("exif_rotated_jpeg", _exif_rotated, "ok"),
    FileItem("one_pixel", _one_pixel, "ok"),
    FileItem("wide_10000x10", _wide, "ok"),
    FileItem("tall_10x10000", _tall, "ok"),
    FileItem("decompression_bomb", _bomb, "skip", "too large"),
    FileItem("animated_gif", _animated_gif, "ok"),
    FileItem("animated_webp", _animated_webp, "ok"),
    FileItem("symlink_loop_file", _symlink_loop_file, "skip", "symbolic links"),
    FileItem("dangling_symlink", _dangling_symlink, "skip", "no such file"),
    FileItem("non_utf8_name", _non_utf8_name, "ok"),
    FileItem("unreadable_file", _unreadable, "skip", "permission denied"),
)


def build_corpus_folder(root: Path, items: tuple[FileItem, ...] = FILE_ITEMS, *, n_good: int = 10,
                        classes: tuple[str, ...] = ("circle", "square")) -> dict[str, tuple[Path, str]]:
    """``root/<class>/``: ``n_good`` plain images per class, and every item once, alternating between classes.

    Returns item name -> (path, class name). Item files live in their own subfolder of the class folder
    (``root/<class>/<item>/``) so that two items may use the same file name.
    """
    placed: dict[str, tuple[Path, str]] = {}
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(100 + ci)
        for i in range(n_good):
            Image.fromarray(class_image(ci, rng)).save(d / f"{cls}_{i:03d}.png")
    for k, item in enumerate(items):
        ci = k % len(classes)
        d = root / classes[ci] / item.name
        d.mkdir()
        placed[item.name] = (item.build(d, ci, 1000 + k), classes[ci])
    return placed


def ycck_expected_rgb(cmyk: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """The RGB a correct decoder gives for ``make_ycck_jpeg(cmyk)``.

    Pillow stores Adobe CMYK inverted, so the file's samples are ``255 - cmyk``; with transform 2 libjpeg
    reads the first three as Y, Cb, Cr (JFIF equations) and returns C, M, Y = 255 - R', 255 - G', 255 - B'
    with K as stored; Pillow inverts back ("CMYK;I") and converts with R = (255 - C)(255 - K) / 255.
    """
    y, cb, cr, k = (255 - v for v in cmyk)
    ycc = (y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128))
    return tuple((255 - min(max(v, 0.0), 255.0)) * k / 255 for v in ycc)  # type: ignore[return-value]
