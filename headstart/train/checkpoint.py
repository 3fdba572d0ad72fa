"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, committed atomically.

Layout of ``DIR`` (``RUN_DIR/checkpoints``)::

    last/tensors-eNNNN.safetensors   model, optimizer moments, EMA shadow, best weights... under key prefixes
    last/state.json                  epoch, step, scheduler, optimizer hyper-parameters, RNG states, freeze
                                     state, config hash, best metric — and the name of its tensors file

Commit protocol: the tensors file is written under a new name (temp file, fsync, ``os.replace``), then
``state.json`` the same way. ``state.json`` is the commit marker: until it is replaced, it still names the
previous tensors file, which is only deleted afterwards. A SIGKILL at any point leaves a loadable checkpoint.

Nested state (``optimizer.state_dict()``, RNG tuples, the EMA's state) is encoded generically: every tensor
or ndarray becomes ``{"__tensor__": key}`` / ``{"__ndarray__": key}``, tuples and non-string-keyed dicts
are tagged, so ``decode(encode(x)) == x`` exactly, types included.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from headstart.errors import CheckpointError
from headstart.io import atomic_write, clean_stale_tmp

__all__ = ["TrainState", "capture_rng", "checkpoint_exists", "clone_state", "decode", "encode", "load_checkpoint",
           "restore_rng", "save_checkpoint", "save_tensors"]

FORMAT = "headstart-checkpoint-v2"  # v2: the loop's own state (EMA, best weights) instead of callbacks'
_TENSORS_NAME = re.compile(r"tensors-e\d{4,}\.safetensors")


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped (``epoch`` = completed epochs)."""

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] = field(default_factory=dict)  # EMA.state_dict(); empty without EMA
    rng: dict[str, Any] = field(default_factory=dict)
    freeze: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    best_metric: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # early stopping's weights to restore
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- RNG ------------------------------------------------------------------------------------------------
def capture_rng(generator: np.random.Generator | None = None) -> dict[str, Any]:
    """Python ``random``, NumPy's global and ``generator``'s states, torch CPU (+ CUDA) RNG as uint8 tensors."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(legacy=False),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loop"] = generator.bit_generator.state
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loop" in state:
        generator.bit_generator.state = state["loop"]


# -- generic encoding -------------------------------------------------------------------------------------
def encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON-able form of ``obj``; tensors/arrays are moved into ``tensors`` under ``key``-derived names."""
    if isinstance(obj, torch.Tensor):
        # Own, contiguous CPU copies: safetensors refuses shared storage, and a copy is a snapshot.
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        # Raw bytes + dtype/shape: exact for every dtype (NumPy's RNG keys are uint32, rare in torch).
        tensors[key] = torch.from_numpy(np.frombuffer(np.ascontiguousarray(obj).tobytes(), dtype=np.uint8).copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[encode(k, tensors, f"{key}.k{i}"), encode(v, tensors, f"{key}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key!r}; use tensors, arrays or JSON types")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            raw = tensors[obj["__ndarray__"]].numpy()
            return raw.view(np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["__items__"]}
        return {k: decode(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, (list, tuple)) else k


# -- atomic files: one implementation for the package (headstart.io) ---------------------
def save_tensors(dest: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically (own contiguous CPU copies of the tensors)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    own = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # Serialised in memory and written by Python: safetensors' file writer reports a full disk as a
    # SafetensorError, not as the OSError(ENOSPC) the CLI turns into a one-line message.
    data = save(own, metadata=metadata)
    atomic_write(dest, data)


def _write_json(dest: Path, data: Any) -> None:
    atomic_write(dest, json.dumps(data).encode("utf-8"))


# -- checkpoints ----------------------------------------------------------------------------------------
def _slot(directory: Path) -> Path:
    directory = Path(directory)
    return directory if (directory / "state.json").exists() else directory / "last"


def checkpoint_exists(directory: str | Path) -> bool:
    return (_slot(Path(directory)) / "state.json").exists()


def save_checkpoint(directory: str | Path, state: TrainState) -> Path:
    """Write ``state`` to ``DIR/last``; returns that folder."""
    last = Path(directory) / "last"
    last.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(last)  # a model-sized temp file per earlier kill would otherwise pile up
    tensors: dict[str, torch.Tensor] = {}
    # Not dataclasses.asdict: it deep-copies every tensor; ``encode`` makes the one snapshot copy.
    meta = {f.name: getattr(state, f.name) for f in fields(state) if f.name != "model"}
    body = {"format": FORMAT, "model": encode(state.model, tensors, "model"),
            **{k: encode(v, tensors, k) for k, v in meta.items()}}
    name = f"tensors-e{state.epoch:04d}.safetensors"
    save_tensors(last / name, tensors)
    body["tensors"] = name
    _write_json(last / "state.json", body)  # the commit: from here on the new checkpoint is the one
    for old in last.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return last


def load_checkpoint(directory: str | Path) -> TrainState:
    """Read the checkpoint in ``DIR/last`` (or ``DIR`` itself when it holds ``state.json``).

    Only safetensors and JSON are read, never a pickle; the tensors file must be a plain name inside the
    slot (``state.json`` is data, and may come from anyone). Anything unusable is a ``CheckpointError``.
    """
    slot = _slot(Path(directory))
    fix = "delete the checkpoints folder to train from scratch, or resume from an intact copy"
    try:
        body = json.loads((slot / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{slot / 'state.json'} cannot be read ({e}); {fix}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(f"{slot}: not a {FORMAT} checkpoint; {fix}")
    name = body.get("tensors")
    if not isinstance(name, str) or not _TENSORS_NAME.fullmatch(name):
        raise CheckpointError(f"{slot / 'state.json'} names tensors file {name!r}, not tensors-eNNNN.safetensors "
                              f"in the same folder; refusing it: {fix}")
    try:
        tensors = load_file(str(slot / name))  # safetensors: tensors only, no code can run
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{slot / name} is not a valid safetensors file ({e}); refusing to load it: "
                              f"{fix}") from None
    try:
        values = {k: decode(v, tensors) for k, v in body.items() if k not in ("format", "tensors")}
        return TrainState(**values)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{slot / 'state.json'} does not match its tensors ({type(e).__name__}: {e}); "
                              f"{fix}") from None
