"""``--model onnx:PATH``: foreign ONNX classifiers load, list taps, extract, fine-tune, bundle and export.

Fixtures: the real topologies with placeholder weights that the ``onnx`` wheel ships (``light_*``), with their
weights replaced by random ones so that outputs differ per channel, and our own EfficientNet-Lite0 exported to
ONNX and read back as a foreign model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from headstart.engine.onnx_export import quiet_export
from headstart.errors import HeadstartError, OnnxImportError
from headstart.models import POOLED, create_model
from headstart.models.onnx_backbone import save_as_onnx
from headstart.models.onnx_import import load_prepared
from tests.conftest import make_class_folder

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# The head is a Gemm (or a 1x1 Conv on a pooled vector): the converted model must compute the same function.
SAME_FUNCTION = ["light_resnet50", "light_bvlc_alexnet", "light_inception_v1", "light_densenet121",
                 "light_vgg19"]


def randomised(name: str, dst: Path) -> Path:
    """The light model tidied (constants folded) with random He-scaled weights, BatchNorm near identity, and
    its final Softmax removed, so that its output is the logits."""
    model = load_prepared(LIGHT / f"{name}.onnx")
    rng = np.random.default_rng(0)
    g = model.graph
    bn = {n.input[i]: i for n in g.node if n.op_type == "BatchNormalization" for i in (1, 2, 3, 4)}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32:
            continue
        if init.name in bn:  # scale, bias, mean, variance
            new = [None, rng.uniform(0.8, 1.2, arr.shape), rng.normal(0, 0.1, arr.shape),
                   rng.normal(0, 0.1, arr.shape), rng.uniform(0.8, 1.2, arr.shape)][bn[init.name]]
        elif arr.ndim >= 2 and arr.size > arr.shape[0]:
            new = rng.normal(0, np.sqrt(1.0 / int(np.prod(arr.shape[1:]))), arr.shape)
        else:
            new = rng.normal(0, 0.1, arr.shape) if arr.ndim else arr
        init.CopyFrom(numpy_helper.from_array(np.asarray(new, np.float32), init.name))
    last = g.node[-1]
    if last.op_type == "Softmax":
        g.output[0].name = last.input[0]
        g.node.remove(last)
    path = dst / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", SAME_FUNCTION)
def test_light_models_convert_to_the_same_function_with_stages_and_taps(name: str, tmp_path: Path) -> None:
    path = randomised(name, tmp_path)
    model = create_model(f"onnx:{path}").eval()
    assert len(model.stages) >= 4 and model.tap_names[-1] == POOLED
    x = torch.randn(3, 3, 224, 224)  # a batch of 3: the graph was exported for batch 1
    with torch.no_grad():
        ours = model(x).numpy()
        taps = model.forward_taps(x, model.tap_names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].reshape(3, -1)
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * scale)
    assert theirs.std() > 1e-3 * scale  # the random weights make the classes differ: a real comparison
    for tap, out in taps.items():
        code = out if out.ndim == 2 else out.mean(dim=(2, 3))
        assert code.shape == (3, model.num_features[tap]) and torch.isfinite(code).all()


def test_tidying_the_graph_keeps_its_outputs() -> None:
    """Folded constants, dropped Dropout, Caffe's uneven AveragePool rewritten: the same numbers at batch 1."""
    name = "light_inception_v1"  # has all three
    original = onnx.load(str(LIGHT / f"{name}.onnx"))
    assert {n.op_type for n in original.graph.node} >= {"ConstantOfShape", "Dropout", "AveragePool"}
    prepared = load_prepared(LIGHT / f"{name}.onnx")
    assert not {n.op_type for n in prepared.graph.node} & {"ConstantOfShape", "Dropout"}
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    outs = []
    for m in (original, prepared):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["light_squeezenet", "light_bvlc_alexnet"])
