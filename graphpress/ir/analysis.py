"""Static analyses of a model: shapes, parameters, weight bytes, MACs, op histogram.

MACs (multiply-accumulates) are counted per node from inferred shapes:

* ``Conv``: ``N * C_out * prod(out_spatial) * (C_in / group) * prod(kernel)``
* ``ConvTranspose``: ``N * C_in * prod(in_spatial) * (C_out / group) * prod(kernel)``
* ``Gemm``: ``M * N * K``
* ``MatMul``, ``MatMulInteger``: ``prod(batch) * M * N * K`` (``ConvInteger`` as ``Conv``); a MatMul whose two inputs are both activations
  (neither is a weight nor computed from weights only) is tagged ``attention``
  (``Q @ K^T``, ``P @ V``).

Symbolic dimensions (``batch``, ``seq``) count as 1: MACs are per sample, for the
shapes the model declares, unless :func:`with_input_shapes` gave the inputs real shapes first
(``inspect --input-shape``); the summary lists the symbolic dims it counted as 1. A node whose
shapes are unknown counts 0 and is listed in ``unknown_macs``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphpress.errors import GraphpressError

__all__ = ["ModelSummary", "infer_shapes", "node_macs", "summarize", "weight_values", "with_input_shapes"]


def infer_shapes(model: ir.Model) -> ir.Model:
    """Fill value shapes/dtypes in place with ONNX shape inference (with data propagation)."""
    try:
        common_passes.ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    except Exception:
        # Shape inference is best effort for analyses (custom domains, huge models).
        pass
    return model


def with_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> ir.Model:
    """Give the named graph inputs these static shapes (in place) and forget the shapes of the
    values computed from them, so that shape inference derives them again.

    Raises:
        GraphpressError: a name that is no input, or a shape of another rank than declared.
    """
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    for name, shape in shapes.items():
        if name not in inputs:
            raise GraphpressError(f"input shape given for '{name}', which is not an input; inputs: {', '.join(inputs)}")
        declared = inputs[name].shape
        if declared is not None and len(declared) != len(shape):
            raise GraphpressError(f"input '{name}' has rank {len(declared)}, but its given shape has {len(shape)} dims")
        inputs[name].shape = ir.Shape([int(d) for d in shape])
    if shapes:
        for node in model.graph:
            for out in node.outputs:
                if not out.is_graph_output():
                    out.shape = None
    return model


def weight_values(model: ir.Model) -> list[ir.Value]:
    """Initializers of the main graph and its subgraphs, plus tensors of ``Constant`` nodes."""
    out: list[ir.Value] = []
    for graph in model.graphs():
        out.extend(v for v in graph.initializers.values() if v.const_value is not None)
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = node.attributes.get("value")
                if value is not None and value.type == ir.AttributeType.TENSOR:
                    out.append(node.outputs[0])
    return out


def _tensor_of(value: ir.Value) -> ir.TensorProtocol | None:
    if value.const_value is not None:
        return value.const_value
    node = value.producer()
    if node is not None and node.op_type == "Constant":
        attr = node.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor()
    return None


def _is_constant(value: ir.Value | None, depth: int = 8) -> bool:
    """True if ``value`` is a weight or computed from weights only (e.g. ``Transpose(W)``)."""
    if value is None:
        return False
    if _tensor_of(value) is not None:
        return True
    node = value.producer()
    if node is None or depth == 0 or not node.inputs:
        return False
    return all(_is_constant(v, depth - 1) for v in node.inputs if v is not None)


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


def node_macs(node: ir.Node) -> tuple[int | None, str]:
    """MACs of one node and its kind (``conv``, ``gemm``, ``matmul``, ``attention``, ``other``).

    Returns ``(None, kind)`` when the node is a MAC op but its shapes are unknown.
    """
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return 0, "other"
    if op in ("Conv", "ConvInteger"):
        x, w = _dims(node.inputs[0]), _dims(node.inputs[1])
        y = _dims(node.outputs[0])
        if w is None or y is None or len(y) < 2:
            return None, "conv"
        return math.prod(y) * math.prod(w[1:]), "conv"
    if op == "ConvTranspose":
        x, w = _dims(node.inputs[0]), _dims(node.inputs[1])
        if x is None or w is None:
            return None, "conv"
        # every input element is multiplied into C_out/group * prod(kernel) outputs
        return math.prod(x) * math.prod(w[1:]), "conv"
    if op == "Gemm":
        a, b = _dims(node.inputs[0]), _dims(node.inputs[1])
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return None, "gemm"
        trans_a = node.attributes.get_int("transA", 0)
        trans_b = node.attributes.get_int("transB", 0)
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        n = b[0] if trans_b else b[1]
        return m * n * k, "gemm"
    if op in ("MatMul", "MatMulInteger"):  # the integer forms of dynamic quantization count the same
        a, b = _dims(node.inputs[0]), _dims(node.inputs[1])
        kind = "matmul" if (_is_constant(node.inputs[0]) or _is_constant(node.inputs[1])) else "attention"
        if a is None or b is None:
            return None, kind
        if len(a) == 1:
            a = [1, *a]
        if len(b) == 1:
            b = [*b, 1]
        batch_a, batch_b = a[:-2], b[:-2]
        batch = _broadcast(batch_a, batch_b)
        return math.prod(batch) * a[-2] * a[-1] * b[-1], kind
    return 0, "other"


def _broadcast(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    a = [1] * (n - len(a)) + a
    b = [1] * (n - len(b)) + b
    return [max(x, y) for x, y in zip(a, b)]


@dataclasses.dataclass
class ModelSummary:
    """What ``graphpress inspect`` prints.

    Attributes:
        nodes: number of nodes in all graphs (``Constant`` nodes included).
        params: number of weight elements (initializers and ``Constant`` tensors).
        bytes: weight bytes (``params`` at their storage dtypes).
        macs: multiply-accumulates per sample (see module docstring).
        macs_by_kind: MACs split into conv/gemm/matmul/attention.
        ops: op histogram, ``domain::Op`` for non-default domains.
        inputs / outputs: name, dtype and shape of each graph input/output.
        opset: default-domain opset.
        unknown_macs: names of MAC nodes whose shapes were unknown.
        symbolic_dims: the symbolic input dims the MACs counted as 1.
    """

    nodes: int
    params: int
    bytes: int
    macs: int
    macs_by_kind: dict[str, int]
    ops: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    opset: int | None
    unknown_macs: list[str]
    symbolic_dims: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def brief(self) -> dict[str, int]:
        """The ``before``/``after`` block of the report JSON."""
        return {"params": self.params, "bytes": self.bytes, "macs": self.macs, "nodes": self.nodes}


def _io(value: ir.Value) -> dict[str, Any]:
    shape = None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
    return {"name": value.name, "dtype": None if value.dtype is None else value.dtype.name, "shape": shape}


def summarize(model: ir.Model, *, shapes: bool = True) -> ModelSummary:
    """Compute a :class:`ModelSummary`. Runs shape inference first unless ``shapes=False``.

    Shape inference fills in value metadata on ``model``; nothing else is changed.
    """
    if shapes:
        infer_shapes(model)
    weights = weight_values(model)
    params = 0
    nbytes = 0
    for v in weights:
        t = _tensor_of(v)
        if t is None:
            continue
        params += t.size
        nbytes += t.nbytes
    ops: collections.Counter[str] = collections.Counter()
    macs_by_kind: collections.Counter[str] = collections.Counter()
    unknown: list[str] = []
    nodes = 0
    for graph in model.graphs():
        for node in graph:
            nodes += 1
            ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
            macs, kind = node_macs(node)
            if macs is None:
                unknown.append(node.name or node.op_type)
            elif macs:
                macs_by_kind[kind] += macs
    return ModelSummary(
        nodes=nodes,
        params=params,
        bytes=nbytes,
        macs=sum(macs_by_kind.values()),
        macs_by_kind=dict(macs_by_kind),
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        inputs=[_io(v) for v in model.graph.inputs],
        outputs=[_io(v) for v in model.graph.outputs],
        opset=model.opset_imports.get(""),
        unknown_macs=unknown,
        symbolic_dims=sorted({str(d) for v in model.graph.inputs if v.shape is not None for d in v.shape if not isinstance(d, int)}),
    )
