"""ImageFolder layouts, seeded splits, records, errors; find_images."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from headstart.data.folder import SPLIT_ALIASES, ImageFolder, Sample, find_images
from headstart.errors import DatasetError

_buf = io.BytesIO()
Image.new("RGB", (4, 4), (1, 2, 3)).save(_buf, format="PNG")
PNG = _buf.getvalue()


def make(root: Path, layout: dict[str, int], suffix: str = ".png") -> Path:
    """Create ``n`` tiny images in each ``root/<relative folder>``."""
    for folder, n in layout.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"img{i:03d}{suffix}").write_bytes(PNG)
    return root


def names(samples: list[Sample], root: Path) -> list[str]:
    return [s.path.relative_to(root).as_posix() for s in samples]


# ---------------------------------------------------------------- flat layout
def test_flat_seeded_stratified_split(tmp_path: Path) -> None:
    root = make(tmp_path / "ds", {"cat": 10, "dog": 10, "emu": 10})
    ds = ImageFolder(root, test_fraction=0.2, seed=0)
    assert ds.root == root.resolve()
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    assert ds.layout == "flat"
    assert list(ds.splits) == ["train", "test"]
    assert ds.counts() == {"train": {"cat": 8, "dog": 8, "emu": 8}, "test": {"cat": 2, "dog": 2, "emu": 2}}
    assert ds.split_source == {"train": "folder", "test": "seeded 20% stratified split of train (seed 0)"}
    # disjoint, complete, labels match folders
    train, test = set(ds.splits["train"]), set(ds.splits["test"])
    assert not train & test and len(train | test) == 30
    assert all(s.path.parent.name == ds.classes[s.label] for s in train | test)

    again = ImageFolder(root, test_fraction=0.2, seed=0)
    assert again.splits == ds.splits
    other = ImageFolder(root, test_fraction=0.2, seed=1)
    assert set(other.splits["test"]) != test
    assert other.split_source["test"].endswith("(seed 1)")


def test_val_carved_from_train(tmp_path: Path) -> None:
    root = make(tmp_path, {"a": 10, "b": 10})
    ds = ImageFolder(root, test_fraction=0.2, val_fraction=0.25, seed=3)
    assert list(ds.splits) == ["train", "val", "test"]
    assert ds.counts() == {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}
    assert ds.split_source["val"] == "seeded 25% stratified split of train (seed 3)"
    all_paths = [s.path for split in ds.splits.values() for s in split]
    assert len(set(all_paths)) == 20


def test_no_test_split_when_fraction_zero(tmp_path: Path) -> None:
    ds = ImageFolder(make(tmp_path, {"a": 3, "b": 3}), test_fraction=0.0)
    assert list(ds.splits) == ["train"] and len(ds.splits["train"]) == 6


def test_hidden_nontext_nested_and_symlink_loop(tmp_path: Path) -> None:
    root = make(tmp_path / "ds", {"a": 2, "a/sub/deeper": 2, "b": 3, ".hidden_class": 5, "a/.cache": 2})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / "b" / "._img000.png").write_bytes(b"AppleDouble")
    (root / "b" / "UPPER.JPG").write_bytes(PNG)
    (root / "readme.md").write_text("loose file at root")
    os.symlink(root / "a", root / "a" / "sub" / "loop")  # would recurse forever if followed naively
    with pytest.warns(UserWarning, match=r"1 file\(s\) .* not images(.|\n)*notes\.txt"):  # named; hidden ones not
        ds = ImageFolder(root, test_fraction=0.0)
    assert ds.classes == ["a", "b"]
    assert names(ds.splits["train"], root) == [
        "a/img000.png",
        "a/img001.png",
        "a/sub/deeper/img000.png",
        "a/sub/deeper/img001.png",
        "b/UPPER.JPG",
        "b/img000.png",
        "b/img001.png",
        "b/img002.png",
    ]


# ---------------------------------------------------------------- split layout
def test_split_layout_with_valid_alias(tmp_path: Path) -> None:
    root = make(tmp_path, {"train/x": 5, "train/y": 5, "Valid/x": 2, "Valid/y": 2})
    ds = ImageFolder(root, test_fraction=0.2, seed=0)
    assert ds.layout == "split"
    assert "valid" in SPLIT_ALIASES["val"]
    assert list(ds.splits) == ["train", "val", "test"]
    assert ds.split_source["train"] == ds.split_source["val"] == "folder"
    assert ds.split_source["test"].startswith("seeded 20% stratified")
    assert ds.counts()["val"] == {"x": 2, "y": 2}
    assert ds.counts()["test"] == {"x": 1, "y": 1}
    assert all(s.path.parts[-3] == "Valid" for s in ds.splits["val"])


def test_split_layout_all_folders_and_missing_class_warns(tmp_path: Path) -> None:
    root = make(tmp_path, {"train/x": 3, "train/y": 3, "test/x": 2, "val/x": 1, "val/y": 1})
    with pytest.warns(UserWarning, match=r"test split has no folder for class\(es\) y"):
        ds = ImageFolder(root, val_fraction=0.5)
    assert ds.split_source == {"train": "folder", "val": "folder", "test": "folder"}
    assert ds.counts()["test"] == {"x": 2, "y": 0}


def test_split_layout_class_union(tmp_path: Path) -> None:
    root = make(tmp_path, {"train/x": 2, "train/y": 2, "test/x": 1, "test/z": 1})
    with pytest.warns(UserWarning) as record:
        ds = ImageFolder(root)
    messages = [str(w.message) for w in record]
    assert any("z in test have no training images" in m for m in messages)
    assert any("test split has no folder for class(es) y" in m for m in messages)
    assert all(w.filename == __file__ for w in record)  # points at the caller, not at folder.py
    assert ds.classes == ["x", "y", "z"]


def test_split_layout_ambiguous_val(tmp_path: Path) -> None:
    root = make(tmp_path, {"train/x": 2, "train/y": 2, "val/x": 1, "validation/x": 1})
    with pytest.raises(DatasetError, match="keep only one"):
        ImageFolder(root)


# ---------------------------------------------------------------- errors
def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist; pass a folder laid out as root/<class>/<image>"):
        ImageFolder(tmp_path / "nope")


def test_root_is_file(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(PNG)
    with pytest.raises(DatasetError, match="not a directory"):
        ImageFolder(tmp_path / "f.png")


def test_no_class_folders(tmp_path: Path) -> None:
    make(tmp_path, {".": 3})
    with pytest.raises(DatasetError, match=r"no class folders \(found 3 images directly inside it\)"):
        ImageFolder(tmp_path)


def test_no_images_at_all(tmp_path: Path) -> None:
    make(tmp_path, {"a": 2, "b": 2}, suffix=".txt")
    for f in tmp_path.glob("*/*.txt"):  # text: not an image by suffix nor by content (a PNG named .txt is one)
        f.write_text("notes")
    with pytest.raises(DatasetError, match="no images found in any class folder"):
        ImageFolder(tmp_path)


def test_empty_class_folder(tmp_path: Path) -> None:
    root = make(tmp_path, {"a": 3, "b": 3})
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*remove it or add images"):
        ImageFolder(root)


def test_single_class(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="need at least 2 classes"):
        ImageFolder(make(tmp_path, {"only": 5}))


def test_too_few_to_stratify(tmp_path: Path) -> None:
    root = make(tmp_path, {"a": 5, "lonely": 1})
    with pytest.raises(DatasetError, match=r"lonely have fewer than 2 training images.*add images"):
        ImageFolder(root)
    # sklearn's "test_size smaller than number of classes" becomes a DatasetError too
    with pytest.raises(DatasetError, match="cannot make a stratified"):
        ImageFolder(make(tmp_path / "t", {"a": 2, "b": 2, "c": 2}), test_fraction=0.1)


def test_bad_fraction(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test_fraction=1.5"):
        ImageFolder(make(tmp_path, {"a": 2, "b": 2}), test_fraction=1.5)


# ---------------------------------------------------------------- record / summary
def test_record_roundtrip(tmp_path: Path) -> None:
    root = make(tmp_path / "ds", {"a": 6, "b/nested": 6, "c": 6})
    ds = ImageFolder(root, test_fraction=0.3, val_fraction=0.2, seed=7)
    rec = json.loads(json.dumps(ds.to_dict()))
    assert rec["seed"] == 7 and rec["classes"] == ["a", "b", "c"]
    assert "b/nested/img000.png" in rec["splits"]["train"]["paths"] + rec["splits"]["test"]["paths"] + rec[
        "splits"
    ]["val"]["paths"]
    back = ImageFolder.from_record(rec)
    assert back.splits == ds.splits
    assert back.classes == ds.classes and back.class_to_idx == ds.class_to_idx
    assert back.split_source == ds.split_source and back.counts() == ds.counts()

    moved = shutil.copytree(root, tmp_path / "moved")
    back2 = ImageFolder.from_record(rec, root=moved)
    assert names(back2.splits["test"], Path(moved).resolve()) == names(ds.splits["test"], ds.root)

    (root / "a" / "img000.png").unlink()
    with pytest.raises(DatasetError, match="missing under"):
        ImageFolder.from_record(rec)


def test_summary(tmp_path: Path) -> None:
    ds = ImageFolder(make(tmp_path, {"alpha": 5, "beta": 10}), test_fraction=0.2)
    text = ds.summary()
    assert "alpha" in text and "beta" in text and "seeded 20%" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("total"))
    assert line.split()[1:] == ["12", "3"]


# ---------------------------------------------------------------- find_images
def test_find_images(tmp_path: Path) -> None:
    make(tmp_path / "dir", {".": 2, "sub": 1, ".hid": 1})
    (tmp_path / "dir" / "skip.txt").write_text("x")
    odd = tmp_path / "photo.heic"
    odd.write_bytes(b"?")
    jpeg = tmp_path / "jpeg.heic"  # the content decides, as in fit and extract (issue 13, item 14)
    jpeg.write_bytes((tmp_path / "dir" / "img000.png").read_bytes())
    left_out: list[Path] = []
    with pytest.warns(UserWarning, match=r"2 file\(s\) in the paths given are not images"):
        found = find_images([tmp_path / "dir", str(odd), str(jpeg), tmp_path / "dir" / "img000.png"], left_out)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "dir/img000.png",
        "dir/img001.png",
        "dir/sub/img000.png",
        "jpeg.heic",  # an image whatever its suffix: read
    ]
    assert sorted(p.name for p in left_out) == ["photo.heic", "skip.txt"]  # not images: left out, counted
    with pytest.raises(DatasetError, match="no such file or directory"):
        find_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files found"):
        find_images([tmp_path / "empty"])