def test_light_models_extract_codes_on_the_fast_engine(name: str, tmp_path: Path) -> None:
    from headstart.features.extract import extract_codes

    path = randomised(name, tmp_path)
    data = make_class_folder(tmp_path / "data", n_per_class=3)
    paths = sorted(data.rglob("*.png"))
    model = create_model(f"onnx:{path}")
    taps = list(model.tap_names)
    fast = extract_codes(paths, model, taps, cache=None, backend="openvino", progress=False).codes
    slow = extract_codes(paths, model, taps, cache=None, backend="torch", progress=False).codes
    for tap in taps:
        assert fast[tap].shape == (len(paths), model.num_features[tap])
        np.testing.assert_allclose(fast[tap], slow[tap], rtol=2e-2, atol=2e-2 * float(np.abs(slow[tap]).max()))


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our Lite0 with its ImageNet head, exported to ONNX, with a sidecar giving its preprocessing."""
    return save_as_onnx(create_model("efficientnet_lite0"), tmp_path_factory.mktemp("lite0") / "lite0.onnx")


def test_lite0_read_back_as_a_foreign_model_gives_the_native_codes(lite0_onnx: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from headstart.features.extract import extract_codes

    native, foreign = create_model("efficientnet_lite0"), create_model(f"onnx:{lite0_onnx}")
    assert foreign.spec == native.spec and foreign.weights_id.startswith("onnx-")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a = native.forward_taps(x, [POOLED])[POOLED]
        b = foreign.forward_taps(x, [POOLED])[POOLED]
    assert float((a - b).abs().max()) < 1e-4
    # The stages end where the native ones do (the 1×1 expansion before each downsampling goes to the next
    # stage): each foreign tap is a native stage's output, found by its shape.
    with torch.no_grad():
        theirs = {tuple(v.shape): v for v in native.forward_taps(x, native.tap_names).values() if v.ndim == 4}
        ours = foreign.forward_taps(x, list(foreign.stages))
    assert len(ours) == 5
    for tap, value in ours.items():
        assert tuple(value.shape) in theirs, (tap, tuple(value.shape))
        assert float((value - theirs[tuple(value.shape)]).abs().max()) < 1e-4

    data = make_class_folder(tmp_path / "data", n_per_class=8, classes=("a", "b", "c"))
    paths = sorted(data.rglob("*.png"))
    labels = np.array([p.parent.name for p in paths])
    codes = [extract_codes(paths, m, [POOLED], cache=None, backend="openvino", progress=False).codes[POOLED]
             for m in (native, foreign)]
    assert float(np.abs(codes[0] - codes[1]).max()) < 2e-3  # codes are stored as float16
    train = np.arange(len(paths)) % 2 == 0
    preds = [LogisticRegression(max_iter=2000).fit(c[train], labels[train]).predict(c[~train]) for c in codes]
    assert (preds[0] == preds[1]).all()


def test_fit_finetune_bundle_predict_and_export_with_an_onnx_backbone(lite0_onnx: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.bundle import load
    from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig
    from headstart.export import export_run
    from headstart.fit import fit

    data = make_class_folder(tmp_path / "data", n_per_class=10)
    monkeypatch.chdir(lite0_onnx.parent)  # a relative path: the bundle must still find the model elsewhere
    cfg = FitConfig(out=str(tmp_path / "run"), strategy="finetune", model="onnx:lite0.onnx",
                    data=DataConfig(path=str(data)),
                    engine=EngineConfig(backend="torch", cache_dir=str(tmp_path / "cache"), batch_size=8),
                    finetune=FinetuneConfig(epochs=1, freeze=3))
    start = create_model(f"onnx:{lite0_onnx}")
    metrics = fit(cfg, progress=False)
    assert metrics["strategy"] == "finetune"
    monkeypatch.chdir(tmp_path)
    loaded = load(tmp_path / "run")
    tuned = loaded.predictor.module
    names = list(start.stages)
    for name in names[:3]:  # frozen: bit for bit the converted weights
        for p0, p1 in zip(start.stages[name].parameters(), tuned.stages[name].parameters()):
            assert torch.equal(p0, p1)
    moved = [not torch.equal(p0, p1) for p0, p1 in zip(start.stages[names[-1]].parameters(),
                                                       tuned.stages[names[-1]].parameters())]
    assert any(moved)
    images = sorted(data.rglob("*.png"))[:4]
    probs = loaded.predict_proba(images)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    out = export_run(tmp_path / "run", tmp_path / "exported", fmt="onnx")
    assert (out / "model.onnx").is_file()


def test_models_inspect_lists_taps_shapes_and_preprocessing(tmp_path: Path) -> None:
    from headstart.cli import app

    path = tmp_path / "r50.onnx"
    shutil.copy(LIGHT / "light_resnet50.onnx", path)
    result = CliRunner().invoke(app, ["models", "--inspect", f"onnx:{path}@caffe-bgr"])
    assert result.exit_code == 0, result.output
    assert "2048×7×7" in result.output and "1024×14×14" in result.output and "pooled" in result.output
    assert "preset caffe-bgr" in result.output and "BGR" in result.output
    (tmp_path / "r50.toml").write_text('preset = "tf-inception"\n')
    result = CliRunner().invoke(app, ["models", "--inspect", f"onnx:{path}"])
    assert "r50.toml (preset tf-inception)" in result.output and "[127.5, 127.5, 127.5]" in result.output


def test_bad_onnx_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(OnnxImportError, match="no ONNX model at"):
        create_model(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises(OnnxImportError, match="choose from imagenet-torch, caffe-bgr, tf-inception"):
        create_model(f"onnx:{LIGHT / 'light_squeezenet.onnx'}@caffe")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        create_model(f"onnx:{junk}")
    shutil.copy(LIGHT / "light_squeezenet.onnx", tmp_path / "sq.onnx")
    (tmp_path / "sq.toml").write_text("mean = [1, 2]\n")
    with pytest.raises(HeadstartError, match="three numbers"):
        create_model(f"onnx:{tmp_path / 'sq.onnx'}")


class _TfStyleNet(torch.nn.Module):
    """A TensorFlow-style classifier: NHWC input, BGR weights, a MatMul + Add head (as tf2onnx writes it)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.w = torch.nn.Parameter(torch.randn(16, 10, generator=g))
        self.b = torch.nn.Parameter(torch.randn(10, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N, H, W, 3 (BGR)
        x = torch.relu(self.conv1(x.permute(0, 3, 1, 2)))
        x = torch.relu(self.conv2(x))
        return torch.softmax(torch.matmul(x.mean(dim=(2, 3)), self.w) + self.b, dim=1)


def test_nhwc_bgr_graph_with_a_matmul_head_is_fed_and_cut_right(tmp_path: Path) -> None:
    net = _TfStyleNet().eval()
    path = tmp_path / "tfnet.onnx"
    with quiet_export():
        torch.onnx.export(net, (torch.zeros(1, 64, 64, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["probs"])
    model = create_model(f"onnx:{path}@caffe-bgr").eval()
    assert model.layout == "nhwc" and model.spec.input_size == 64
    assert model.classifier.out_features == 10 and model.num_features[POOLED] == 16
    rgb = torch.randn(2, 3, 64, 64)  # what the pipeline feeds: NCHW RGB, normalised
    with torch.no_grad():
        ours = torch.softmax(model(rgb), dim=1)
        theirs = net(rgb.flip(1).permute(0, 2, 3, 1))  # what the graph expects: NHWC BGR
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
        pooled = model.forward_taps(rgb, [POOLED])[POOLED]
    expected = torch.relu(net.conv2(torch.relu(net.conv1(rgb.flip(1))))).mean(dim=(2, 3))
    np.testing.assert_allclose(pooled.numpy(), expected.detach().numpy(), atol=1e-5)
    assert list(model.stages) and len(model.stages) == 2  # 32×32 and 16×16


def test_a_float16_model_is_read_as_float32(tmp_path: Path) -> None:
    """ONNX files saved in half precision (weights, input and casts float16) load and run on float32 input."""
    from onnx import TensorProto

    net = _TfStyleNet().eval()
    path32, path16 = tmp_path / "net32.onnx", tmp_path / "net16.onnx"
    with quiet_export():
        torch.onnx.export(net, (torch.zeros(1, 64, 64, 3),), str(path32), dynamo=False, opset_version=17)
    half = onnx.load(str(path32))
    for init in half.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in [*half.graph.input, *half.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(half, str(path16))
    ref, model = create_model(f"onnx:{path32}").eval(), create_model(f"onnx:{path16}").eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), ref(x).numpy(), atol=0.05, rtol=0.01)  # half-rounded weights


def _export(net: torch.nn.Module, path: Path, shape: tuple[int, ...] = (1, 3, 64, 64)) -> Path:
    with quiet_export():
        torch.onnx.export(net.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=17)
    return path


class _FlattenHead(torch.nn.Module):
    """No global pooling: the classifier reads the flattened feature map (as old VGG-style nets do)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


class _ChannelsLastMean(torch.nn.Module):
    """Keras-style global pooling: a mean over H and W of a channels-last tensor, then a hidden MatMul layer."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.c = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.w1, self.b1 = torch.nn.Parameter(torch.randn(8, 8, generator=g)), torch.nn.Parameter(torch.randn(8))
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c(x)).permute(0, 2, 3, 1).mean(dim=(1, 2))
        return self.fc(torch.relu(h @ self.w1 + self.b1))


@pytest.mark.parametrize("net", [_FlattenHead(), _ChannelsLastMean()], ids=["flatten", "channels-last-mean"])
def test_heads_without_a_global_average_are_tapped_at_the_classifier_input(net: torch.nn.Module,
                                                                          tmp_path: Path) -> None:
    model = create_model(f"onnx:{_export(net, tmp_path / 'net.onnx')}").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), net.eval()(x).numpy(), atol=1e-5)
        pooled = model.forward_taps(x, [POOLED])[POOLED]
    assert pooled.shape == (2, model.classifier.in_features) == (2, model.num_features[POOLED])


