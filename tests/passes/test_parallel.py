"""merge_parallel_convs: convolutions of one input merged into one, split after, computing what
the separate ones do (ONNX Runtime on both graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir import to_proto
from graphpress.passes import InvariantInstrument, PassManager, build_passes


def _branches() -> onnx.ModelProto:
    """Two 1-D filter banks of one signal (a spectrogram's cosine and sine, without biases), a
    third conv with a bias and another stride (not merged), and a 2-D pair with biases whose
    second branch is a graph output."""
    rng = np.random.default_rng(0)
    shapes = {"w0": (5, 1, 16), "w1": (7, 1, 16), "w2": (3, 1, 16), "b_other": (3,), "w3": (4, 3, 3, 3), "w4": (6, 3, 3, 3), "b2d4": (4,), "b2d6": (6,)}
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in shapes.items()]
    nodes = [
        helper.make_node("Conv", ["s", "w0"], ["cos"], kernel_shape=[16], strides=[4]),
        helper.make_node("Conv", ["s", "w1"], ["sin"], kernel_shape=[16], strides=[4]),
        helper.make_node("Conv", ["s", "w2", "b_other"], ["other"], kernel_shape=[16], strides=[2]),
        helper.make_node("Mul", ["cos", "cos"], ["c2"]),
        helper.make_node("Mul", ["sin", "sin"], ["s2"]),
        helper.make_node("Concat", ["c2", "s2"], ["power"], axis=1),
        helper.make_node("Conv", ["img", "w3", "b2d4"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["img", "w4", "b2d6"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 200]), helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("power", "other", "a_relu", "b")], inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def test_convolutions_of_one_input_merge_and_compute_what_the_separate_ones_do():
    proto = _branches()
    model = gp.load(proto)
    result = PassManager(build_passes("merge_parallel_convs"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats["merged"] == 4
    convs = [n for n in model.graph if n.op_type == "Conv"]
    assert sorted(int(n.inputs[1].const_value.shape[0]) for n in convs) == [3, 10, 12]  # 5 + 7, 4 + 6, the other stride alone
    assert [v.name for v in model.graph.outputs] == ["power", "other", "a_relu", "b"]
    rng = np.random.default_rng(1)
    feeds = {"s": rng.standard_normal((1, 1, 200)).astype(np.float32), "img": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for got, want in zip(run(to_proto(model)), run(proto)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_convolutions_and_an_old_opset_are_left_alone():
    proto = _branches()
    for node in proto.graph.node[6:8]:
        node.attribute.append(helper.make_attribute("group", 1))
    proto.graph.node[7].attribute[-1].i = 3  # b: 3 groups of 1 input channel (its weight does not fit: not merged anyway)
    model = gp.load(proto)
    stats = PassManager(build_passes("merge_parallel_convs")).run(model).records[0].stats
    assert stats["merged"] == 2  # only the 1-D pair
    old = _branches()
    old.opset_import[0].version = 11
    assert PassManager(build_passes("merge_parallel_convs")).run(gp.load(old)).records[0].stats["merged"] == 0
