"""What a dataset is made of: which files are images (one rule for every command), which folders are
classes and what their names are (NFC), and what to say about the files left out.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from headstart.data.decode import IMAGE_EXTENSIONS, is_image_file, sniff_image
from headstart.errors import DatasetError

__all__ = ["SKIP_DIRS", "class_name", "code_points", "find_images", "is_image", "left_out_message", "lookalike_hint",
           "pct", "scan_images", "visible_dirs", "within", "workable_fraction"]

SKIP_DIRS = frozenset({"__MACOSX"})  # zip-extraction debris, never a class

def visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS
    )


def within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_image(path: Path) -> bool:
    """The one rule of every command: an image suffix, or any other suffix on a file whose content is an image
    of a format headstart reads (a JPEG named ``.heic``). Hidden files (``.DS_Store``, ``._x.jpg``) are not."""
    return is_image_file(path) or (not path.name.startswith(".") and sniff_image(path))


def scan_images(top: Path, root: Path | None = None, left_out: list[Path] | None = None) -> list[Path]:
    """Image files below ``top``, recursively and sorted; hidden entries skipped.

    A file with another suffix is read when its content is an image (``is_image``); the visible files that
    are not are appended to ``left_out``, so that the caller can count and name them.

    Symlinked folders are followed (people link class folders in), but each real directory is
    visited once, so a symlink loop cannot hang the scan. A link back up to a folder containing
    ``top`` (``cat/loop -> ..``) is skipped, and so is, when ``root`` (the dataset) is given, a link
    (to a folder or to an image file) to elsewhere inside ``root``: following it would label other
    classes' images as ``top``'s, or leak test images into train.
    """
    found: list[Path] = []
    elsewhere: list[Path] = []  # file links into another class or split
    seen: set[str] = set()
    top_real = os.path.realpath(top)
    root_real = os.path.realpath(root) if root is not None else None

    def elsewhere_in_root(target: str) -> bool:  # another class's or split's folder or file
        return root_real is not None and within(target, root_real) and not within(target, top_real)

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS):
            target = os.path.realpath(os.path.join(dirpath, d))
            if target in seen:  # a loop back to a folder already scanned: harmless, nothing to follow
                continue
            loop = within(top_real, target)
            if loop or elsewhere_in_root(target):
                what = "a folder containing it (a loop)" if loop else "another part of the dataset"
                warnings.warn(f"{Path(dirpath, d)}: symlink to {what}, {target}; not followed, so that no image "
                              f"is counted twice or under the wrong label", stacklevel=4)
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            path = Path(dirpath, f)
            if not is_image(path):
                if left_out is not None and not f.startswith("."):
                    left_out.append(path)
                continue
            if root_real is not None and path.is_symlink() and elsewhere_in_root(os.path.realpath(path)):
                elsewhere.append(path)
            else:
                found.append(path)
    if elsewhere:
        warnings.warn(f"{len(elsewhere)} image(s) in {top} are symlinks to another part of the dataset, e.g. "
                      f"{elsewhere[0]} -> {os.path.realpath(elsewhere[0])}; not read, so that no image is counted "
                      "twice or under the wrong label", stacklevel=4)
    return sorted(found)


def lookalike_hint(names: Sequence[str], train: set[str]) -> str:
    """`` ('Cat' (U+0043 U+0061 U+0074) differs from the training class 'cat' (...): rename one of the
    folders)`` for the ``names`` that print like a training class but are another string; else ''."""
    alike = [f"{e!r} ({code_points(e)}) differs from the training class {t!r} ({code_points(t)})"
             for e in names if (t := _lookalike(e, train))]
    return f" ({'; '.join(alike)}: rename one of the folders)" if alike else ""


def _lookalike(name: str, others: set[str]) -> str | None:
    """A class of ``others`` that prints like ``name`` but is another string (case, spaces, compatibility
    forms such as full-width letters)."""
    def key(s: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", s).casefold().split())

    return next((o for o in sorted(others) if o != name and key(o) == key(name)), None)


def pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def class_name(folder_name: str) -> str:
    """A class folder's name as a class name: Unicode NFC, so that ``café`` typed on macOS (NFD, ``e`` + a
    combining accent) and on Linux or Windows (NFC, ``é``) is one class."""
    return unicodedata.normalize("NFC", folder_name)


def code_points(name: str) -> str:
    return " ".join(f"U+{ord(ch):04X}" for ch in name)


def left_out_message(left_out: Sequence[Path], where: str) -> str:
    """One warning for the files that no command reads (not images by suffix nor by content)."""
    suffixes = Counter(p.suffix.lower() or "(none)" for p in left_out)
    by_suffix = ", ".join(f"{suf} {n}" for suf, n in suffixes.most_common(5))
    shown = "\n".join(f"  {p}" for p in left_out[:10])
    more = f"\n  ... and {len(left_out) - 10} more" if len(left_out) > 10 else ""
    return (f"{len(left_out)} file(s) in {where} are not images and were left out (by suffix: {by_suffix}); "
            "headstart reads JPEG, PNG, BMP, GIF, WebP, TIFF and PPM/PGM files whatever their suffix: convert "
            f"the others (e.g. HEIC to JPEG) or move them away:\n{shown}{more}")


def workable_fraction(labels: Sequence[int], seed: int, near: float = 0.15) -> float | None:
    """Of a few usual fractions, the one nearest ``near`` for which the seeded stratified split of ``labels``
    (as ``ImageFolder`` makes it) exists and leaves every class an image on both sides; None when none does."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2:
        return None
    for fraction in sorted((0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5), key=lambda f: (abs(f - near), f)):
        try:
            keep, held = train_test_split(list(labels), test_size=fraction, stratify=list(labels),
                                          random_state=seed)
        except ValueError:
            continue
        if set(keep) == set(counts) and set(held) == set(counts):
            return fraction
    return None


def find_images(paths: Sequence[str | Path], left_out: list[Path] | None = None) -> list[Path]:
    """Files to predict on: named files and folders (scanned recursively); sorted, unique.

    The rule of ``fit`` and ``extract`` holds for both: a file with an image suffix is read (the decoder says
    what is wrong with a bad one, a broken symlink included); a file with another suffix is read when its
    content is an image, else left out, named in one warning, and appended to ``left_out``.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(scan_images(p, left_out=skipped))
        elif p.exists() or p.is_symlink():
            (found if is_image_file(p) or sniff_image(p) else skipped).append(p)
        else:
            raise DatasetError(f"{p}: no such file or directory; check the path")
    if skipped:
        warnings.warn(left_out_message(skipped, "the paths given"), stacklevel=2)
        if left_out is not None:
            left_out.extend(skipped)
    unique: dict[str, Path] = {}
    for p in sorted(found):
        unique.setdefault(os.path.realpath(p), p)
    if not unique:
        raise DatasetError(
            f"no image files found in {', '.join(map(str, paths))}; headstart reads JPEG, PNG, BMP, GIF, WebP, "
            f"TIFF and PPM/PGM files (suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}, or any suffix on such a file)"
        )
    return list(unique.values())
