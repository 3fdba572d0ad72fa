"""Read a foreign ONNX image classifier into PyTorch: tidy the graph, then convert it with onnx2torch.

The graph is made fit for conversion and for batches first, each step exact:

* a float16 model (weights, input, casts) becomes float32, exactly;
* values computed from constants alone (the placeholder weights of ``ConstantOfShape``, weights reshaped at
  run time) are evaluated once, by ONNX's reference evaluator, into initializers;
* ``Dropout`` (an identity at inference; onnx2torch has no converter for its opset-7 form) is removed;
* an ``AveragePool`` with uneven padding (Caffe's) becomes Pad + AveragePool + a constant correction, the
  same numbers without the padding onnx2torch cannot express;
* the batch dimension becomes dynamic, and a ``Reshape`` whose constant shape names the exported batch of 1
  copies the batch instead (ONNX's ``0``);
* every node gets a readable unique name (from its first output), which becomes its module name and tap name.

onnx2torch imports torchvision for two detection operators (NMS, RoIAlign) that image classifiers do not
use; where torchvision is not importable (a CPU-only torch from PyPI's neighbours), a stand-in module that
raises on use lets the import go ahead.
"""

from __future__ import annotations

import contextlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import fx

from headstart.errors import OnnxImportError

# Operators whose output is a constant when their inputs are: folded before conversion.
_FOLDABLE = {"Constant", "ConstantOfShape", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Cast", "Identity",
             "Concat", "Mul", "Add", "Sub", "Div", "Shape", "Gather", "Slice"}


def load_prepared(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path``, tidied as the module docstring says."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
        raise OnnxImportError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    model.ir_version = max(model.ir_version, 4)  # IR >= 4: initializers need not be listed as inputs
    _float32(model)
    _fold_constants(model)
    _drop_dropout(model)
    _even_average_pools(model)
    _dynamic_batch(model)
    _name_nodes(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{path}: the ONNX graph is not valid ({exc})") from exc
    return model


def convert(model: onnx.ModelProto) -> fx.GraphModule:
    """onnx2torch's conversion, with its import made possible where torchvision is not."""
    try:
        with _torchvision_stand_in():
            import onnx2torch
    except ImportError as exc:
        raise OnnxImportError("ONNX backbones need onnx2torch: pip install --no-deps onnx2torch "
                              "(--no-deps: its torchvision requirement would replace the CPU torch)") from exc
    _newer_op_versions()
    try:
        return onnx2torch.convert(model)
    except Exception as exc:  # noqa: BLE001 - NotImplementedError for an operator, others for odd graphs
        why = (str(exc).strip().splitlines() or [""])[0]
        raise OnnxImportError(f"onnx2torch cannot convert this graph ({type(exc).__name__}: {why})") from exc


def _newer_op_versions() -> None:
    """Converters for opset >= 18 forms of Pad and Reduce*, which torch.onnx's opset-18 exports hold and
    onnx2torch (up to 13/17) lacks. Pad-18 only adds an optional ``axes`` input, refused here; Reduce-18
    takes its axes as an input instead of an attribute, read here when it is a constant."""
    from onnx import defs
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, add_converter, get_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    pad13 = get_converter("Pad", 13)

    def convert_pad(node: Any, graph: Any) -> Any:
        if len(node.input_values) > 3 and node.input_values[3]:
            raise NotImplementedError("Pad with an axes input")
        return pad13(node, graph)

    def convert_reduce(node: Any, graph: Any) -> Any:
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).reshape(-1).tolist()]
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            raise NotImplementedError(f"{node.operation_type} with noop_with_empty_axes")
        module = OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1))
        return OperationConverterResult(module, OnnxMapping(inputs=node.input_values[:1],
                                                            outputs=node.output_values))

    registered = {(d.operation_type, d.version) for d in _CONVERTER_REGISTRY}
    for schema in defs.get_all_schemas_with_history():
        newer = schema.domain == "" and schema.since_version >= 18
        op = schema.name
        if newer and (op, schema.since_version) not in registered and (op == "Pad" or op.startswith("Reduce")):
            add_converter(operation_type=op, version=schema.since_version)(
                convert_pad if op == "Pad" else convert_reduce)
            registered.add((op, schema.since_version))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def static_shape(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


# -- the passes ------------------------------------------------------------------------------------------
def _fold_constants(model: onnx.ModelProto) -> None:
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    const = {i.name for i in g.initializer}
    folded = []
    for node in g.node:
        if node.op_type in _FOLDABLE and all(i in const or i == "" for i in node.input):
            folded.append(node)
            const.update(node.output)
    if folded:
        outs = [o for n in folded for o in n.output]
        values = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs]
        sub = helper.make_model(helper.make_graph(list(folded), "fold", [], values, list(g.initializer)),
                                opset_imports=model.opset_import)
        results = ReferenceEvaluator(sub).run(outs, {})
        keep = [n for n in g.node if n not in folded]
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(numpy_helper.from_array(np.asarray(v), o) for o, v in zip(outs, results))
    _prune(model)


def _float32(model: onnx.ModelProto) -> None:
    """A float16 model (weights, inputs, casts) as float32: the pipeline feeds float32, and fine-tuning
    wants float32 weights. Exact: every float16 value is a float32 value."""
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    g = model.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == f16:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32),
                                                              init.name))
    for value in [*g.input, *g.output, *g.value_info]:
        if value.type.tensor_type.elem_type == f16:
            value.type.tensor_type.elem_type = f32
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32),
                                                        attr.t.name))


