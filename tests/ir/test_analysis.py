import numpy as np
from onnx import TensorProto, helper

import graphpress as gp
from tests.conftest import make_model, tensor


def test_macs_conv_gemm_matmul_and_attention():
    w = np.zeros((8, 3, 3, 3), np.float32)
    g = np.zeros((10, 8 * 4 * 4), np.float32)
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
            helper.make_node("MatMul", ["q", "k"], ["s"]),
            helper.make_node("ConvTranspose", ["t", "wt"], ["u"], strides=[2, 2]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 2, 5, 16]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", 2, 16, 5]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 3, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, None),
        ],
        [tensor("w", w), tensor("g", g), tensor("wt", np.zeros((4, 6, 2, 2), np.float32))],
    )
    s = gp.summarize(gp.load(proto))
    conv = 1 * 8 * 4 * 4 * (3 * 3 * 3)
    gemm = 1 * 10 * 128
    attention = 1 * 2 * 5 * 16 * 5  # symbolic batch counts as 1
    convt = (1 * 4 * 3 * 3) * (6 * 2 * 2)
    assert s.macs_by_kind == {"conv": conv + convt, "gemm": gemm, "attention": attention}
    assert s.macs == conv + gemm + attention + convt
    assert s.params == w.size + g.size + 4 * 6 * 2 * 2
    assert s.bytes == 4 * s.params
    assert s.ops == {"Conv": 1, "ConvTranspose": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1}
    assert s.inputs[1] == {"name": "q", "dtype": "FLOAT", "shape": ["batch", 2, 5, 16]}
    assert s.unknown_macs == []


def test_constant_node_tensors_count_as_weights():
    proto = make_model(
        [
            helper.make_node("Constant", [], ["c"], value=tensor("cv", np.ones((4, 4), np.float16))),
            helper.make_node("MatMul", ["x", "c"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
    )
    s = gp.summarize(gp.load(proto))
    assert (s.params, s.bytes) == (16, 32)
    assert s.macs_by_kind == {"matmul": 2 * 4 * 4}


def test_brief_has_report_keys(mlp_proto):
    assert set(gp.summarize(gp.load(mlp_proto)).brief()) == {"params", "bytes", "macs", "nodes"}


def test_matmul_on_transposed_weight_is_not_attention():
    proto = make_model(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor("w", np.zeros((5, 4), np.float32))],
    )
    assert gp.summarize(gp.load(proto)).macs_by_kind == {"matmul": 3 * 4 * 5}


def test_macs_of_the_integer_forms_count_like_their_float_ops():
    """ONNX Runtime's dynamic quantizer writes MatMulInteger and ConvInteger: the same products."""
    proto = make_model(
        [
            helper.make_node("MatMulInteger", ["a", "b"], ["m"]),
            helper.make_node("ConvInteger", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        ],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 7, 16]), helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("m", TensorProto.INT32, None), helper.make_tensor_value_info("c", TensorProto.INT32, None)],
        [tensor("b", np.zeros((16, 9), np.int8)), tensor("w", np.zeros((4, 2, 3, 3), np.int8))],
    )
    s = gp.summarize(gp.load(proto))
    assert s.macs_by_kind == {"matmul": 3 * 7 * 16 * 9, "conv": 4 * 5 * 5 * (2 * 3 * 3)}
