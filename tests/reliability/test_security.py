"""Nothing a user may have been given (a bundle, a checkpoint, a split record, a codes folder, a config) can
run code or make headstart read or write outside its folder."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import headstart
from headstart.bundle import HEAD, META, WEIGHTS, load, save_finetune_bundle
from headstart.data import ImageFolder
from headstart.errors import BundleError, CheckpointError, DatasetError, HeadstartError
from headstart.features import load_codes
from headstart.models import create_model
from headstart.train.checkpoint import load_checkpoint

from .helpers import TINY, make_class_folder, run

PACKAGE = Path(headstart.__file__).parent


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle was loaded (and code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_pickle(marker: Path, *, torch_format: bool = False) -> bytes:
    """A pickle that creates ``marker`` when loaded, as plain pickle bytes or as a torch.save zip."""
    if torch_format:
        import io

        buf = io.BytesIO()
        torch.save({"weight": _Payload(marker)}, buf)
        return buf.getvalue()
    return pickle.dumps({"coef": _Payload(marker)})


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Guard for the tests below: loading the payload the unsafe way really does create the marker."""
    marker = tmp_path / "pwned"
    pickle.loads(malicious_pickle(marker))
    assert marker.exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("security")
    data = make_class_folder(root / "data", 8)
    common = ("--cache-dir", root / "cache", *TINY)
    run("fit", data, "--out", root / "linear", *common).assert_ok()
    run("fit", data, "--out", root / "ft", "--strategy", "finetune", "--epochs", "2", "--freeze", "1",
        "--batch-size", "8", *common).assert_ok()
    return {"data": data, "linear": root / "linear", "finetune": root / "ft"}


@pytest.mark.parametrize("kind", ["linear", "finetune"])
@pytest.mark.parametrize("checksum", ["with checksum", "old bundle without checksum"])
@pytest.mark.parametrize("torch_format", [False, True], ids=["pickle", "torch.save"])
def test_malicious_pickle_in_a_bundle_is_refused(runs: dict[str, Path], tmp_path: Path, kind: str, checksum: str,
                                                 torch_format: bool) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(runs[kind] / "bundle", bundle)
    marker = tmp_path / "pwned"
    (bundle / (HEAD if kind == "linear" else WEIGHTS)).write_bytes(malicious_pickle(marker, torch_format=torch_format))
    if checksum != "with checksum":  # then the safetensors parser itself must refuse the file
        meta = json.loads((bundle / META).read_text())
        del meta["sha256"]
        (bundle / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="refusing to load it"):
        load(bundle, backend="torch")
    line = run("predict", runs["data"] / "circle", "--model", bundle, "--backend", "torch").assert_fails("refusing")
    assert str(bundle) in line
    assert not marker.exists()


def test_malicious_pickle_as_a_checkpoint_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["finetune"], run_dir)
    (run_dir / "config.toml").write_text((run_dir / "config.toml").read_text()
                                         .replace(str(runs["finetune"]), str(run_dir)))
    last = run_dir / "checkpoints" / "last"
    state = json.loads((last / "state.json").read_text())
    marker = tmp_path / "pwned"
    (last / state["tensors"]).write_bytes(malicious_pickle(marker, torch_format=True))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(run_dir / "checkpoints")
    run("fit", "--resume", run_dir, "-q").assert_fails("not a valid safetensors file", "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../../outside.safetensors", "/etc/passwd", "tensors-e0002.safetensors/.."])