def _prune(model: onnx.ModelProto) -> None:
    """Drop initializers nothing reads, and initializers listed among the graph's inputs."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(inputs)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _drop_dropout(model: onnx.ModelProto) -> None:
    g = model.graph
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.op_type == "Dropout":
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if not rename:
        return
    if any(o.name in rename for o in g.output):
        raise OnnxImportError("the graph's output is a Dropout's output; remove it before importing")
    for node in keep:
        node.input[:] = [rename.get(i, i) for i in node.input]
    del g.node[:]
    g.node.extend(keep)
    _prune(model)


def _even_average_pools(model: onnx.ModelProto) -> None:
    """AveragePool with pads (t, l, b, r) not symmetric → Pad, unpadded AveragePool, × area / count."""
    g = model.graph
    shapes: dict[str, list[int | None]] | None = None  # shape inference costs seconds on big graphs
    nodes = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", []))
        if node.op_type != "AveragePool" or len(pads) != 4 or pads[:2] == pads[2:]:
            nodes.append(node)
            continue
        if attrs.get("ceil_mode", 0) or "auto_pad" in attrs and attrs["auto_pad"] not in (b"NOTSET", "NOTSET"):
            raise OnnxImportError(f"AveragePool {node.name or node.output[0]}: uneven padding with ceil_mode or "
                                  "auto_pad is not supported")
        kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
        shapes = _inferred_shapes(model) if shapes is None else shapes
        shape = shapes.get(node.input[0])
        if shape is None or None in shape[2:]:
            raise OnnxImportError(f"AveragePool {node.output[0]}: uneven padding needs a static spatial size")
        base = node.output[0]
        padded, pooled = f"{base}__padded", f"{base}__pooled"
        full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
        if _opset(model) < 11:  # Pad-2 takes the pads as an attribute, later versions as an input
            nodes.append(helper.make_node("Pad", [node.input[0]], [padded], mode="constant", pads=full))
        else:
            g.initializer.append(numpy_helper.from_array(np.array(full, np.int64), f"{base}__pads"))
            nodes.append(helper.make_node("Pad", [node.input[0], f"{base}__pads"], [padded], mode="constant"))
        nodes.append(helper.make_node("AveragePool", [padded], [pooled], kernel_shape=kernel, strides=strides))
        if attrs.get("count_include_pad", 0):
            nodes[-1].output[0] = base
            continue
        factor = _count_correction(shape[2:], kernel, strides, pads)
        g.initializer.append(numpy_helper.from_array(factor, f"{base}__factor"))
        nodes.append(helper.make_node("Mul", [pooled, f"{base}__factor"], [base]))
    del g.node[:]
    g.node.extend(nodes)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _count_correction(hw: list[int | None], kernel: list[int], strides: list[int], pads: list[int]) -> np.ndarray:
    """kernel area / real pixels under each window: turns the mean over the padded window into the mean over
    the image pixels only (ONNX's count_include_pad = 0)."""
    h, w = int(hw[0] or 0), int(hw[1] or 0)
    ones = np.pad(np.ones((h, w), np.float32), ((pads[0], pads[2]), (pads[1], pads[3])))
    oh = (ones.shape[0] - kernel[0]) // strides[0] + 1
    ow = (ones.shape[1] - kernel[1]) // strides[1] + 1
    counts = np.array([[ones[i * strides[0]:i * strides[0] + kernel[0], j * strides[1]:j * strides[1] + kernel[1]].sum()
                        for j in range(ow)] for i in range(oh)], np.float32)
    return (kernel[0] * kernel[1] / counts).reshape(1, 1, oh, ow).astype(np.float32)


def _dynamic_batch(model: onnx.ModelProto) -> None:
    g = model.graph
    for value in [*graph_inputs(model), *g.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    del g.value_info[:]  # inferred for batch 1; recomputed by whoever needs them
    inits = {i.name: i for i in g.initializer}
    for node in g.node:
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)  # 0 would mean a size of 0
        if node.op_type == "Reshape" and node.input[1] in inits and not allowzero:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0  # copy the batch dimension through; a copy of the shape, which may be shared
                name = f"{node.input[1]}__{node.name or node.output[0]}__batch"
                g.initializer.append(numpy_helper.from_array(shape, name))
                node.input[1] = name


def _name_nodes(model: onnx.ModelProto) -> None:
    """Unique identifier names, from the node's own name or its first output (e.g. ``gpu_0/res2_0_branch2a_1``
    → ``res2_0_branch2a_1``)."""
    seen: set[str] = {"pooled"}  # the name of the global-average tap
    for node in model.graph.node:
        raw = node.name or (node.output[0] if node.output else node.op_type)
        name = re.sub(r"\W+", "_", raw.split("/", 1)[-1] if raw.startswith("gpu_0/") else raw).strip("_")
        if not name or name[0].isdigit():
            name = f"{node.op_type.lower()}_{name}"
        unique, i = name, 1
        while unique in seen:
            i += 1
            unique = f"{name}_{i}"
        seen.add(unique)
        node.name = unique


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    light = onnx.ModelProto()
    light.CopyFrom(model)  # the weights' shapes, not their bytes, are what inference needs
    for init in light.graph.initializer:
        light.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del light.graph.initializer[:]
    inferred = onnx.shape_inference.infer_shapes(light)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: static_shape(v) for v in values}


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """While onnx2torch imports: the real torchvision if it imports, else a stand-in, removed again after so
    that nothing else mistakes it for torchvision."""
    if "onnx2torch" in sys.modules or "torchvision" in sys.modules:
        yield
        return
    try:
        import torchvision  # noqa: F401 - a working torchvision is used as it is
    except Exception:  # noqa: BLE001 - PyPI's torchvision beside a CPU torch fails with RuntimeError
        _forget_torchvision()
    else:
        yield
        return

    def unavailable(*_: object, **__: object) -> None:
        raise OnnxImportError("this ONNX operator needs torchvision, which is not importable here")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        yield
    finally:
        _forget_torchvision()


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
