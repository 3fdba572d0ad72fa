"""Image-folder datasets: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``.

Missing splits are made by a seeded stratified split, and recorded (``to_dict``) so a resumed or
reproduced run reuses exactly the same images (``from_record``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from headstart.data.decode import IMAGE_EXTENSIONS, is_image_file
from headstart.data.scan import (
    class_name,
    code_points,
    find_images,
    left_out_message,
    lookalike_hint,
    pct,
    scan_images,
    visible_dirs,
    within,
    workable_fraction,
)
from headstart.errors import DatasetError

__all__ = ["SPLIT_ALIASES", "ImageFolder", "Sample", "find_images"]

# Canonical split name -> folder names (compared lower-case) that mean it.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}
_SPLIT_OF = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}
_SPLIT_ORDER = ("train", "val", "test")
_RECORD_VERSION = 1


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


class ImageFolder:
    """A labelled image folder with train / (val) / test splits.

    Parameters
    ----------
    root : folder laid out as ``root/<class>/<image>`` (any depth below the class folder) or
        ``root/{train,val|valid|validation,test}/<class>/<image>``.
    test_fraction : share of the images held out as test when there is no test folder (0: none).
    val_fraction : share of train carved out as val when there is no val folder (0: none).
    seed : seed of those stratified splits.
    """

    def __init__(
        self, root: str | Path, *, test_fraction: float = 0.2, val_fraction: float = 0.0, seed: int = 0
    ) -> None:
        for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
            if not 0.0 <= value < 1.0:
                raise DatasetError(f"{name}={value} is out of range; use a value in [0, 1), e.g. 0.2")
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DatasetError(f"{self.root} does not exist; pass a folder laid out as root/<class>/<image>")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a directory; pass a folder laid out as root/<class>/<image>")
        self.root = self.root.resolve()
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.left_out: list[Path] = []  # files in class folders that are not images: counted, never read

        split_dirs = self._find_split_dirs()
        self.layout = "split" if split_dirs else "flat"
        if split_dirs:
            per_split = {s: self._scan_classes(d) for s, d in split_dirs.items()}
        else:
            per_split = {"train": self._scan_classes(self.root)}
        self.classes: list[str] = sorted(set().union(*(c.keys() for c in per_split.values())))
        if len(self.classes) < 2:
            raise DatasetError(
                f"{self.root}: found {len(self.classes)} class folder ({', '.join(self.classes)}); "
                "need at least 2 classes, one subfolder per class"
            )
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self._check_split_classes(per_split)
        if self.left_out:
            warnings.warn(left_out_message(self.left_out, str(self.root)), stacklevel=2)

        self.splits: dict[str, list[Sample]] = {}
        self.split_source: dict[str, str] = {}
        for split, by_class in per_split.items():
            self.splits[split] = [Sample(p, self.class_to_idx[c]) for c in sorted(by_class) for p in by_class[c]]
            self.split_source[split] = "folder"
        if "test" not in self.splits and test_fraction > 0:
            self._carve("test", test_fraction)
        if "val" not in self.splits and val_fraction > 0:
            self._carve("val", val_fraction)
        self.splits = {s: self.splits[s] for s in _SPLIT_ORDER if s in self.splits}

    # ------------------------------------------------------------------ scanning
    def _find_split_dirs(self) -> dict[str, Path]:
        subdirs = visible_dirs(self.root)
        if not any(d.name.lower() == "train" for d in subdirs):
            return {}
        found: dict[str, Path] = {}
        for d in subdirs:
            split = _SPLIT_OF.get(d.name.lower())
            if split is None:
                warnings.warn(
                    f"{d}: ignored; in a split layout only train/val/valid/validation/test folders are read",
                    stacklevel=3,
                )
                continue
            if split in found:
                raise DatasetError(
                    f"{self.root}: both {found[split].name}/ and {d.name}/ mean the {split} split; keep only one"
                )
            found[split] = d
        return found

    def _scan_classes(self, folder: Path) -> dict[str, list[Path]]:
        class_dirs = visible_dirs(folder)
        if loops := [d for d in class_dirs if within(os.path.realpath(folder), os.path.realpath(d))]:
            warnings.warn(f"{', '.join(map(str, loops))}: symlink to a folder containing the dataset (a loop); "
                          "skipped, not a class", stacklevel=3)
            class_dirs = [d for d in class_dirs if d not in loops]
        if not class_dirs:
            n_loose = sum(1 for p in folder.iterdir() if p.is_file() and is_image_file(p))
            hint = f" (found {n_loose} images directly inside it)" if n_loose else ""
            raise DatasetError(
                f"{folder}: no class folders{hint}; put the images in one subfolder per class, e.g. {folder}/cat/1.jpg"
            )
        by_name: dict[str, Path] = {}
        for d in class_dirs:
            name = class_name(d.name)
            if name in by_name:  # two folders that look the same: which one the user meant is unknown
                a, b = by_name[name].name, d.name
                raise DatasetError(
                    f"{folder}: the class folders {a!r} ({code_points(a)}) and {b!r} ({code_points(b)}) have "
                    f"the same name written in two Unicode forms; merge them into one folder"
                )
            by_name[name] = d
        by_class = {name: scan_images(d, root=self.root, left_out=self.left_out) for name, d in by_name.items()}
        empty = [str(by_name[c]) for c, paths in by_class.items() if not paths]
        if len(empty) == len(by_class):
            raise DatasetError(
                f"{folder}: no images found in any class folder; "
                f"supported suffixes are {', '.join(sorted(IMAGE_EXTENSIONS))}"
            )
        if empty:
            others = [p for p in self.left_out if any(within(str(p), e) for e in empty)]
            hint = (f" (the {len(others)} file(s) there are not images, e.g. {others[0].name}: headstart reads "
                    "JPEG, PNG, BMP, GIF, WebP, TIFF and PPM/PGM)") if others else ""
            raise DatasetError(f"empty class folder(s) with no images: {', '.join(empty)}{hint}; remove it or add "
                               "images")
        return by_class

    def _check_split_classes(self, per_split: dict[str, dict[str, list[Path]]]) -> None:
        train = set(per_split.get("train", {}))
        for split, by_class in per_split.items():
            if split == "train":
                continue
            if missing := sorted(train - set(by_class)):
                warnings.warn(
                    f"{self.root}: the {split} split has no folder for class(es) {', '.join(missing)}; "
                    f"scores on {split} will not cover them",
                    stacklevel=3,
                )
            if extra := sorted(set(by_class) - train):
                hint = lookalike_hint(extra, train)
                warnings.warn(
                    f"{self.root}: class(es) {', '.join(extra)} in {split} have no training images{hint}; "
                    "the model cannot learn them; add them to train/ or remove them",
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ splitting
    def _carve(self, split: str, fraction: float) -> None:
        """Move a seeded, stratified ``fraction`` of train into ``split``."""
        from sklearn.model_selection import train_test_split  # lazy: ~1.5 s import, not needed to predict

        train = self.splits["train"]
        labels = [s.label for s in train]
        counts: dict[int, int] = {}
        for y in labels:
            counts[y] = counts.get(y, 0) + 1
        if few := [self.classes[y] for y, n in sorted(counts.items()) if n < 2]:
            raise DatasetError(
                f"class(es) {', '.join(few)} have fewer than 2 training images, too few for a stratified "
                f"{split} split; add images to them, or provide a {split}/ folder"
            )
        try:
            keep, held = train_test_split(
                list(range(len(train))), test_size=fraction, stratify=labels, random_state=self.seed
            )
        except ValueError as e:  # e.g. the held-out share is smaller than the number of classes
            ok = workable_fraction(labels, self.seed, near=fraction)
            fix = f"use --{split}-fraction {ok:g}, add images," if ok else "add images"
            raise DatasetError(
                f"cannot make a stratified {pct(fraction)} {split} split of {len(train)} images in "
                f"{len(counts)} classes ({e}); {fix} or provide a {split}/ folder"
            ) from None
        if missing := sorted(set(counts) - {labels[i] for i in keep}):  # every class must keep a training image
            ok = workable_fraction(labels, self.seed, near=fraction)
            fix = f"use --{split}-fraction {ok:g}, add images," if ok else "add images"
            raise DatasetError(
                f"a stratified {pct(fraction)} {split} split of {len(train)} images leaves class(es) "
                f"{', '.join(self.classes[y] for y in missing)} without a training image; {fix} or provide a "
                f"{split}/ folder"
            )
        # Keep scan order inside each split: deterministic and easy to read in the record.
        self.splits["train"] = [train[i] for i in sorted(keep)]
        self.splits[split] = [train[i] for i in sorted(held)]
        self.split_source[split] = f"seeded {pct(fraction)} stratified split of train (seed {self.seed})"

    # ------------------------------------------------------------------ reporting
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class (every class listed, zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split, samples in self.splits.items():
            c = dict.fromkeys(self.classes, 0)
            for s in samples:
                c[self.classes[s.label]] += 1
            out[split] = c
        return out

    def summary(self) -> str:
        """A small table of images per class and split, plus how each split was made."""
        counts = self.counts()
        splits = list(counts)
        width = max(len("total"), *(len(c) for c in self.classes))
        cols = [max(len(s), 5) for s in splits]
        lines = [f"{self.root} ({self.layout} layout, {len(self.classes)} classes)"]
        lines.append("  ".join([f"{'class':<{width}}", *(f"{s:>{w}}" for s, w in zip(splits, cols))]))
        for c in self.classes:
            lines.append("  ".join([f"{c:<{width}}", *(f"{counts[s][c]:>{w}}" for s, w in zip(splits, cols))]))
        totals = [sum(counts[s].values()) for s in splits]
        lines.append("  ".join([f"{'total':<{width}}", *(f"{t:>{w}}" for t, w in zip(totals, cols))]))
        lines.extend(f"{s}: {self.split_source[s]}" for s in splits)
        return "\n".join(lines)

    def __repr__(self) -> str:
        n = ", ".join(f"{s}={len(v)}" for s, v in self.splits.items())
        return f"ImageFolder({str(self.root)!r}, classes={len(self.classes)}, {n})"

    # ------------------------------------------------------------------ record / restore
    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the exact splits (paths relative to root, posix)."""
        return {
            "version": _RECORD_VERSION,
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "split_source": dict(self.split_source),
            **({"left_out": [p.relative_to(self.root).as_posix() for p in self.left_out]} if self.left_out else {}),
            "splits": {
                split: {
                    "paths": [s.path.relative_to(self.root).as_posix() for s in samples],
                    "labels": [s.label for s in samples],
                }
                for split, samples in self.splits.items()
            },
        }

    @classmethod
    def from_record(cls, d: dict[str, Any], root: str | Path | None = None) -> ImageFolder:
        """Restore the splits of ``to_dict`` without rescanning; ``root`` overrides a moved folder."""
        try:
            base = Path(root if root is not None else d["root"]).expanduser()
            classes = [str(c) for c in d["classes"]]
            raw = d["splits"]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"invalid split record (missing {e}); re-create it with ImageFolder.to_dict()") from None
        if not base.is_dir():
            raise DatasetError(
                f"{base} does not exist or is not a directory; pass root= the folder the split was made from"
            )
        self = cls.__new__(cls)
        self.root = base.resolve()
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.seed = int(d.get("seed", 0))
        self.test_fraction = float(d.get("test_fraction", 0.0))
        self.val_fraction = float(d.get("val_fraction", 0.0))
        self.layout = str(d.get("layout", "flat"))
        self.split_source = dict(d.get("split_source", {}))
        self.left_out = [self.root / str(p) for p in d.get("left_out", []) if _relative_inside(str(p))]
        self.splits = {}
        missing: list[str] = []
        for split in _SPLIT_ORDER:
            if split not in raw:
                continue
            paths, labels = raw[split]["paths"], raw[split]["labels"]
            if len(paths) != len(labels) or any(not 0 <= int(y) < len(classes) for y in labels):
                raise DatasetError(
                    f"invalid split record: bad labels in {split}; re-create it with ImageFolder.to_dict()"
                )
            if escaping := [str(p) for p in paths if not _relative_inside(str(p))]:
                raise DatasetError(
                    f"invalid split record: {split} path {escaping[0]!r} is absolute or leaves the dataset folder; "
                    "recorded paths must be relative to the root; re-create the record with ImageFolder.to_dict()"
                )
            samples = [Sample(self.root / p, int(y)) for p, y in zip(paths, labels)]
            missing += [str(s.path) for s in samples if not s.path.is_file()]
            self.splits[split] = samples
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(
                f"{len(missing)} recorded image(s) are missing under {self.root}: {', '.join(missing[:3])}{more}; "
                "pass root= the folder the split was made from, or restore the files"
            )
        return self


def _relative_inside(p: str) -> bool:
    """Whether a recorded path stays under the root: relative, no ``..``, no drive (a record may come from
    anyone, and must not make headstart read or label files outside the dataset)."""
    pure, win = PurePosixPath(p), PureWindowsPath(p)
    return bool(p) and not pure.is_absolute() and not win.drive and not win.root and ".." not in pure.parts \
        and ".." not in win.parts
