"""Where to cut a converted ONNX classifier: its classifier layer, its trunk, and the trunk's stages.

See ``onnx_backbone`` for the rules; this module reads them off the ``torch.fx`` graph that onnx2torch makes,
with each node's ONNX operator type (``op_types``: module name → op type) and its output shape (``ShapeProp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import fx, nn

from headstart.errors import OnnxImportError

# Between the classifier and the output; between the trunk and the classifier.
_AFTER_CLASSIFIER = {"Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze", "GlobalAveragePool",
                     "AveragePool", "ReduceMean", "Relu", "Identity", "Sigmoid"}
_POOLING = {"GlobalAveragePool", "AveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze"}
_WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}



def _op(node: fx.Node, op_types: dict[str, str]) -> str:
    return op_types.get(str(node.target), "") if node.op == "call_module" else node.op


def _const(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    return None


def find_classifier(gm: fx.GraphModule, op_types: dict[str, str],
                    path: Path) -> tuple[fx.Node, fx.Node, nn.Linear]:
    """(the trunk's end, the classifier's input, the classifier as ``nn.Linear``)."""
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    node = out.args[0]
    if isinstance(node, (tuple, list)):
        node = node[0]
    while isinstance(node, fx.Node) and _op(node, op_types) in _AFTER_CLASSIFIER:
        node = node.args[0]
    found = _as_linear(gm, node, op_types) if isinstance(node, fx.Node) else None
    if found is None:
        raise OnnxImportError(f"{path}: no classifier layer (Gemm, MatMul or 1×1 Conv) found before the output")
    feat, linear = found
    trunk_end = feat
    while _op(trunk_end, op_types) in _POOLING:
        trunk_end = trunk_end.args[0]
    return trunk_end, feat, linear


def pooling_is_global_average(gm: fx.GraphModule, example: torch.Tensor, trunk_end: fx.Node,
                              feat: fx.Node) -> bool:
    """Whether the ops between ``trunk_end`` and the classifier's input ``feat`` compute the global average
    of a 4-D NCHW ``trunk_end`` (what ``pooled`` assumes), checked on ``example``. A Flatten without pooling,
    or a mean over a channels-last tensor's H and W, is not; the caller then taps ``feat`` itself."""
    if trunk_end is feat:
        return len(node_shape(feat)) in (2, 4)
    values: dict[fx.Node, torch.Tensor] = {}

    class Capture(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if n is trunk_end or n is feat:
                values[n] = out
            return out

    with torch.no_grad():
        Capture(gm).run(example)
    t, f = values[trunk_end], values[feat]
    if t.ndim != 4 or f.ndim != 2 and not (f.ndim == 4 and f.shape[2:] == (1, 1)):
        return False
    pooled = t.mean(dim=(2, 3))
    return f.reshape(len(f), -1).shape == pooled.shape and torch.allclose(f.reshape(len(f), -1), pooled,
                                                                          rtol=1e-4, atol=1e-5)


def trainable_weights(gm: fx.GraphModule, op_types: dict[str, str]) -> int:
    """onnx2torch keeps the weights of MatMul, and of a Gemm or Conv it does not turn into a torch layer, as
    buffers: fine-tuning would leave them frozen. They become parameters here (with the bias added to a
    MatMul's output); returns how many tensors changed."""
    changed = 0
    for node in gm.graph.nodes:
        op = _op(node, op_types)
        if op not in ("MatMul", "Gemm", "Conv", "Add"):
            continue
        if op == "Add" and not any(isinstance(a, fx.Node) and _op(a, op_types) in ("MatMul", "Gemm")
                                   for a in node.args):
            continue
        for arg in node.args:
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                owner_name, _, name = str(arg.target).rpartition(".")  # onnx2torch: "initializers.onnx_..."
                owner = gm.get_submodule(owner_name) if owner_name else gm
                value = getattr(owner, name, None)
                if (isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)
                        and value.is_floating_point() and value.ndim >= 1):
                    delattr(owner, name)
                    owner.register_parameter(name, nn.Parameter(value.detach().clone()))
                    changed += 1
    return changed


def _as_linear(gm: fx.GraphModule, node: fx.Node, op_types: dict[str, str]) -> tuple[fx.Node, nn.Linear] | None:
    op, module = _op(node, op_types), gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    weight = bias = None
    if isinstance(module, nn.Linear):
        weight, bias = module.weight.detach(), module.bias.detach() if module.bias is not None else None
    elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        weight = module.weight.detach().flatten(1)
        bias = module.bias.detach() if module.bias is not None else None
    elif op == "Gemm" and module is not None:
        w = _const(gm, node.args[1])
        has_c = len(node.args) > 2 and node.args[2] is not None
        if getattr(module, "trans_a", 0) or (has_c and _const(gm, node.args[2]) is None):
            return None  # a transposed input or a computed bias: not a plain linear layer
        if w is not None:
            weight = w if getattr(module, "trans_b", 0) else w.t()
            weight = weight * float(getattr(module, "alpha", 1.0))
            c = _const(gm, node.args[2]) if len(node.args) > 2 else None
            bias = c * float(getattr(module, "beta", 1.0)) if c is not None else None
    elif op == "Add":
        mm = next((a for a in node.args if isinstance(a, fx.Node) and _op(a, op_types) == "MatMul"), None)
        c = next((v for v in (_const(gm, a) for a in node.args) if v is not None), None)
        if mm is not None and c is not None:
            found = _as_linear(gm, mm, op_types)
            if found is not None:
                feat, linear = found
                with torch.no_grad():
                    linear.bias.copy_(c.reshape(-1))
                return feat, linear
    elif op == "MatMul":
        w = _const(gm, node.args[1])
        weight = w.t() if w is not None and w.ndim == 2 else None
    if weight is None:
        return None
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias.reshape(-1) if bias is not None else torch.zeros(weight.shape[0]))
    feat = node.args[0]
    assert isinstance(feat, fx.Node)
    return feat, linear


