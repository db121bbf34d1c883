"""one_hot_gather: a one-hot vector times a constant matrix becomes the Gather of the rows it
selects, in float, dynamic int8 and static QDQ form, bit for bit what ONNX Runtime computes
for the model as it was (its plain op-by-op execution: the models' own arithmetic), indices
outside the one-hot's range included; anything else is left as it is."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir import to_proto
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from tests.conftest import make_model, tensor

K, N, B, S = 19, 12, 2, 16


def _run(model, feeds) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _byte_model(table=None, relu: bool = True, opset: int = 18, weight_input: bool = False, second: bool = False):
    """Magika's front (tf2onnx's one_hot): Reshape to [..., 1], Expand, Equal with arange(K),
    Cast, MatMul by a [K, N] weight, its bias and an activation; ``second``: another unnamed
    MatMul of the one-hot, added to the first; ``weight_input``: the weight also a graph input."""
    rng = np.random.default_rng(0)
    table = np.arange(K, dtype=np.int32).reshape(1, 1, K) if table is None else table
    nodes = [
        helper.make_node("Reshape", ["x", "shape1"], ["x1"]),
        helper.make_node("Expand", ["x1", "shapek"], ["xk"]),
        helper.make_node("Equal", ["xk", "table"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["hot"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["hot", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y0"]),
        helper.make_node("Relu" if relu else "Identity", ["y0"], ["y1"]),
    ]
    if second:
        nodes += [helper.make_node("MatMul", ["hot", "W2"], ["mm2"]), helper.make_node("Add", ["y1", "mm2"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["y1"], ["y"]))
    inits = [tensor("shape1", np.array([B, S, 1], np.int64)), tensor("shapek", np.array([B, S, K], np.int64)), tensor("table", table),
             tensor("W", rng.standard_normal((K, N)).astype(np.float32)), tensor("b", rng.standard_normal(N).astype(np.float32)),
             tensor("W2", rng.standard_normal((K, N)).astype(np.float32))]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT32, [B, S])] + ([helper.make_tensor_value_info("W", TensorProto.FLOAT, [K, N])] if weight_input else [])
    return gp.load(make_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, N])], inits, opset=opset))


def _indices(dtype=np.int32) -> np.ndarray:
    x = np.random.default_rng(1).integers(0, K, (B, S)).astype(dtype)
    x[0, :6] = [-1, K, K + 7, -K, 0, K - 1]  # outside the range: a zero row of the one-hot
    return x



def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph}


def test_a_float_one_hot_times_a_weight_is_a_gather_of_its_rows():
    model, x = _byte_model(), _indices()
    before = _run(model, {"x": x})
    PassManager(build_passes("one_hot_gather")).run(model)
    assert "Gather" in _ops(model) and not _ops(model) & {"MatMul", "Equal", "Expand"}, _ops(model)
    np.testing.assert_array_equal(_run(model, {"x": x}), before)


def test_a_one_hot_op_counts_negative_indices_from_the_back():
    rng = np.random.default_rng(2)
    proto = make_model(
        [helper.make_node("OneHot", ["x", "depth", "values"], ["hot"], axis=-1), helper.make_node("MatMul", ["hot", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT64, [B, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, N])],
        [tensor("depth", np.array(K, np.int64)), tensor("values", np.array([0, 1], np.float32)), tensor("W", rng.standard_normal((K, N)).astype(np.float32))],
    )
    model, x = gp.load(proto), _indices(np.int64)
    x[1, :3] = [-K - 1, -3, -K + 1]
    before = _run(model, {"x": x})
    PassManager(build_passes("one_hot_gather")).run(model)
    assert "Gather" in _ops(model) and not _ops(model) & {"MatMul", "OneHot"}, _ops(model)
    np.testing.assert_array_equal(_run(model, {"x": x}), before)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_a_quantized_one_hot_product_is_a_gather_of_the_same_floats(mode):
    """Dynamic: ``DynamicQuantizeLinear`` of a one-hot gives 0/255 at scale 1/255, the product the
    integer sums 255 (Wq - wz) times 1/255 * ws; static: the one-hot's 1 through its
    QuantizeLinear/DequantizeLinear times the dequantized weight. Bit for bit, and all indices
    outside the range (a scale of 0 in the dynamic form) give the bias alone."""
    model, x = _byte_model(), _indices()
    context = PassContext(samples=[{"x": _indices()}, {"x": np.random.default_rng(5).integers(0, K, (B, S)).astype(np.int32)}]) if mode == "static" else None
    PassManager(build_passes(f"quantize:mode={mode}"), context=context).run(model)
    quantized = _ops(model)
    assert ("MatMulInteger" if mode == "dynamic" else "DequantizeLinear") in quantized, quantized
    before = {i: _run(model, {"x": v}) for i, v in enumerate((x, np.full((B, S), K + 3, np.int32)))}
    PassManager(build_passes("one_hot_gather")).run(model)
    assert "Gather" in _ops(model) and not _ops(model) & {"MatMul", "MatMulInteger", "DynamicQuantizeLinear", "Equal"}, _ops(model)
    for i, v in enumerate((x, np.full((B, S), K + 3, np.int32))):
        np.testing.assert_array_equal(_run(model, {"x": v}), before[i])


def test_what_is_not_a_one_hot_of_arange_stays():
    """A table that is not arange(K) (here reversed): Equal is no one-hot of the index; left as it is."""
    model = _byte_model(table=np.arange(K, dtype=np.int32)[::-1].reshape(1, 1, K).copy())
    PassManager(build_passes("one_hot_gather")).run(model)
    assert {"MatMul", "Equal"} <= _ops(model)


def test_two_unnamed_products_of_an_opset_11_model_each_become_a_gather():
    """Two MatMuls of one one-hot, neither named (their Gathers' constants need names of their
    own), in an opset-11 model: converted to opset 13 first (the Squeeze's axes are an input)."""
    model, x = _byte_model(opset=11, second=True), _indices()
    before = _run(model, {"x": x})
    PassManager(build_passes("one_hot_gather")).run(model)
    assert model.opset_imports[""] >= 13 and [n.op_type for n in model.graph].count("Gather") == 2 and "MatMul" not in _ops(model), _ops(model)
    np.testing.assert_array_equal(_run(model, {"x": x}), before)


def test_a_weight_the_caller_can_replace_stays_a_product():
    """An initializer that is also a graph input is the default of an input, not a constant."""
    model = _byte_model(weight_input=True)
    PassManager(build_passes("one_hot_gather")).run(model)
    assert "MatMul" in _ops(model) and "Gather" not in _ops(model)



def test_a_one_hot_of_a_symbolic_batch_is_rewritten_too():
    """Magika as shipped: ``bytes[batch, 2048]`` reshaped to ``[-1, 2048, 1]``, the Equal
    broadcasting its last axis only: the batch stays symbolic, and the file ONNX Runtime runs
    gets the Gather (any batch, bit for bit)."""
    rng = np.random.default_rng(3)
    proto = make_model(
        [helper.make_node("Reshape", ["x", "shape1"], ["x1"]), helper.make_node("Equal", ["x1", "table"], ["eq"]),
         helper.make_node("Cast", ["eq"], ["hot"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["hot", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", S, N])],
        [tensor("shape1", np.array([-1, S, 1], np.int64)), tensor("table", np.arange(K, dtype=np.int32).reshape(1, 1, K)),
         tensor("W", rng.standard_normal((K, N)).astype(np.float32))],
    )  # fmt: skip
    model = gp.load(proto)
    feeds = [{"x": rng.integers(-2, K + 2, (b, S)).astype(np.int32)} for b in (1, 3)]
    before = [_run(model, f) for f in feeds]
    PassManager(build_passes("one_hot_gather")).run(model)
    assert "Gather" in _ops(model) and "MatMul" not in _ops(model), _ops(model)
    for f, want in zip(feeds, before):
        np.testing.assert_array_equal(_run(model, f), want)


def test_a_model_with_no_one_hot_product_keeps_its_opset():
    """An ``Equal`` that feeds no product: nothing to rewrite, so an opset-11 model is not
    converted (compile runs the pass on every model)."""
    proto = make_model(
        [helper.make_node("Equal", ["x", "k"], ["eq"]), helper.make_node("Cast", ["eq"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.INT32, [B, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S])],
        [tensor("k", np.array(3, np.int32))],
        opset=11,
    )
    model = gp.load(proto)
    PassManager(build_passes("one_hot_gather")).run(model)
    assert model.opset_imports[""] == 11 and _ops(model) == {"Equal", "Cast"}
