"""Trained model bundles: safetensors + JSON, never pickle.

A bundle is a folder (``RUN_DIR/bundle``) with ``bundle.json`` (format, backbone name and weights id,
taps, preprocessing, class names, head kind, SHA-256 of the tensors files) and ``head.safetensors`` (the
head's arrays) or ``weights.safetensors`` (a fine-tuned network). A snapshot ensemble adds its other members
as ``snapshots/epoch-NNN.safetensors`` (listed under ``snapshots``); ``load`` then averages the members'
softmax. File names are fixed or must match that pattern, so nothing in a bundle can point outside it; any
other key of ``bundle.json`` is ignored, and a tensors file that is a symlink to outside the folder is refused.

    model = load("runs/flowers")
    model.predict(["rose.jpg"]).predictions[0].top[0]  # e.g. ('roses', 0.97)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from headstart.engine.codes import CodesModule
from headstart.errors import BundleError, HeadstartError, name_file
from headstart.io import MANIFEST, atomic_write, check_sealed, clean_stale_tmp, tmp_path_for
from headstart.features.cache import hash_file
from headstart.heads.params import LinearParams
from headstart.models import Backbone, PreprocessSpec, create_model, model_entry
from headstart.predict import Predictor, PredictResult

FORMAT = "headstart.bundle/1"
META, HEAD, WEIGHTS = "bundle.json", "head.safetensors", "weights.safetensors"
SNAPSHOTS = "snapshots"
_SNAPSHOT_NAME = re.compile(r"snapshots/epoch-\d{3,}\.safetensors")


def save_linear_bundle(path: str | Path, *, model: str, weights_id: str, taps: Sequence[str], spec: PreprocessSpec,
                       classes: Sequence[str], head: LinearParams) -> Path:
    """Write a fixed-extractor bundle (backbone reference + linear head) atomically into ``path``."""
    meta = {"format": FORMAT, "kind": "linear", "model": model, "weights_id": weights_id, "taps": list(taps),
            "preprocess": spec.to_dict(), "classes": list(classes), "head": {"proba": head.proba}}
    return _publish(Path(path), HEAD, head.arrays(), meta)


def save_finetune_bundle(path: str | Path, *, model: Backbone, classes: Sequence[str],
                         snapshots: Mapping[int, Mapping[str, Any]] | None = None) -> Path:
    """Write a fine-tuned bundle: the whole network's weights (safetensors) + JSON.

    ``snapshots`` (epoch → state dict) are further members of a snapshot ensemble, stored beside the weights;
    ``load`` then predicts with the mean softmax of ``model`` and them.
    """
    folder = Path(path)
    state = _numpy_state(model.state_dict())
    meta: dict[str, Any] = {
        "format": FORMAT, "kind": "finetune", "model": model.name,
        "weights_id": finetuned_id(model.weights_id, state), "taps": [], "preprocess": model.spec.to_dict(),
        "classes": list(classes), "num_classes": model.num_classes, "drop_rate": model.drop_rate}
    names, sums = [], {}
    for epoch, member in sorted((snapshots or {}).items()):
        # Written (atomically) before bundle.json, which is the commit: it only ever names complete files.
        name = f"{SNAPSHOTS}/epoch-{int(epoch):03d}.safetensors"
        data = save(_numpy_state(member))
        (folder / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, data)
        names.append(name)
        sums[name] = hashlib.sha256(data).hexdigest()
    if names:
        meta |= {"snapshots": names, "sha256": sums}
    _publish(folder, WEIGHTS, state, meta)
    for old in (folder / SNAPSHOTS).glob("*.safetensors"):  # members of an earlier bundle in this folder
        if f"{SNAPSHOTS}/{old.name}" not in names:
            old.unlink(missing_ok=True)
    return folder


def _numpy_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}


def finetuned_id(base: str, state: dict[str, np.ndarray]) -> str:
    """The weights id of fine-tuned weights: the pretrained id plus a hash of the weights, so that nothing
    keyed by weights id (the codes cache) mistakes them for the pretrained ones or for another run's."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return f"{base}+finetuned-{h.hexdigest()[:16]}"


