"""``headstart export RUN_DIR --out DIR [--format onnx|openvino]``: a trained run as a folder that predicts with
ONNX Runtime (or OpenVINO) alone.

The folder holds ``model.onnx`` (or OpenVINO's ``model.xml`` + ``model.bin``), ``labels.json``,
``preprocess.json``, a ``predict.py`` of a few lines and a README. The graph takes a batch of uint8 RGB images
already resized and centre-cropped to the model's input size, ``(N, S, S, 3)`` (height, width, channels, as
Pillow and OpenCV hold them), and returns class probabilities ``(N, K)``. Inside it: the normalisation, the
network, for a linear run the CNN codes rounded to float16 as the head was trained on them and the head
itself, for a snapshot ensemble every member with their probabilities averaged. The resize and crop stay
outside: ONNX's bicubic resize is not Pillow's, and the codes of pretrained weights depend on the exact
pixels. ``predict.py`` does them with Pillow as headstart does.

    export_run("runs/first", "exported/")   # then: python exported/predict.py photo.jpg
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.bundle import load
from headstart.engine.onnx_export import OPSET, quiet_export
from headstart.errors import ConfigError
from headstart.heads.params import LinearParams
from headstart.io import atomic_write, tmp_path_for
from headstart.models.spec import PreprocessSpec

__all__ = ["FORMATS", "export_run"]

FORMATS = ("onnx", "openvino")
INPUT, OUTPUT = "images", "probabilities"


class ExportedClassifier(nn.Module):
    """uint8 (N, S, S, 3) images -> (N, K) probabilities: what ``model.onnx`` computes."""

    def __init__(self, members: list[nn.Module], mean: tuple[float, ...], std: tuple[float, ...],
                 head: LinearParams | None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.proba = head.proba if head is not None else "network"
        if head is not None:
            self.register_buffer("coef", torch.tensor(np.asarray(head.coef), dtype=torch.float32))
            self.register_buffer("intercept", torch.tensor(np.asarray(head.intercept), dtype=torch.float32))
            if head.proba == "ovr_sigmoid":
                self.register_buffer("calib_a", torch.tensor(np.asarray(head.calib_a), dtype=torch.float32))
                self.register_buffer("calib_b", torch.tensor(np.asarray(head.calib_b), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).to(torch.float32) - self.mean) * self.inv_std
        return torch.stack([self._member(m, x) for m in self.members]).mean(0)

    def _member(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        if self.proba == "network":  # a fine-tuned network: its logits
            return torch.softmax(out, dim=1)
        codes = torch.cat(list(out), dim=1).to(torch.float16).to(torch.float32)  # as the cached codes were
        s = codes @ self.coef.T + self.intercept
        if self.proba == "softmax":
            if s.shape[1] == 1:  # binary logistic: the score is the positive class's logit
                s = torch.cat([torch.zeros_like(s), s], dim=1)
            return torch.softmax(s, dim=1)
        p = torch.sigmoid(-(self.calib_a * s + self.calib_b))
        if p.shape[1] == 1:
            return torch.cat([1.0 - p, p], dim=1)
        return p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)


def exported_module(run: str | Path) -> tuple[ExportedClassifier, dict[str, Any]]:
    """The run's classifier as one module (and its bundle's metadata)."""
    loaded = load(run, backend="torch")
    predictors = getattr(loaded.predictor, "members", [loaded.predictor])
    spec = loaded.predictor.spec
    module = ExportedClassifier([p.module for p in predictors], spec.mean, spec.std, loaded.head).eval()
    return module, loaded.meta


def export_run(run: str | Path, out: str | Path, *, fmt: str = "onnx", overwrite: bool = False) -> Path:
    """Write the export folder ``out`` (see the module); returns it. Refuses a non-empty ``out`` unless
    ``overwrite``. The folder appears whole: it is built beside ``out`` and renamed."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out, source = Path(out), Path(run).resolve()
    if out.resolve() == source or out.resolve() in source.parents:
        raise ConfigError(f"--out {out} is (or holds) the run being exported; choose another folder")
    taken = any(out.iterdir()) if out.is_dir() else out.exists()
    if taken and not overwrite:
        raise ConfigError(f"--out {out} is not empty; choose a new folder or pass --overwrite")
    if taken and not all((out / f).is_file() for f in ("labels.json", "preprocess.json", "predict.py")):
        raise ConfigError(f"--out {out} holds files that are not an export; --overwrite replaces only an earlier "
                          "export: choose a new folder")
    module, meta = exported_module(run)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    size, pre = spec.input_size, spec.to_dict() | {"resize_size": spec.resize_size}
    tmp = tmp_path_for(out)
    tmp.mkdir(parents=True)
    try:
        _write_onnx(module, size, tmp / "model.onnx")
        if fmt == "openvino":  # OpenVINO's IR (model.xml + model.bin), converted from the same graph
            import openvino as ov

            ov.save_model(ov.convert_model(str(tmp / "model.onnx")), str(tmp / "model.xml"),
                          compress_to_fp16=False)  # its default halves the weights: probabilities move by ~1e-3
            (tmp / "model.onnx").unlink()
        atomic_write(tmp / "labels.json", (json.dumps(meta["classes"], indent=1) + "\n").encode())
        atomic_write(tmp / "preprocess.json", (json.dumps(pre, indent=1) + "\n").encode())
        atomic_write(tmp / "predict.py", _predict_py(fmt).encode())
        atomic_write(tmp / "README.md", _readme(meta, pre, fmt).encode())
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_onnx(module: nn.Module, size: int, path: Path) -> None:
    """The TorchScript exporter (always present; the engine's fallback too), with a dynamic batch."""
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with torch.no_grad(), quiet_export():
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True)


