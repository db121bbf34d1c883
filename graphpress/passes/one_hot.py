"""A one-hot vector times a constant matrix, as the ``Gather`` of the matrix's rows it selects.

Byte- and character-level models feed a one-hot encoding of their input to a dense layer:
Magika (from its PyPI wheel, a Keras model through tf2onnx) computes ``Cast(Equal(bytes[..., None],
arange(257)))`` -- ``[1, 2048, 257]`` floats -- and multiplies it by a ``[257, 64]`` weight:
34 M multiply-adds and a 2 MB temporary for what is one row of the weight per byte. Here
``MatMul(one_hot(x, K), W)`` becomes ``Gather(W', where(0 <= x < K, x, K))``, ``W'`` the weight with
a zero row appended (an index outside ``[0, K)`` is a zero row of the one-hot, hence of the product).

The one-hot is ``Cast(Equal(x, c))`` with a constant ``c`` that is ``arange(K)`` along the last
axis and ``x`` constant along it (an ``Expand`` of ``[..., 1]``, or of size 1 there), or
``OneHot(x, K, [0, 1])`` on the last axis (negative indices counting from the back, as ONNX
defines it). Three forms of the product are taken, each computed exactly as before:

* float: ``MatMul(one_hot, W)``, ``W`` finite: the one product that is not ``0 * w`` is ``1 * w``;
* dynamic int8 (ONNX Runtime's ``quantize_dynamic``): ``DynamicQuantizeLinear(one_hot)`` gives
  the scale ``1/255`` and the values ``0``/``255`` (or all zeros and any scale), so
  ``Cast(MatMulInteger(q, Wq, 0, wz)) * (scale * ws)`` is ``Gather(float(255 (Wq - wz)))`` times
  the constant ``float32(1/255) * ws``, the same float operations in the same order;
* static QDQ: ``MatMul(DequantizeLinear(QuantizeLinear(one_hot)), W)`` is ``Gather`` of
  ``dq(q(1)) * W``, the quantized zero being exactly 0.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphpress.ir.analysis import infer_shapes
from graphpress.passes.base import Pass, PassResult
from graphpress.passes.recurrent import _Builder
from graphpress.passes.registry import register

__all__ = ["OneHotGather"]


def _const(value: ir.Value | None) -> np.ndarray | None:
    """An initializer's or a ``Constant`` node's value (not an initializer that is also a graph
    input: the caller may give it another)."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None and not value.is_graph_input() else None
    return tensor.numpy() if tensor is not None else None


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None