def _publish(folder: Path, tensors_name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write both files under temp names (fsynced) before renaming either into place.

    An error while writing (a full disk) therefore leaves the previous bundle whole; only a kill between
    the two renames can pair new tensors with old JSON, and the SHA-256 in ``bundle.json`` reveals that.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder)
    tmp_t, tmp_m = tmp_path_for(folder / tensors_name), tmp_path_for(folder / META)
    try:
        # Serialised in memory and written by Python: safetensors' own file writer reports a full disk as a
        # SafetensorError, not as the OSError(ENOSPC) the CLI turns into a one-line message.
        data = save(arrays)
        tmp_t.write_bytes(data)
        _fsync(tmp_t)
        meta = {**meta, "sha256": {**meta.get("sha256", {}), tensors_name: hashlib.sha256(data).hexdigest()}}
        tmp_m.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _fsync(tmp_m)
        os.replace(tmp_t, folder / tensors_name)
        os.replace(tmp_m, folder / META)
    except OSError as e:
        raise name_file(e, folder) from None
    finally:
        tmp_t.unlink(missing_ok=True)
        tmp_m.unlink(missing_ok=True)
    return folder


def _fsync(file: Path) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


@dataclass
class LoadedModel:
    """A trained classifier: ``predict(paths)`` and ``predict_proba(paths)`` on image files."""

    classes: list[str]
    model: str
    taps: list[str]
    meta: dict[str, Any]
    predictor: Predictor
    head: LinearParams | None = None  # a linear run's head (what export folds into its graph)

    def predict(self, paths: Sequence[str | Path], *, top_k: int = 1, batch_size: int = 32) -> PredictResult:
        return self.predictor.predict(paths, top_k=top_k, batch_size=batch_size)

    def predict_proba(self, paths: Sequence[str | Path], *, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N×K) for exactly these files; raises if one cannot be decoded."""
        probs, _, failures = self.predictor.predict_proba([Path(p) for p in paths], batch_size=batch_size)
        if failures:
            raise HeadstartError(f"cannot decode {failures[0].path}: {failures[0].reason}")
        return probs


def _load_arrays(folder: Path, name: str, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    file = folder / name
    if not os.path.realpath(file).startswith(os.path.realpath(folder) + os.sep):
        raise BundleError(f"{file} links to outside the bundle folder; refusing to load it")
    expected = (meta.get("sha256") or {}).get(name)  # absent in bundles written before checksums
    try:
        if expected is not None and hash_file(file) != expected:
            raise BundleError(f"{file} does not match the checksum in {META} (an interrupted write, or the file "
                              "was replaced); refusing to load it: re-run `headstart fit`")
        return load_file(str(file))  # safetensors: tensors only, no code can run
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{file} is not a valid safetensors file ({e}); refusing to load it") from None


def _damaged(meta_file: Path, problem: str) -> BundleError:
    return BundleError(f"{meta_file}: {problem}; the bundle is damaged or was edited: re-run `headstart fit`")


def _check_classes(meta_file: Path, meta: dict[str, Any]) -> None:
    """Class names and model id, before any tensor is read: a wrong list would mislabel every prediction."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise _damaged(meta_file, f"classes must be a list of at least 2 names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise _damaged(meta_file, "classes lists a name twice")
    try:
        model_entry(str(meta.get("model")))
    except HeadstartError as e:
        raise _damaged(meta_file, str(e)) from None
    if meta["kind"] == "finetune" and meta.get("num_classes") != len(classes):
        raise _damaged(meta_file, f"{len(classes)} class names but the network has {meta.get('num_classes')!r} "
                       "outputs")


def _check_linear_head(meta_file: Path, backbone: Backbone, taps: list[str], head: LinearParams,
                       n_classes: int) -> None:
    """The head's shapes against the class list and the backbone's taps (one line, never an IndexError)."""
    unknown = [t for t in taps if t not in backbone.num_features]
    if not taps or unknown:
        raise _damaged(meta_file, f"taps {taps!r} are not taps of {backbone.name}")
    dim = sum(backbone.num_features[t] for t in taps)
    rows = (1, 2) if n_classes == 2 else (n_classes,)  # a binary head may hold the positive class's row only
    coef, intercept = np.asarray(head.coef), np.asarray(head.intercept)
    if coef.ndim != 2 or coef.shape[1] != dim or coef.shape[0] not in rows:
        raise _damaged(meta_file, f"the head's weights have shape {coef.shape}, but {n_classes} classes on "
                       f"{dim} features need ({n_classes}, {dim})")
    extra = [intercept] + ([head.calib_a, head.calib_b] if head.proba == "ovr_sigmoid" else [])
    if any(a is None or np.asarray(a).shape != (coef.shape[0],) for a in extra):
        raise _damaged(meta_file, f"the head's bias or calibration does not have {coef.shape[0]} entries")


