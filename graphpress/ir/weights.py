"""The weights a model's layers compute with, as float arrays: what a picture or a per-layer
metric of pruning, quantization and sharing compares.

A layer is a node that multiplies by a weight (``Conv``, ``ConvTranspose``, ``Gemm``,
``MatMul``, ``MatMulInteger``, ``ConvInteger``, an embedding ``Gather``); its weight is the value
of the input computed from constants only -- an initializer as stored, or what a constant
subgraph makes of one: ``DequantizeLinear`` of int8 values, a shared weight's codebook gathered
by its indices, a ``Transpose`` a torch export put in front of a weight. Those subgraphs are run
once by ONNX Runtime; the integer layers of dynamic quantization (``MatMulInteger``) are
dequantized with their ``*_scale`` / ``*_zero_point`` initializers.

Layers are keyed by the name of the initializer they were made from, without the suffixes the
quantizers and the sharing pass add (``_quantized``, ``.share_indices``, ...), so that a layer
of a compressed model finds the layer of the original it came from.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

__all__ = ["CORRECTION_KEY", "GRID_KEY", "LayerWeight", "column_sums", "layer_weights", "matmul_integer_scale", "next_in_chain", "root_name", "summary_of"]

#: metadata of a node that computes a quantization grid's range (per-token ``ReduceMin``/``ReduceMax``):
#: training (:mod:`graphpress.ir_torch`) does not differentiate its output, as QAT with the
#: straight-through estimator never differentiates a quantizer's range
GRID_KEY = "graphpress.quantization_range"
#: metadata of the ``Mul`` that takes per-token zero points out of a ``MatMulInteger`` (the value:
#: that node's name): zero points times the weight's column sums, which follow a trained weight
CORRECTION_KEY = "graphpress.zero_point_correction"

#: op type -> the input indices a weight may sit at, in order of preference
_WEIGHT_INPUTS = {
    "Conv": (1,), "ConvTranspose": (1,), "Gemm": (1, 0), "MatMul": (1, 0), "MatMulInteger": (1,), "ConvInteger": (1,),
    "Gather": (0,), "QLinearConv": (3,), "QLinearMatMul": (3,),
}  # fmt: skip

_SUFFIXES = re.compile(r"(_quantized|_int8|_uint8|_int4|_uint4|_dequantized|_DequantizeLinear_Output|\.share_indices4|\.share_indices|\.share_codebook|_QuantizeLinear_Output)$")


def root_name(name: str) -> str:
    """``name`` without the suffixes quantizers and the sharing pass add to a weight's name."""
    while True:
        stripped = _SUFFIXES.sub("", name)
        if stripped == name:
            return name
        name = stripped


@dataclasses.dataclass
class LayerWeight:
    """One layer's weight.

    Attributes:
        key: the root initializer's name, without quantizer/sharing suffixes.
        node: the layer node's name; op: its op type.
        values: the weight as float32, as the layer computes with it.
        stored: ``"float"``, ``"int8"``/``"uint8"``/``"int4"``... (quantized: the integer
            type stored), or ``"shared"`` (indices into a codebook).
        grid: the values a quantized weight can take in its first output channel, or a shared
            weight's codebook (``None`` when neither).
        stored_bytes: bytes of the initializers the weight is computed from.
    """

    key: str
    node: str
    op: str
    values: np.ndarray
    stored: str
    grid: np.ndarray | None
    stored_bytes: int


def _constant_nodes(graph: ir.Graph) -> dict[str, ir.Node | None]:
    """Value name -> producing node (None: an initializer) for every value computed from constants only."""
    const: dict[str, ir.Node | None] = {name: None for name, v in graph.initializers.items() if v.const_value is not None}
    for node in graph:  # topological order
        if node.op_type == "Constant" or (node.inputs and all(v is None or v.name in const for v in node.inputs)):
            if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"):
                continue
            for out in node.outputs:
                const[out.name] = node
    return const


def _subgraph(name: str, const: dict[str, ir.Node | None]) -> tuple[list[ir.Node], list[str]]:
    """The nodes computing ``name`` (topological) and the initializers they read."""
    nodes, inits, seen, stack = [], [], set(), [name]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        producer = const.get(v)
        if producer is None:
            inits.append(v)
            continue
        if producer not in nodes:
            nodes.append(producer)
            stack.extend(i.name for i in producer.inputs if i is not None)
    return nodes, inits


