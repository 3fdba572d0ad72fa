"""decode_image on every awkward kind of file, all generated on the fly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data.decode import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, decode_image, is_image_file
from headstart.errors import DecodeError


def px(img: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)[xy[1], xy[0]]


def assert_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB"
    assert img.size == size
    np.asarray(img)  # fully loaded: pixels are accessible


# ---------------------------------------------------------------- plain cases
def test_rgb_png_roundtrip_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    img = decode_image(tmp_path / "x.png")
    assert_rgb(img, (5, 7))
    np.testing.assert_array_equal(np.asarray(img), a)


def test_one_pixel_and_grayscale(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    img = decode_image(str(tmp_path / "one.png"))  # str paths work too
    assert_rgb(img, (1, 1))
    assert tuple(px(img, (0, 0))) == (10, 20, 30)

    Image.new("L", (3, 2), 77).save(tmp_path / "gray.png")
    img = decode_image(tmp_path / "gray.png")
    assert_rgb(img, (3, 2))
    assert (np.asarray(img) == 77).all()


def test_cmyk_jpeg_colour(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=95)
    assert Image.open(tmp_path / "red.jpg").mode == "CMYK"
    img = decode_image(tmp_path / "red.jpg")
    assert_rgb(img, (16, 16))
    np.testing.assert_allclose(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)), (255, 0, 0), atol=12)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = np.asarray(decode_image(tmp_path / "g16.png"))[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255
    assert abs(out[128] - 128) <= 2  # mid-grey stays mid-grey (clipping would give 255)
    assert len(np.unique(out)) > 200 and (np.diff(out) >= 0).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 1000, 65535]], dtype=np.int32), [0, 4, 255]),  # 16-bit range in mode I
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # normalised float
    ],
)
def test_int32_and_float_tiff(tmp_path: Path, values: np.ndarray, expected: list[int]) -> None:
    Image.fromarray(values).save(tmp_path / "x.tif")
    assert Image.open(tmp_path / "x.tif").mode in ("I", "F")
    out = np.asarray(decode_image(tmp_path / "x.tif"))[0, :, 0].astype(int)
    np.testing.assert_allclose(out, expected, atol=1)


def test_la_png_alpha_on_white(tmp_path: Path) -> None:
    a = np.zeros((2, 2, 2), dtype=np.uint8)
    a[0, 0] = (0, 0)  # black, fully transparent -> white
    a[0, 1] = (0, 255)  # black, opaque -> black
    a[1, :] = (100, 128)  # grey half transparent -> between grey and white
    Image.frombytes("LA", (2, 2), a.tobytes()).save(tmp_path / "la.png")
    img = decode_image(tmp_path / "la.png")
    assert_rgb(img, (2, 2))
    assert tuple(px(img, (0, 0))) == (255, 255, 255)
    assert tuple(px(img, (1, 0))) == (0, 0, 0)
    assert 170 <= px(img, (0, 1))[0] <= 185


def test_palette_transparency_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))  # 0: black (transparent), 1: green
    im.putpixel((3, 3), 1)
    im.save(tmp_path / "p.png", transparency=0)
    img = decode_image(tmp_path / "p.png")
    assert_rgb(img, (4, 4))
    assert tuple(px(img, (0, 0))) == (255, 255, 255)
    assert tuple(px(img, (3, 3))) == (0, 200, 0)


def test_rgba_alpha_zero_becomes_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 255))
    im.save(tmp_path / "rgba.png")
    img = decode_image(tmp_path / "rgba.png")
    assert tuple(px(img, (0, 0))) == (255, 255, 255)
    assert tuple(px(img, (1, 0))) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 8, 8))  # red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = decode_image(tmp_path / "rot.jpg")
    assert_rgb(img, (20, 40))
    r, g, b = px(img, (16, 3))  # top-left has moved to the top-right
    assert r > 200 and b < 60
    r, g, b = px(img, (3, 3))
    assert b > 200 and r < 60


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    img = decode_image(tmp_path / "anim.gif")
    assert_rgb(img, (8, 8))
    assert tuple(px(img, (4, 4))) == (255, 0, 0)


def test_draft_on_big_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
    Image.fromarray(small).resize((2000, 1500)).save(tmp_path / "big.jpg")
    full = decode_image(tmp_path / "big.jpg")
    assert full.size == (2000, 1500)
    img = decode_image(tmp_path / "big.jpg", draft_size=256)
    assert img.mode == "RGB"
    assert 256 <= min(img.size) < 1500
    assert img.size[0] / img.size[1] == pytest.approx(2000 / 1500, rel=0.01)
    # draft is JPEG-only: other formats ignore it
    Image.fromarray(small).resize((400, 300)).save(tmp_path / "big.png")
    assert decode_image(tmp_path / "big.png", draft_size=64).size == (400, 300)


# ---------------------------------------------------------------- failures
def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="cut.jpg"):
        decode_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("content", [b"", b"hello, I am not a picture\n"])
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "fake.jpg").write_bytes(content)
    with pytest.raises(DecodeError, match=r"fake\.jpg: .*not a recognised image"):
        decode_image(tmp_path / "fake.jpg")


def test_directory_and_missing(tmp_path: Path) -> None:
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(DecodeError, match="directory"):
        decode_image(tmp_path / "d.jpg")
    with pytest.raises(DecodeError, match="no such file"):
        decode_image(tmp_path / "nope.jpg")


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 0 does not stop root (CI runs as root), so simulate the OS refusing the read.
    p = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(p)
    real_open = Image.open

    def refuse(fp, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if str(fp) == str(p):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(DecodeError, match="(?i)permission"):
        decode_image(p)


def test_decompression_bomb(tmp_path: Path) -> None:
    assert MAX_IMAGE_PIXELS >= 100_000_000
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    with pytest.raises(DecodeError, match="exceeds the limit of 1,000"):
        decode_image(tmp_path / "bomb.png", max_pixels=1000)
    assert decode_image(tmp_path / "bomb.png", max_pixels=10_000).size == (100, 100)


def test_pillow_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "warn.png")  # 400 px: Pillow warns (> 300)
    Image.new("RGB", (30, 30)).save(tmp_path / "err.png")  # 900 px: Pillow refuses (> 2 * 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # our own max_pixels decides: decoded, and no stray Pillow warning
        assert decode_image(tmp_path / "warn.png").size == (20, 20)
    # Pillow's own warning names no file; ours does (issue 13, item 15).
    assert [str(w.message).split(":")[0] for w in caught] == [str(tmp_path / "warn.png")]
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(tmp_path / "err.png")


def test_error_message_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DecodeError) as info:
        decode_image(tmp_path / "bad.png")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "bad.png"))


# ---------------------------------------------------------------- is_image_file
def test_is_image_file() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".tiff", ".pgm"} <= IMAGE_EXTENSIONS
    assert is_image_file(Path("a/b/cat.JPG"))
    assert is_image_file(Path("x.tiff"))
    assert not is_image_file(Path("notes.txt"))
    assert not is_image_file(Path(".hidden.jpg"))
    assert not is_image_file(Path("d/._cat.jpg"))  # macOS AppleDouble
    assert not is_image_file(Path("jpg"))


def test_corrupt_exif_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.data import decode

    Image.new("RGB", (5, 3), (9, 8, 7)).save(tmp_path / "e.png")
    monkeypatch.setattr(decode.ImageOps, "exif_transpose", lambda im: (_ for _ in ()).throw(SyntaxError("bad")))
    img = decode_image(tmp_path / "e.png")  # the pixels are fine: metadata trouble is not fatal
    assert_rgb(img, (5, 3))
    assert tuple(px(img, (0, 0))) == (9, 8, 7)