def _load_finetune(folder: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], backend: str) -> LoadedModel:
    names = meta.get("snapshots") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and _SNAPSHOT_NAME.fullmatch(n) for n in names):
        raise BundleError(f"{folder / META} lists snapshots {names!r}, not snapshots/epoch-NNN.safetensors files "
                          "of the bundle; refusing them: re-run `headstart fit`")
    members = [_finetuned_predictor(meta, arrays, str(meta["weights_id"]), backend)]
    base = str(meta["weights_id"]).split("+finetuned-")[0]
    for name in names:  # each member its own weights id: nothing keyed by it may mistake one for another
        member = _load_arrays(folder, name, meta)
        members.append(_finetuned_predictor(meta, member, finetuned_id(base, member), backend))
    if len(members) == 1:
        predictor = members[0]
    else:
        from headstart.ensemble import EnsemblePredictor  # here: headstart.ensemble imports this module

        predictor = EnsemblePredictor(members)
    return LoadedModel(list(meta["classes"]), meta["model"], [], meta, predictor)


def _finetuned_predictor(meta: dict[str, Any], arrays: dict[str, np.ndarray], weights_id: str,
                         backend: str) -> Predictor:
    import torch

    model = create_model(meta["model"], pretrained=False, num_classes=int(meta["num_classes"]),
                         drop_rate=float(meta.get("drop_rate", 0.0)))
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    except RuntimeError as e:
        raise BundleError(f"weights do not fit {meta['model']} ({str(e).splitlines()[0]}); "
                          "the bundle is damaged") from None
    model.weights_id = weights_id
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    return Predictor(model.eval(), spec, meta["classes"], lambda outs: softmax(outs[0], axis=1), backend=backend)


def load(path: str | Path, *, backend: str = "auto") -> LoadedModel:
    """Load a bundle from a run directory (or its ``bundle`` folder)."""
    path = Path(path)
    folder = path / "bundle" if (path / "bundle" / META).is_file() else path
    meta_file = folder / META
    if not meta_file.is_file():
        raise BundleError(f"{path} holds no trained model ({META} missing); pass a run directory made by "
                          "`headstart fit`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_file} is not valid JSON ({e}); the bundle is damaged, "
                          "re-run `headstart fit`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise BundleError(f"{meta_file}: unsupported bundle format {found!r}; "
                          f"this headstart reads {FORMAT}")
    kind = meta.get("kind")
    if kind not in ("linear", "finetune"):
        raise BundleError(f"{meta_file}: unknown bundle kind {kind!r}; expected linear or finetune")
    run = folder.parent if folder.name == "bundle" else None
    if run is not None and (run / MANIFEST).is_file():  # a run's bundle: it must be that run's
        check_sealed(run, ("bundle/bundle.json",))
    try:
        _check_classes(meta_file, meta)
        return _load(folder, meta, kind, backend)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field missing or of the wrong type
        raise BundleError(f"{meta_file}: missing or invalid field ({type(e).__name__}: {e}); the bundle is "
                          "damaged, re-run `headstart fit`") from None


def _load(folder: Path, meta: dict[str, Any], kind: str, backend: str) -> LoadedModel:
    arrays = _load_arrays(folder, HEAD if kind == "linear" else WEIGHTS, meta)
    if kind == "finetune":
        return _load_finetune(folder, meta, arrays, backend)
    backbone = create_model(meta["model"], pretrained=True)
    if backbone.weights_id != meta["weights_id"]:
        fix = ("put back the ONNX file it was trained with" if backbone.weights_id.startswith("onnx-")
               else "install the matching weights package")
        raise BundleError(f"bundle was trained on weights {meta['weights_id']} but {backbone.weights_id} are "
                          f"installed; {fix}")
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    head = LinearParams.from_arrays(arrays, meta["head"]["proba"])
    taps = list(meta["taps"])
    _check_linear_head(folder / META, backbone, taps, head, len(meta["classes"]))

    def to_proba(outs: tuple[np.ndarray, ...]) -> np.ndarray:
        # The head was fitted on cached codes, which are float16: round live codes the same way so that
        # prediction sees exactly the features training saw (this matters for strongly weighted heads).
        codes = np.concatenate(outs, axis=1).astype(np.float16).astype(np.float32)
        return head.predict_proba(codes)

    predictor = Predictor(CodesModule(backbone, taps), spec, meta["classes"], to_proba, backend=backend)
    return LoadedModel(list(meta["classes"]), meta["model"], taps, meta, predictor, head)