def _predict_py(fmt: str) -> str:
    return _PREDICT.replace("RUNTIME_IMPORT", _RUNTIME[fmt][0]).replace("RUNTIME_LOAD", _RUNTIME[fmt][1]).replace(
        "RUNTIME_RUN", _RUNTIME[fmt][2])


# (import, load, run) for each format's runtime. OpenVINO is held to f32: on CPUs with bf16 units it would
# otherwise compute in bf16 and move probabilities by ~1e-3.
_RUNTIME = {
    "onnx": ("import onnxruntime as ort",
             'session = ort.InferenceSession(str(here / "model.onnx"), providers=["CPUExecutionProvider"])',
             'session.run(None, {"images": batch})[0]'),
    "openvino": ("import openvino as ov",
                 'compiled = ov.Core().compile_model(str(here / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": '
                 '"f32"})',
                 "compiled([batch])[0]"),
}


def _readme(meta: dict[str, Any], pre: dict[str, Any], fmt: str) -> str:
    size, model_file = pre["input_size"], "model.onnx" if fmt == "onnx" else "model.xml` + `model.bin"
    runtime = "onnxruntime" if fmt == "onnx" else "openvino"
    return f"""# {meta['model']} fine-tuned by headstart ({meta['kind']}): {len(meta['classes'])} classes

`{model_file}` maps a batch of RGB images, uint8, shape `(N, {size}, {size}, 3)`, to class probabilities
`(N, {len(meta['classes'])})` in the order of `labels.json`. Normalisation and the network are inside it.
Before it, as headstart does (`prepare` in predict.py): decode a JPEG at a reduced scale when it is at least
twice the resize size (Pillow's `draft`), apply the EXIF orientation, convert to RGB, resize the shorter side
to {pre['resize_size']} pixels ({pre['interpolation']}), and crop the central {size} x {size} square.

    pip install {runtime} numpy pillow
    python predict.py photo.jpg another.png

`predict.py` (the whole of it is the example):

```python
{_predict_py(fmt)}```
"""


_PREDICT = '''import json
import sys
from pathlib import Path

import numpy as np
RUNTIME_IMPORT
from PIL import Image, ImageOps

here = Path(__file__).parent
labels = json.loads((here / "labels.json").read_text(encoding="utf-8"))
pre = json.loads((here / "preprocess.json").read_text())
RUNTIME_LOAD


def prepare(path):
    """uint8 (S, S, 3) as headstart prepares an image: a JPEG decoded at a reduced scale when it is at least
    twice the resize size (libjpeg's draft mode), EXIF orientation, RGB, short side resized, centre crop."""
    r, s = pre["resize_size"], pre["input_size"]
    img = Image.open(path)
    if img.format == "JPEG":
        img.draft("RGB", (r, r))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:  # onto white, as headstart
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = img.convert("RGB")
    w, h = img.size
    resample = getattr(Image.Resampling, pre["interpolation"].upper())
    img = img.resize((r, max(1, int(r * h / w))) if w <= h else (max(1, int(r * w / h)), r), resample)
    left, top = round((img.width - s) / 2.0), round((img.height - s) / 2.0)
    return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


def predict(paths):
    """Class probabilities, one row per image, columns in the order of labels.json."""
    batch = np.stack([prepare(p) for p in paths])
    return RUNTIME_RUN


if __name__ == "__main__":
    for path, p in zip(sys.argv[1:], predict(sys.argv[1:])):
        print(path, labels[int(p.argmax())], f"{p.max():.3f}")
'''