def test_checkpoint_cannot_name_a_file_outside_its_folder(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(runs["finetune"] / "checkpoints", ckpt)
    state = json.loads((ckpt / "last" / "state.json").read_text())
    shutil.copy(ckpt / "last" / state["tensors"], tmp_path / "outside.safetensors")  # a valid file out there
    state["tensors"] = name
    (ckpt / "last" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="refusing it"):
        load_checkpoint(ckpt)


def test_bundle_json_cannot_redirect_to_other_files(runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """bundle.json carries no paths: keys naming other files are ignored, and only the bundle's own
    fixed-name files are opened."""
    bundle = tmp_path / "bundle"
    shutil.copytree(runs["linear"] / "bundle", bundle)
    decoy = tmp_path / "decoy.safetensors"
    shutil.copy(runs["finetune"] / "bundle" / WEIGHTS, decoy)
    meta = json.loads((bundle / META).read_text())
    meta.update({"head_file": "../../etc/passwd", "weights_file": str(decoy), "files": {"head": str(decoy)},
                 "path": "..", "root": "/"})
    (bundle / META).write_text(json.dumps(meta))
    import headstart.bundle as bundle_module

    opened: list[str] = []
    real = bundle_module.load_file
    monkeypatch.setattr(bundle_module, "load_file", lambda f, *a, **k: opened.append(f) or real(f, *a, **k))
    files = sorted((runs["data"] / "square").glob("*.png"))
    probs = load(bundle, backend="torch").predict_proba(files)
    np.testing.assert_array_equal(probs, load(runs["linear"], backend="torch").predict_proba(files))
    assert opened and all(Path(f).parent == bundle for f in opened[:1]), opened


def test_bundle_file_symlinked_to_outside_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(runs["linear"] / "bundle", bundle)
    outside = tmp_path / "outside.safetensors"
    (bundle / HEAD).rename(outside)
    (bundle / HEAD).symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load(bundle, backend="torch")


@pytest.mark.parametrize("field,value", [("num_classes", "lots"), ("preprocess", [1, 2]), ("classes", None),
                                         ("head", "x")])
def test_damaged_bundle_fields_are_one_error(runs: dict[str, Path], tmp_path: Path, field: str,
                                             value: object) -> None:
    kind = "finetune" if field == "num_classes" else "linear"
    bundle = tmp_path / "bundle"
    shutil.copytree(runs[kind] / "bundle", bundle)
    meta = json.loads((bundle / META).read_text())
    meta[field] = value
    (bundle / META).write_text(json.dumps(meta))
    run("predict", runs["data"] / "circle", "--model", bundle, "--backend", "torch").assert_fails("bundle")


@pytest.mark.parametrize("bad", ["../outside.png", "../../etc/passwd", "/etc/passwd", "circle/../../x.png",
                                 "C:\\Windows\\x.png", "\\\\server\\share\\x.png"])
def test_split_record_paths_cannot_leave_the_dataset(tmp_path: Path, bad: str) -> None:
    data = make_class_folder(tmp_path / "data", 4)
    (tmp_path / "outside.png").write_bytes((data / "circle" / "circle_000.png").read_bytes())
    record = ImageFolder(data, test_fraction=0.5).to_dict()
    ImageFolder.from_record(record)  # the untouched record loads
    record["splits"]["train"]["paths"][0] = bad
    with pytest.raises(DatasetError, match="leaves the dataset folder"):
        ImageFolder.from_record(record)


@pytest.mark.parametrize("name", ["../codes_pooled.npy", "/etc/passwd", "..", "sub/codes_pooled.npy"])
def test_codes_index_cannot_point_outside_its_folder(tmp_path: Path, name: str) -> None:
    data = make_class_folder(tmp_path / "data", 4)
    out = tmp_path / "codes"
    run("extract", data, "--out", out, "--cache-dir", tmp_path / "cache", *TINY).assert_ok()
    load_codes(out)  # the untouched folder loads
    index = json.loads((out / "index.json").read_text())
    index["files"]["pooled"] = name
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(HeadstartError, match="not a file name inside"):
        load_codes(out)


@pytest.mark.parametrize("name", ["/etc/passwd", "../weights.safetensors", "snapshots/../../x.safetensors",
                                  "weights.safetensors", 7])
def test_bundle_snapshot_list_cannot_point_outside_the_bundle(tmp_path: Path, name: object) -> None:
    torch.manual_seed(0)
    model = create_model("tiny_test", num_classes=2)
    bundle = save_finetune_bundle(tmp_path / "bundle", model=model, classes=["a", "b"],
                                  snapshots={3: model.state_dict()})
    load(bundle, backend="torch")  # the untouched bundle loads
    meta = json.loads((bundle / META).read_text())
    meta["snapshots"] = [name]
    (bundle / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="not snapshots/epoch-NNN.safetensors"):
        load(bundle, backend="torch")


def test_resume_writes_only_into_the_run_dir_it_was_given(runs: dict[str, Path], tmp_path: Path) -> None:
    """A config.toml (maybe received with a run dir) naming another `out` cannot redirect a resumed run."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["finetune"], run_dir)
    elsewhere = tmp_path / "elsewhere"
    cfg = (run_dir / "config.toml").read_text().replace(f'out = "{runs["finetune"]}"', f'out = "{elsewhere}"')
    assert str(elsewhere) in cfg
    (run_dir / "config.toml").write_text(cfg)
    run("fit", "--resume", run_dir, "-q").assert_ok()
    assert not elsewhere.exists() and (run_dir / "metrics.json").exists()


# -- no unsafe deserialisation anywhere in the package ------------------------------------------------------
_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _qualified_calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call with its dotted target, import aliases resolved (``np.load`` -> ``numpy.load``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(f: ast.expr) -> str | None:
        if isinstance(f, ast.Name):
            return aliases.get(f.id, f.id)
        if isinstance(f, ast.Attribute):
            base = dotted(f.value)
            return f"{base}.{f.attr}" if base else None
        return None

    return [(name, node) for node in ast.walk(tree) if isinstance(node, ast.Call) and (name := dotted(node.func))]


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return None


def unsafe_loads(source: str) -> list[str]:
    problems = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        problems += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in _FORBIDDEN_MODULES]
    for name, call in _qualified_calls(tree):
        if name in ("torch.load", "torch.serialization.load") and _kw(call, "weights_only") is not True:
            problems.append(f"line {call.lineno}: {name} without weights_only=True")
        if name == "numpy.load" and _kw(call, "allow_pickle") not in (None, False):
            problems.append(f"line {call.lineno}: numpy.load with allow_pickle")
        if name.split(".")[0] in _FORBIDDEN_MODULES or name.endswith(".Unpickler") or name in (
                "torch.jit.load", "pandas.read_pickle", "numpy.lib.format.read_array"):
            problems.append(f"line {call.lineno}: {name}")
    return problems


def test_the_scanner_catches_unsafe_calls() -> None:
    bad = ("import pickle\nimport numpy as np\nimport torch\nfrom torch import load as tl\n"
           "pickle.load(f)\nnp.load(p, allow_pickle=True)\ntorch.load(p)\ntl(p, weights_only=False)\n"
           "torch.load(p, weights_only=flag)\ntorch.jit.load(p)\n")
    assert len(unsafe_loads(bad)) == 7
    good = "import numpy as np\nimport torch\nnp.load(p, mmap_mode='r')\ntorch.load(p, weights_only=True)\n"
    assert unsafe_loads(good) == []


def test_no_module_loads_a_pickle() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30
    found = {str(m.relative_to(PACKAGE)): p for m in modules if (p := unsafe_loads(m.read_text(encoding="utf-8")))}
    assert found == {}