def _array(graph: ir.Graph, name: str) -> np.ndarray:
    return np.asarray(graph.initializers[name].const_value.numpy())


def _evaluate(model: ir.Model, wanted: dict[str, list[ir.Node]], proto: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    """The values ``wanted`` (name -> the constant nodes computing it), run by ONNX Runtime in one
    model; a value ONNX Runtime cannot compute is left out. ``proto``: ``model`` serialized (made
    once, here or by the caller)."""
    import onnxruntime as ort

    from graphpress.ir.io import _materialize, to_proto

    if not wanted:
        return {}
    if proto is None:
        proto = _materialize(to_proto(model), model)
    keep = {id(n) for nodes in wanted.values() for n in nodes}
    order = [i for i, n in enumerate(model.graph) if id(n) in keep]
    read = {i.name for nodes in wanted.values() for n in nodes for i in n.inputs if i is not None}
    graph = onnx.helper.make_graph(
        [proto.graph.node[i] for i in order], "layer_weights", [],
        [onnx.helper.make_tensor_value_info(name, _elem_type(name, nodes), None) for name, nodes in wanted.items()],
        [t for t in proto.graph.initializer if t.name in read],  # only what the subgraphs read
    )  # fmt: skip
    sub = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=min(proto.ir_version, 10))
    sub.functions.extend(proto.functions)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return dict(zip(wanted, session.run(list(wanted), {})))
    except Exception:  # one subgraph ORT refuses: each on its own, the rest still drawn
        if len(wanted) == 1:
            return {}
        out = {}
        for name, nodes in wanted.items():
            out.update(_evaluate(model, {name: nodes}, proto))
        return out


def _elem_type(name: str, nodes: list[ir.Node]) -> int:
    """The ONNX element type of the value ``name`` (the first of ``nodes`` computes it); float when unknown."""
    dtype = next((o.dtype for o in nodes[0].outputs if o.name == name), None) if nodes else None
    return int(dtype.value) if dtype is not None else onnx.TensorProto.FLOAT


def _quantized_grid(graph: ir.Graph, dq: ir.Node) -> tuple[str, np.ndarray] | None:
    """The integer type of a ``DequantizeLinear`` of an initializer and the grid of its first channel."""
    q = dq.inputs[0]
    if q is None or q.name not in graph.initializers or dq.inputs[1] is None or dq.inputs[1].name not in graph.initializers:
        return None
    stored = graph.initializers[q.name].const_value.dtype
    scale = _array(graph, dq.inputs[1].name).reshape(-1)
    zp = _array(graph, dq.inputs[2].name).reshape(-1).astype(np.float64) if len(dq.inputs) > 2 and dq.inputs[2] is not None and dq.inputs[2].name in graph.initializers else np.zeros(1)
    return _grid(str(stored).split(".")[-1].lower(), float(scale[0]), float(zp[0]))


def _grid(stored: str, scale: float, zp: float) -> tuple[str, np.ndarray]:
    bits, signed = {"int8": (8, True), "uint8": (8, False), "int4": (4, True), "uint4": (4, False), "int16": (16, True), "uint16": (16, False)}.get(stored, (8, True))
    low = -(2 ** (bits - 1)) if signed else 0
    levels = np.arange(low, low + 2**bits, dtype=np.float64)
    return stored, ((levels - zp) * scale).astype(np.float32)