def cut_stages(gm: fx.GraphModule, trunk_end: fx.Node,
            op_types: dict[str, str]) -> tuple[dict[str, nn.Module], dict[str, torch.Size]]:
    """Cut the trunk into stages (see the module docstring); each stage a GraphModule of one tensor."""
    needed = _ancestors(trunk_end)
    order = [n for n in gm.graph.nodes if n in needed and n.op not in ("get_attr", "placeholder")]
    index = {n: i for i, n in enumerate(order)}
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    last_use = {n: max([index[u] for u in n.users if u in index], default=i) for i, n in enumerate(order)}
    live = max([index[u] for u in placeholder.users if u in index], default=0)
    pieces: list[list[fx.Node]] = [[]]
    for i, node in enumerate(order):
        pieces[-1].append(node)
        # nothing made before this node is read after it, and it is an image (N, C, H, W) or a vector (N, C):
        # a cut (a token sequence (N, T, D) is not a tap: its second axis is not channels)
        if live <= i and i < len(order) - 1 and _rank(node) in (2, 4):
            pieces.append([])
        live = max(live, last_use[node])
    # Pieces without weights (pooling, activation, LRN) join the next piece; a trailing one the previous.
    # Each merged piece keeps the node whose output size decides its stage: its last weighted piece's end.
    merged: list[tuple[list[fx.Node], fx.Node]] = []
    carry: list[fx.Node] = []
    for piece in pieces:
        carry += piece
        if any(_weighted(gm, n, op_types) for n in piece):
            merged.append((carry, piece[-1]))
            carry = []
    if carry and merged:
        merged[-1][0].extend(carry)
    elif carry:
        merged.append((carry, carry[-1]))
    # Consecutive 4-D pieces at one spatial size form a stage; each vector piece is a stage.
    grouped: list[list[list[fx.Node]]] = []
    prev: torch.Size | None = None
    for piece, key in merged:
        shape = node_shape(key)
        if prev is not None and len(shape) == 4 and len(prev) == 4 and shape[2:] == prev[2:]:
            grouped[-1].append(piece)
        else:
            grouped.append([piece])
        prev = shape
    # An inverted residual block (MobileNet, EfficientNet) widens with a 1×1 conv before it downsamples: that
    # conv belongs to the next stage, so that stages end at block outputs as the zoo's own networks do.
    for here, after in zip(grouped, grouped[1:]):
        while len(here) > 1 and _expands(gm, here[-1], op_types):
            after.insert(0, here.pop())
    groups = [[n for piece in group for n in piece] for group in grouped]
    stages: dict[str, nn.Module] = {}
    shapes: dict[str, torch.Size] = {}
    source = placeholder
    for group in groups:
        name = str(group[-1].name)
        stages[name] = _subgraph(gm, source, group)
        shapes[name] = node_shape(group[-1])
        source = group[-1]
    return stages, shapes


def _expands(gm: fx.GraphModule, piece: list[fx.Node], op_types: dict[str, str]) -> bool:
    """Whether ``piece`` is a 1×1 convolution that widens its input (with its BatchNorm and activation)."""
    weighted = [n for n in piece if _weighted(gm, n, op_types)]
    convs = [gm.get_submodule(str(n.target)) for n in weighted if n.op == "call_module"]
    convs = [m for m in convs if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or len(weighted) > 2:  # the conv, and at most its BatchNorm
        return False
    conv = convs[0]
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.out_channels > conv.in_channels)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _weighted(gm: fx.GraphModule, node: fx.Node, op_types: dict[str, str]) -> bool:
    return _op(node, op_types) in _WEIGHTED_OPS or (
        node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _WEIGHTED))


def _rank(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def node_shape(node: fx.Node) -> torch.Size:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise OnnxImportError(f"node {node.name} has no single-tensor output to cut at")
    return meta.shape


def _subgraph(gm: fx.GraphModule, source: fx.Node, nodes: Sequence[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder("x")}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise OnnxImportError(f"node {n.name} crosses a stage boundary")
            env[n] = graph.get_attr(str(n.target))
        return env[n]

    for node in nodes:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[nodes[-1]])
    return fx.GraphModule(gm, graph)
