"""`headstart advise` end to end on generated folders with the tiny backbone: the facts, the JSON record, the
text, one-line errors, and the same tap choice when junk files or a new seed reshuffle a ~250-image set."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import class_image, make_class_folder
from PIL import Image

from headstart.cli_fit import config_from_argv
from headstart.data import ImageFolder


def _split_folder(root: Path) -> Path:
    """train: 3 classes x 16, plus a copy within class a and a copy of an a image filed under b, plus one
    undecodable file in c; test: 3 x 4, one of them a copy of a training image."""
    make_class_folder(root / "train", n_per_class=16, classes=("a", "b", "c"))
    make_class_folder(root / "test", n_per_class=4, classes=("a", "b", "c"), seed=1)
    shutil.copy(root / "train/a/a_000.png", root / "train/a/again.png")
    shutil.copy(root / "train/a/a_001.png", root / "train/b/mislabelled.png")
    (root / "train/c/broken.png").write_bytes(b"not a png")
    shutil.copy(root / "train/b/b_003.png", root / "test/b/leaked.png")
    return root


def test_advise_json_reports_the_facts_scores_and_a_runnable_plan(tmp_path: Path, capsys, monkeypatch) -> None:
    data = _split_folder(tmp_path / "data")
    code, out, err = run_cli(capsys, monkeypatch, "advise", str(data), "--json", "--model", "tiny_test",
                             "--cache-dir", str(tmp_path / "cache"), "-q")
    assert code == 0, err
    a = json.loads(out)
    f = a["facts"]
    assert f["per_class"] == {"a": 17, "b": 17, "c": 16} and f["images"] == 50 and f["test_images"] == 13
    assert (f["per_class_min"], f["per_class_median"]) == (16, 17.0)
    assert (f["duplicates_within"], f["duplicates_conflicting"], f["duplicates_across_splits"]) == (2, 1, 1)
    assert f["near_duplicates_within"] is None  # tiny_test has no calibrated threshold: not checked
    assert [Path(u["path"]).name for u in f["undecodable"]] == ["broken.png"]
    assert f["image_size"]["most_common"] == "40x40"
    # every tap scored, tiny_test's head stage once (its pooled code is the same numbers)
    assert [t["tap"] for t in a["taps"]] == ["stem", "stage1", "stage2", "pooled"]
    assert all(0.0 <= t["probe_accuracy"] <= 1.0 and np.isfinite(t["logme"]) for t in a["taps"])
    assert a["chosen_tap"] in {t["tap"] for t in a["taps"]}
    plan = a["plan"]
    assert (plan["size"], plan["strategy"], plan["layer"]) == ("small", "linear", a["chosen_tap"])
    cfg = config_from_argv(shlex.split(plan["command"])[2:])
    assert (cfg.model, cfg.linear.layer, Path(cfg.data.path)) == ("tiny_test", a["chosen_tap"], data)
    assert any("byte-identical" in c for c in plan["cautions"])
    assert any("different classes" in c for c in plan["cautions"])
    assert 0.0 <= a["imagenet"]["nce_normalized"] <= 1.0
    assert [r["stage"] for r in a["bn_shift"]] == ["stem", "stage1", "stage2", "head"]  # tiny_test's stages
    assert all(r["kl"] >= 0 and r["layers"] >= 1 for r in a["bn_shift"])


def test_advise_prints_the_plan_and_its_reasons(tmp_path: Path, capsys, monkeypatch) -> None:
    data = make_class_folder(tmp_path / "data", n_per_class=15)
    code, out, err = run_cli(capsys, monkeypatch, "advise", str(data), "--model", "tiny_test", "-q")
    assert code == 0, err
    assert "images/class   min 12, median 12" in out  # 15 per class, fit's 20% test split held out
    plan_line = next(line for line in out.splitlines() if line.startswith("plan: "))
    assert "small (12 images/class)" in plan_line and "-> linear classifier on" in plan_line
    assert "run:       headstart fit" in out and "LogME" in out and "BatchNorm inputs vs ImageNet's" in out


@pytest.mark.parametrize(("args", "message"), [(("missing-folder",), "does not exist"),
                                               (("DATA", "--model", "resnet9000"), "resnet9000")])
def test_advise_errors_are_one_line(tmp_path: Path, capsys, monkeypatch, args: tuple[str, ...], message: str) -> None:
    data = make_class_folder(tmp_path / "data", n_per_class=6)
    args = tuple(str(data) if a == "DATA" else str(tmp_path / a) if a == "missing-folder" else a for a in args)
    code, out, err = run_cli(capsys, monkeypatch, "advise", *args, "-q")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def _noisy_folder(root: Path, n: int = 62) -> Path:
    """4 classes x 62 images whose class shows through heavy noise: accuracies of 80-97%, so the tap choice
    is a real decision (the tiny net's early stages keep more of the signal than its top)."""
    rng = np.random.default_rng(0)
    for ci, cls in enumerate("abcd"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = class_image(ci, rng, 40).astype(np.float32) * 0.4 + 76 + rng.normal(0, 150, (40, 40, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}_{i:03d}.png")
    return root


def test_tap_choice_is_stable_under_junk_files_and_a_new_seed(tmp_path: Path) -> None:
    """Issue 14: on ~250 images, five junk files (which move fit's test split) or another seed must not change
    the advised tap."""
    from headstart.advise import advise

    data = _noisy_folder(tmp_path / "data")
    base = advise(data, model="tiny_test", seed=0, progress=False)
    reseeded = advise(data, model="tiny_test", seed=1, progress=False)
    split_dir = tmp_path / "split"  # with its own test folder, another seed changes nothing advise reads
    for name in ("train", "test"):
        for cls in "abcd":
            (split_dir / name / cls).mkdir(parents=True)
    for s in ImageFolder(data, seed=0).splits["train"]:
        (split_dir / "train" / s.path.parent.name / s.path.name).symlink_to(s.path)
    for s in ImageFolder(data, seed=0).splits["test"]:
        (split_dir / "test" / s.path.parent.name / s.path.name).symlink_to(s.path)
    fixed = [advise(split_dir, model="tiny_test", seed=k, progress=False)["taps"] for k in (0, 1)]
    assert fixed[0] == fixed[1]  # every tap's scores identical: the folds follow the images, not the seed
    test_before = {s.path.name for s in ImageFolder(data, seed=0).splits["test"]}
    for i in range(5):
        (data / "abcd"[i % 4] / f"junk_{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(UserWarning):
        junk = advise(data, model="tiny_test", seed=0, progress=False)
    held_out = {s.path.name for s in ImageFolder(data, seed=0).splits["test"]}
    assert len(junk["facts"]["undecodable"]) == 5 - sum(f"junk_{i}.jpg" in held_out for i in range(5))
    assert held_out - {f"junk_{i}.jpg" for i in range(5)} != test_before  # the junk moved fit's test split
    choices = {a["chosen_tap"] for a in (base, reseeded, junk)}
    quadrants = {a["plan"]["quadrant"] for a in (base, reseeded, junk)}
    assert len(choices) == 1 and len(quadrants) == 1
    assert base["plan"]["quadrant"] == "small-far" and base["chosen_tap"] != "pooled"  # a real decision