def layer_weights(model: ir.Model) -> dict[str, LayerWeight]:
    """Every layer's weight (see the module's doc), keyed by its root initializer's name."""
    graph = model.graph
    const = _constant_nodes(graph)
    found: list[tuple[ir.Node, str, list[ir.Node], list[str]]] = []
    for node in graph:
        if all(v is None or v.name in const for v in node.inputs):  # a step of a weight's constant subgraph (a shared weight's Gather)
            continue
        for index in _WEIGHT_INPUTS.get(node.op_type, ()):
            if index < len(node.inputs) and node.inputs[index] is not None and node.inputs[index].name in const:
                value = node.inputs[index].name
                nodes, inits = _subgraph(value, const)
                if not inits:
                    break
                found.append((node, value, nodes, inits))
                break
    computed = _evaluate(model, {value: nodes for _, value, nodes, _ in found if nodes})
    out: dict[str, LayerWeight] = {}
    for node, value, nodes, inits in found:
        root = max(inits, key=lambda n: graph.initializers[n].const_value.size)
        stored_bytes = sum(graph.initializers[n].const_value.nbytes for n in set(inits))
        stored, grid = "float", None
        dqs = [n for n in nodes if n.op_type == "DequantizeLinear"]
        codebooks = [n for n in inits if n.endswith(".share_codebook")]
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            arr, stored, grid = _dynamic_dequantized(graph, root)
        elif nodes:
            if value not in computed:
                continue
            arr = computed[value]
        else:
            arr = _array(graph, value)
        if codebooks:
            stored, grid = "shared", np.sort(_array(graph, codebooks[0]).reshape(-1).astype(np.float32))
        elif dqs and (g := _quantized_grid(graph, dqs[0])) is not None:
            stored, grid = g
        if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.floating) and stored == "float":
            continue  # an integer Gather table (not a weight)
        key = root_name(root)
        if key in out:
            key = f"{key} ({node.name})"
        out[key] = LayerWeight(key, node.name or node.op_type, node.op_type, np.asarray(arr, dtype=np.float32), stored, grid, int(stored_bytes))
    return out


def _dynamic_dequantized(graph: ir.Graph, root: str) -> tuple[np.ndarray | None, str, np.ndarray | None]:
    """A dynamically quantized layer's weight (``W_quantized``) dequantized with ``W_scale`` and
    ``W_zero_point`` (ONNX Runtime's names); the integer values alone when the scale is not found."""
    q = _array(graph, root)
    base = root_name(root)
    scale = _array(graph, f"{base}_scale").astype(np.float32) if f"{base}_scale" in graph.initializers else None
    zp = _array(graph, f"{base}_zero_point").astype(np.float32) if f"{base}_zero_point" in graph.initializers else np.zeros(1, np.float32)
    stored = str(graph.initializers[root].const_value.dtype).split(".")[-1].lower()
    if scale is None:
        return None, stored, None
    values = (q.astype(np.float32) - zp) * scale  # per tensor, or per output column (the last axis)
    return values, stored, _grid(stored, float(scale.reshape(-1)[0]), float(zp.reshape(-1)[0]))[1]


def summary_of(weights: dict[str, LayerWeight]) -> dict[str, Any]:
    """Totals over the layers: weights, nonzero weights, weights in shared layers."""
    total = sum(w.values.size for w in weights.values())
    return {
        "weights": int(total),
        "nonzero": int(sum(np.count_nonzero(w.values) for w in weights.values())),
        "shared": int(sum(w.values.size for w in weights.values() if w.stored == "shared")),
    }


def next_in_chain(value: ir.Value, op: str, through: tuple[str, ...] = ("Cast", "Mul"), steps: int = 3) -> ir.Node | None:
    """The first ``op`` node reached from ``value`` through single uses of ``through`` nodes
    (at most ``steps`` nodes): the bias ``Add`` after a ``MatMul``, the dequantizing ``Mul``
    after a ``MatMulInteger``'s ``Cast``. None when the chain branches or ends elsewhere."""
    for _ in range(steps):
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        node = uses[0].node
        if node.op_type == op:
            return node
        if node.op_type not in through:
            return None
        value = node.outputs[0]
    return None


def column_sums(mmi: ir.Node) -> np.ndarray:
    """The int32 column sums of a ``MatMulInteger``'s constant weight minus its zero point."""
    w = mmi.inputs[1].const_value.numpy().astype(np.int64)
    wz = mmi.inputs[3] if len(mmi.inputs) > 3 and mmi.inputs[3] is not None else None
    if wz is not None:
        w = w - wz.const_value.numpy().astype(np.int64).reshape(1, -1)
    return w.sum(axis=0).astype(np.int32)


def matmul_integer_scale(node: ir.Node) -> np.ndarray | None:
    """The constant weight scale of a ``MatMulInteger`` (dynamic quantization): the constant
    factor of ``Mul(a_scale, b_scale)`` that the ``Mul`` after it (through a ``Cast``) dequantizes
    the product with; None when the graph has no such chain."""
    mul = next_in_chain(node.outputs[0], "Mul", through=("Cast", "Sub"), steps=3)  # Sub: per-token zero points
    for v in mul.inputs if mul is not None else ():
        p = v.producer() if v is not None else None
        if p is not None and p.op_type == "Mul":
            return next((i.const_value.numpy() for i in p.inputs if i is not None and i.const_value is not None), None)
    return None