def _only_use(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(use.node is node for use in value.uses())


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _index(x: ir.Value, one_hot: ir.Value) -> ir.Value | None:
    """The ``[..., 1]`` tensor whose last axis ``x`` (an integer tensor constant along it)
    repeats, with the other axes of the one-hot ``one_hot``: ``x`` itself where that axis is 1
    (the table's other axes are 1: ``Equal`` broadcasts only the last axis, whatever the others
    are, symbolic batch included), else the input of its ``Expand`` from 1 there, where static
    shapes show the ``Expand`` broadcast nothing else."""
    if x.dtype not in (ir.DataType.INT32, ir.DataType.INT64) or not _rank(x) or one_hot.shape is None or len(x.shape) != len(one_hot.shape):
        return None
    if x.shape[-1] == 1:
        return x
    expand = _producer(x, "Expand")
    shape = expand.inputs[0].shape if expand is not None else None
    if shape is None or len(shape) != len(one_hot.shape) or shape[-1] != 1 or not all(isinstance(d, int) for d in (*shape, *one_hot.shape)):
        return None
    return expand.inputs[0] if list(shape)[:-1] == list(one_hot.shape)[:-1] else None


def _one_hot(value: ir.Value) -> tuple[ir.Value, bool, int, bool] | None:
    """Where ``value`` is a float one-hot over its last axis: the index tensor, whether it has
    a last axis of 1 to squeeze, K, and whether negative indices count from the back (else None)."""
    cast = _producer(value, "Cast")
    if cast is not None:
        equal = _producer(cast.inputs[0], "Equal")
        if equal is None:
            return None
        for x, c in ((equal.inputs[0], equal.inputs[1]), (equal.inputs[1], equal.inputs[0])):
            table = _const(c)
            if table is None or table.ndim == 0 or table.dtype.kind not in "iu" or x.shape is None or table.ndim > len(x.shape):
                continue
            k = table.shape[-1]
            if table.size != k or not np.array_equal(table.reshape(-1), np.arange(k)) or (isinstance(x.shape[-1], int) and x.shape[-1] not in (1, k)):
                continue
            source = _index(x, value)
            if source is not None:
                return source, True, k, False
        return None
    one_hot = _producer(value, "OneHot")
    if one_hot is None or one_hot.attributes.get_int("axis", -1) not in (-1, _rank(one_hot.inputs[0])):
        return None
    depth, values = _const(one_hot.inputs[1]), _const(one_hot.inputs[2])
    if depth is None or depth.size != 1 or values is None or values.size != 2 or list(values.reshape(-1)) != [0, 1]:
        return None
    x = one_hot.inputs[0]
    if x.dtype not in (ir.DataType.INT32, ir.DataType.INT64):
        return None
    return x, False, int(depth.reshape(())), True


def _rows(b: _Builder, found: tuple[ir.Value, bool, int, bool], table: np.ndarray) -> ir.Value:
    """``table[index]`` where ``0 <= index < K`` (from the back too with ``wrap``), zeros
    elsewhere, for the one-hot ``found`` (:func:`_one_hot`)."""
    index, squeeze, k, wrap = found
    dtype = index.dtype.numpy()
    if squeeze:  # the last axis by its number (TVM's ConvertLayout stopped on -1; mended there too)
        index = b.op("Squeeze", [index, b.const(np.array([len(index.shape) - 1], np.int64))])
    table = np.concatenate([table, np.zeros((1, table.shape[1]), table.dtype)])
    if wrap:  # OneHot: -K..-1 count from the back
        index = b.op("Where", [b.op("Less", [index, b.const(np.array(0, dtype))]), b.op("Add", [index, b.const(np.array(k, dtype))]), index])
    inside = b.op("And", [b.op("GreaterOrEqual", [index, b.const(np.array(0, dtype))]), b.op("Less", [index, b.const(np.array(k, dtype))])])
    safe = b.op("Where", [inside, index, b.const(np.array(k, dtype))])
    return b.op("Gather", [b.const(table), safe], axis=0)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX ``DequantizeLinear`` in float32: ``(q - zero) * scale`` per tensor or along ``axis``."""
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    diff = q.astype(np.int32) - (np.zeros((), np.int32) if zero is None else zero.astype(np.int32).reshape(shape if zero.size > 1 else ()))
    return diff.astype(np.float32) * scale.astype(np.float32).reshape(shape if scale.size > 1 else ())


def _float_weight(value: ir.Value) -> np.ndarray | None:
    """A constant float ``[K, N]`` weight, given as is or as the ``DequantizeLinear`` of constants."""
    w = _const(value)
    if w is None:
        dq = _producer(value, "DequantizeLinear")
        q, scale = (_const(dq.inputs[0]), _const(dq.inputs[1])) if dq is not None else (None, None)
        if q is None or scale is None or scale.ndim > 1 or scale.dtype != np.float32 or dq.attributes.get_int("block_size", 0):
            return None  # blocked quantization, or a float16 one (computed here in float32)
        zero = _const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
        w = _dequantize(q, scale, zero, dq.attributes.get_int("axis", 1) % max(q.ndim, 1))
    if w.ndim != 2 or w.dtype.kind != "f" or not np.all(np.isfinite(w)):
        return None
    return w


def _rewrite_float(matmul: ir.Node, b: _Builder) -> ir.Value | None:
    """``MatMul(one_hot, W)``, and the static QDQ form ``MatMul(DQ(Q(one_hot)), W)``."""
    a, w = matmul.inputs[0], _float_weight(matmul.inputs[1])
    if w is None or a is None:
        return None
    one = np.float32(1.0)
    dq = _producer(a, "DequantizeLinear")
    if dq is not None:  # static QDQ: the quantized one-hot's 1, dequantized (its 0 is exactly 0)
        q = _producer(dq.inputs[0], "QuantizeLinear")
        if q is None or len(q.inputs) < 3 or not _only_use(dq.inputs[0], dq):
            return None
        qs, qz, ds, dz = (_const(v) for v in (q.inputs[1], q.inputs[2], dq.inputs[1], dq.inputs[2] if len(dq.inputs) > 2 else None))
        if (any(v is None or v.size != 1 for v in (qs, qz, ds, dz)) or qs.item() != ds.item() or qz.item() != dz.item()
                or qz.dtype.kind not in "iu" or qs.dtype != np.float32):  # fmt: skip
            return None  # (a float8 or 4-bit grid rounds otherwise; float16 scales too)
        info = np.iinfo(qz.dtype)
        level = int(np.clip(np.rint(np.float32(1.0) / qs.astype(np.float32).reshape(())) + int(qz.reshape(())), info.min, info.max))
        one = _dequantize(np.array(level), ds, dz, 0).reshape(()).astype(np.float32)
        a = q.inputs[0]
    found = _one_hot(a)
    if found is None or found[2] != w.shape[0]:
        return None
    return _rows(b, found, (one * w).astype(w.dtype))


def _rewrite_dynamic(mul: ir.Node, b: _Builder) -> ir.Value | None:
    """``Mul(Cast(MatMulInteger(DynamicQuantizeLinear(one_hot), Wq, zero, wz)), Mul(scale, ws))``."""
    for acc_f, scales in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
        cast, smul = _producer(acc_f, "Cast"), _producer(scales, "Mul")
        mmi = _producer(cast.inputs[0], "MatMulInteger") if cast is not None else None
        if mmi is None or smul is None or cast.attributes.get_int("to", 0) != ir.DataType.FLOAT.value:
            continue
        dql = _producer(mmi.inputs[0], "DynamicQuantizeLinear")
        wq = _const(mmi.inputs[1])
        if dql is None or wq is None or wq.ndim != 2 or len(mmi.inputs) < 3 or mmi.inputs[2] is not dql.outputs[2]:
            continue
        scale = dql.outputs[1]
        ws = _const(smul.inputs[1]) if smul.inputs[0] is scale else _const(smul.inputs[0]) if smul.inputs[1] is scale else None
        wz = _const(mmi.inputs[3]) if len(mmi.inputs) > 3 and mmi.inputs[3] is not None else np.zeros((), np.int32)
        if ws is None or wz is None or ws.dtype != np.float32:
            continue
        # the quantized one-hot's other outputs feed this product only
        if not (_only_use(dql.outputs[0], mmi) and _only_use(dql.outputs[2], mmi) and _only_use(scale, smul) and _only_use(smul.outputs[0], mul)):
            continue
        found = _one_hot(dql.inputs[0])
        if found is None or found[2] != wq.shape[0]:
            return None
        sums = (255 * (wq.astype(np.int32) - wz.astype(np.int32).reshape(-1 if wz.size > 1 else ()))).astype(np.float32)
        rows = _rows(b, found, sums)
        return b.op("Mul", [rows, b.const((np.float32(np.float32(1.0) / np.float32(255.0)) * ws).astype(np.float32))])
    return None


def _candidates(model: ir.Model) -> bool:
    """Whether a one-hot (``Cast`` of an ``Equal``, or ``OneHot``) feeds a product or its
    quantizer: the models the pass converts to opset 13 and runs shape inference on (a model
    with an unrelated ``Equal`` keeps its opset)."""
    for node in model.graph:
        if (node.op_type == "Cast" and _producer(node.inputs[0], "Equal") is not None) or node.op_type == "OneHot":
            if any(use.node.op_type in ("MatMul", "QuantizeLinear", "DynamicQuantizeLinear") for use in node.outputs[0].uses()):
                return True
    return False


@register
class OneHotGather(Pass):
    """Rewrite a one-hot vector times a constant matrix as a Gather of its rows."""

    name = "one_hot_gather"
    min_opset = 13  # Squeeze with its axes as an input; GreaterOrEqual (12)
    family = "exact"
    description = "MatMul of a one-hot (Cast(Equal(x, arange)) or OneHot) by a constant weight, float, dynamic or static int8, as a Gather of its rows"

    def required_opset(self, model: ir.Model) -> int:
        return self.min_opset if _candidates(model) else 0

    def call(self, model: ir.Model) -> PassResult:
        import onnx_ir.passes.common as common_passes

        if not _candidates(model):
            return PassResult(model, False, {"one_hot_gathers": 0})
        infer_shapes(model)  # the index's shape, where no pass has inferred it yet
        done = 0
        for i, node in enumerate(list(model.graph)):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Mul") or node.graph is None:
                continue
            # the node's position in the name: unnamed products would share one
            b = _Builder(node, f"{node.name or node.op_type}/one_hot_gather{i}", model.opset_imports.get("", 0))
            out = _rewrite_float(node, b) if node.op_type == "MatMul" else _rewrite_dynamic(node, b)
            if out is None:
                continue
            out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
            b.replace(model, [out])
            done += 1
        if done:
            common_passes.RemoveUnusedNodesPass()(model)
        return PassResult(model, done > 0, {"one_hot_gathers": done})
