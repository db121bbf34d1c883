"""The decompose pass on ONNX's own node tests: the decomposed model, run by ONNX Runtime, gives
the expected outputs ONNX's generators wrote (an independent reference), and the op is gone."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir import numeric
from graphpress.passes import PassManager, build_passes


@functools.cache
def _cases() -> dict:
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return {c.name: c for c in node.collect_testcases()}


def _decomposed(proto, feeds):
    model = gp.load(proto)
    from graphpress.backends.tvm.lower import set_input_shapes

    set_input_shapes(model, {k: {"shape": list(v.shape)} for k, v in feeds.items()})
    result = PassManager(build_passes("decompose")).run(model)
    return model, result.records[0].stats


@pytest.mark.parametrize("name, op", [
    ("test_resize_downsample_scales_cubic_antialias", "Resize"),
    ("test_resize_downsample_scales_linear_half_pixel_symmetric", "Resize"),
    ("test_resize_downsample_sizes_nearest_not_smaller", "Resize"),  # keep_aspect_ratio_policy
    ("test_resize_tf_crop_and_resize_axes_3_2", "Resize"),  # axes, roi, extrapolation
    ("test_resize_upsample_sizes_nearest_ceil_half_pixel", "Resize"),  # nearest: a Gather
    ("test_resize_upsample_scales_cubic_A_n0p5_exclude_outside", "Resize"),
    ("test_upsample_nearest", "Upsample"),
    ("test_qlinearmatmul_3D_uint8_float32", "QLinearMatMul"),
    ("test_qlinearmatmul_2D_int8_float16", "QLinearMatMul"),
    ("test_reversesequence_batch", "ReverseSequence"),
    ("test_reversesequence_time", "ReverseSequence"),
    ("test_batchnorm_example_training_mode", "BatchNormalization"),
    ("test_col2im_5d", "Col2Im"),
    ("test_col2im_pads", "Col2Im"),
    ("test_convtranspose_output_shape", "ConvTranspose"),
    ("test_ai_onnx_ml_binarizer", "Binarizer"),
    ("test_ai_onnx_ml_array_feature_extractor", "ArrayFeatureExtractor"),
])  # fmt: skip
def test_decomposed_node_tests_give_the_expected_outputs(name, op):
    case = _cases()[name]
    inputs, expected = case.data_sets[0]
    feeds = dict(zip([i.name for i in case.model.graph.input], inputs))
    if op in ("Col2Im", "Resize", "Upsample"):  # shapes, scales, roi: constants (the backend freezes them)
        from graphpress.backends.tvm.lower import _freeze
        from graphpress.ir.io import to_proto

        model = gp.load(case.model)
        first = case.model.graph.input[0].name
        _freeze(model, {k: v for k, v in feeds.items() if k != first})
        proto, feeds = to_proto(model), {first: feeds[first]}
    else:
        proto = case.model
    model, stats = _decomposed(proto, feeds)
    assert stats["decomposed"] == 1, stats
    kept = [n.op_type for n in model.graph]
    assert op not in kept or op == "ConvTranspose", kept
    if op == "ConvTranspose":
        assert all(n.attributes.get("output_shape") is None for n in model.graph)
    if op == "Resize" and "nearest" in name:
        assert "MatMul" not in kept and "Gather" in kept  # every row picks one input
    got = list(numeric.run(model, feeds).values())
    for want, have in zip(expected, got):
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=1e-3 if want.dtype == np.float16 else 1e-5, atol=1e-3 if want.dtype == np.float16 else 1e-5)
        else:
            np.testing.assert_array_equal(have, want)


def test_a_resize_with_scales_that_are_not_constant_is_left_and_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")
    proto = helper.make_model(helper.make_graph([node], "g", [x, s], [y]), opset_imports=[helper.make_opsetid("", 19)])
    proto.ir_version = 10
    result = PassManager(build_passes("decompose")).run(gp.load(proto))
    assert result.records[0].stats == {"decomposed": 0, "left": ["up"]}


def test_decompose_names_an_unknown_op():
    with pytest.raises(gp.GraphpressError, match="unknown op .Softmax. in ops"):
        build_passes("decompose:ops=Resize|Softmax")