def test_matmul_weights_are_trained_not_frozen(tmp_path: Path) -> None:
    """onnx2torch keeps MatMul weights as buffers; they must be parameters, or fine-tuning skips them."""
    net = _ChannelsLastMean()
    model = create_model(f"onnx:{_export(net, tmp_path / 'net.onnx')}")
    n_params = sum(p.numel() for stage in model.stages.values() for p in stage.parameters())
    assert n_params == sum(p.numel() for name, p in net.named_parameters() if not name.startswith("fc."))


def test_freezing_every_stage_of_a_net_with_vector_stages(tmp_path: Path) -> None:
    from headstart.train.prefix import prefix_module

    model = create_model(f"onnx:{randomised('light_bvlc_alexnet', tmp_path)}").eval()
    assert model.tap_shapes()[list(model.stages)[-1]] == (4096,)  # fc7 is a stage
    with torch.no_grad():
        out = prefix_module(model, len(model.stages))(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 4096)


def test_at_signs_in_paths_sidecar_edits_and_a_batch_one_graph(tmp_path: Path) -> None:
    path = _export(_FlattenHead(), tmp_path / "net@2.onnx")
    assert create_model(f"onnx:{path}").spec.mean == (123.675, 116.28, 103.53)
    assert create_model(f"onnx:{path}@tf-inception").spec.mean == (127.5, 127.5, 127.5)
    path.with_suffix(".toml").write_text('preset = "caffe-bgr"\n')  # read again, not served from a cache
    assert create_model(f"onnx:{path}").preprocessing.bgr

    class TokenConcat(torch.nn.Module):  # a constant expanded for batch 1 only: cannot run on a batch of 2
        def __init__(self) -> None:
            super().__init__()
            self.c, self.fc = torch.nn.Conv2d(3, 8, 16, stride=16), torch.nn.Linear(8, 10)
            self.tok = torch.nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.c(x).flatten(2).transpose(1, 2)
            return self.fc(torch.cat([self.tok.expand(x.shape[0], -1, -1), t], 1)[:, 0])

    with pytest.raises(OnnxImportError, match="does not run on a batch of 2.*dynamic batch"):
        create_model(f"onnx:{_export(TokenConcat(), tmp_path / 'tok.onnx')}")


def test_a_pickled_onnx_backbone_loads_in_a_fresh_process(lite0_onnx: Path, tmp_path: Path) -> None:
    """A Ray worker unpickles the backbone in a process that never imported onnx2torch (which needs the
    torchvision stand-in): it is rebuilt from the file, with the pickled weights and head."""
    import pickle
    import subprocess
    import sys

    model = create_model(f"onnx:{lite0_onnx}")
    model.reset_classifier(3, seed=1)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save(model.eval()(x), tmp_path / "want.pt")
    code = (f"import pickle, torch; m = pickle.loads(open({str(tmp_path / 'm.pkl')!r}, 'rb').read()).eval(); "
            "x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)); "
            f"want = torch.load({str(tmp_path / 'want.pt')!r}); "
            "print(type(m).__name__, m.num_classes, float((m(x) - want).abs().max()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["OnnxBackbone", "3"] and float(out[2]) < 1e-5
