"""What the backend does so that TVM lowers models it could not, checked on ONNX's own node tests
(expected outputs from ONNX's generators): ops expanded into their function bodies, corrected
converters, inputs that decide shapes frozen to the samples' values."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model


@functools.cache
def _cases() -> dict:
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return {c.name: c for c in node.collect_testcases()}


def _compile_case(name: str):
    case = _cases()[name]
    inputs, expected = case.data_sets[0]
    feeds = dict(zip([i.name for i in case.model.graph.input], inputs))
    compiled = compile_model(gp.load(case.model), "x86", input_shapes={k: list(v.shape) for k, v in feeds.items()}, samples=[feeds])
    return compiled, feeds, expected


@pytest.mark.parametrize("name", [
    "test_layer_normalization_4d_axis1",  # Mean and InvStdDev outputs (TVM's converter gives only Y)
    "test_attention_4d_gqa",  # the opset-23 Attention (TVM's converter is com.microsoft's)
    "test_spacetodepth_crd_mode_example",  # mode=CRD (TVM ignores the mode)
    "test_rms_normalization_3d_axis1_epsilon",
    "test_rotary_embedding",  # no TVM converter
    "test_isinf_negative",  # corrected converter: detect_positive=0
    "test_shape_start_1",  # a folded Shape is a Constant with value_ints
    "test_cumprod_1d_reverse_exclusive",  # graphpress's converter (TVM has none)
    "test_l2normalization_axis_0",  # graphpress's converter; a zero vector stays zero
    "test_pow_types_int64_int64",  # an integer Pow (TVM's power takes floats only)
    "test_pow_types_float32_int32",  # an exponent of another type
    "test_attention_causal_boolmask_nan_robustness",  # a fully masked row: ReduceMax of -inf is -inf
    "test_reduce_max_empty_set",  # -inf, not TVM's lowest finite float nor unwritten memory
    "test_reduce_min_bool_inputs",  # TVM has no minimum of bool
    "test_bitcast_float32_to_int32",  # graphpress's converter (TVM has none)
    "test_eyelike_with_dtype",  # TVM refuses another dtype
    "test_celu_float16",  # TVM's Elu constants are float32
    "test_bitshift_left_int32_shift_ge_width",  # 0, not what the shift instruction leaves
    "test_mod_float_edge_cases_fmod_0_float32",  # numpy's mod: the divisor's sign, infinities
    "test_split_zero_size_splits_opset18",  # TVM's split needs increasing indices
    "test_affine_grid_3d_expanded",  # `size` frozen through an If's branches; constant Split folded; scalar Unsqueeze axes
    "test_nonmaxsuppression_iou_threshold_boundary",  # an IoU equal to the threshold keeps the box
    "test_shape_start_greater_than_end",  # an empty folded shape (TVM cannot parse an empty value_ints)
    "test_resize_downsample_sizes_linear_antialias",  # decomposed: per-axis MatMul (TVM ignores antialias)
    "test_resize_upsample_sizes_nearest_axes_3_2",  # decomposed: Gather (TVM cannot import axes)
    "test_qlinearmatmul_3D_int8_float32",  # decomposed: MatMulInteger, requantized
    "test_col2im_dilations",  # decomposed (image and block shapes frozen from the samples)
    "test_batchnorm_epsilon_training_mode",  # decomposed: batch statistics (TVM computes inference mode)
])  # fmt: skip
def test_node_tests_tvm_could_not_lower_now_match_the_expected_outputs(name):
    compiled, feeds, expected = _compile_case(name)
    for want, got in zip(expected, compiled(**feeds)):
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, want)
    if name.startswith(("test_layer", "test_attention", "test_rms", "test_rotary")):
        assert compiled.meta["build"]["prepare"]["expanded_to_function_bodies"]
    if name.startswith(("test_resize", "test_qlinear", "test_col2im", "test_batchnorm")):
        assert compiled.meta["build"]["prepare"]["decomposed"]


def test_a_resize_tvm_lowers_right_is_left_to_tvm():
    # nearest x2 of a detector's neck: TVM's resize2d, not a Gather of the decomposition
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    proto = helper.make_model(helper.make_graph([node], "g", [x], [y], [scales]), opset_imports=[helper.make_opsetid("", 19)])
    proto.ir_version = 10
    data = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    compiled = compile_model(gp.load(proto), "x86", samples=[{"x": data}])
    assert "decomposed" not in compiled.meta["build"]["prepare"]
    np.testing.assert_array_equal(compiled(data)[0], data.repeat(2, axis=2).repeat(2, axis=3))


def _topk_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    outs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, None), helper.make_tensor_value_info("indices", TensorProto.INT64, None)]
    proto = helper.make_model(helper.make_graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)], "g", [x, k], outs),
                              opset_imports=[helper.make_opsetid("", 20)])  # fmt: skip
    proto.ir_version = 10
    return gp.load(proto)


def test_an_input_that_decides_shapes_is_fixed_to_the_samples_value():
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    compiled = compile_model(_topk_model(), "x86", samples=[{"x": x, "k": np.array([3])}, {"x": -x, "k": np.array([3])}])
    assert compiled.meta["frozen_inputs"] == [{"name": "k", "dtype": "int64", "value": [3]}]
    values, indices = compiled(x=x, k=np.array([3]))
    np.testing.assert_array_equal(indices, np.argsort(-x, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(values, -np.sort(-x, axis=1)[:, :3])
    assert np.array_equal(compiled(x, np.array([3]))[1], indices)  # positionally, in the model's order
    assert np.array_equal(compiled(x)[1], indices)  # or without it
    with pytest.raises(gp.GraphpressError, match="input 'k' was fixed to \\[3\\]"):
        compiled(x=x, k=np.array([2]))


def test_samples_that_disagree_on_a_shape_deciding_input_are_refused():
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(gp.GraphpressError, match="input 'k' decides shapes \\(TopK"):
        compile_model(_topk_model(), "x86", samples=[{"x": x, "k": np.array([3])}, {"x": x, "k": np.array([2])}])


def test_negative_dims_of_a_paddle_export_are_symbolic(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])
    proto = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 11)])  # fmt: skip
    proto.ir_version = 6
    onnx.save(proto, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    model = gp.load(tmp_path / "m.onnx")
    assert not isinstance(model.graph.inputs[0].shape[0], int)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1  # the caller's proto untouched
    compiled = compile_model(model, "x86", input_shapes={"x": [5, 4]})
    x5 = np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(compiled(x5)[0], np.maximum(x5, 0))
    assert (tmp_path / "m.onnx").read_bytes() == before


def test_data_inputs_whose_shape_feeds_a_reshape_are_never_frozen():
    # y = Reshape(x, Concat(Shape(x)[0], -1)): x's *shape* reaches a Reshape, its values do not
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=1),
        helper.make_node("Concat", ["s", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]),
        opset_imports=[helper.make_opsetid("", 20)],
    )  # fmt: skip
    proto.ir_version = 10
    sample = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    compiled = compile_model(gp.load(proto), "x86", samples=[{"x": sample}])
    assert compiled.meta["frozen_inputs"] == []
    other = -sample
    np.testing.assert_array_equal(compiled(x=other)[0], other.reshape(2, 12))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_row_min_max_in_two_steps_match_numpy(keepdims):
    """Min/max over a long last axis (a per-token quantization's range) are computed as 16
    partial results per row and then those 16 (``converters._reduce_from_infinity``): the same
    values as numpy, infinities included."""
    nodes = [helper.make_node(op, ["x", "axes"], [op], keepdims=keepdims) for op in ("ReduceMin", "ReduceMax")]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 1536])],
                              [helper.make_tensor_value_info(op, TensorProto.FLOAT, None) for op in ("ReduceMin", "ReduceMax")],
                              [helper.make_tensor("axes", TensorProto.INT64, [1], [-1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    x = np.random.default_rng(0).normal(size=(2, 8, 1536)).astype(np.float32)
    x[0, 3, 1000], x[1, 7, 5] = np.inf, -np.inf
    got = compile_model(gp.load(model), "x86").run_named(x=x)
    np.testing.assert_array_equal(got["ReduceMin"], x.min(-1, keepdims=bool(keepdims)))
    np.testing.assert_array_equal(got["ReduceMax"], x.max(-1, keepdims=bool(keepdims)))


def _if_on_data_model() -> onnx.ModelProto:
    """``If(sum(x) > 0)``: the then branch a chain of four ops on ``x``, the else branch two;
    the condition is computed from the data (more of it than an input frozen to the samples'
    value may have), so the artifact keeps both branches."""

    def branch(name: str, ops: list[str]) -> onnx.GraphProto:
        nodes, prev = [], "x"
        for i, op in enumerate(ops):
            out = f"{name}_out" if i == len(ops) - 1 else f"{name}{i}"
            nodes.append(helper.make_node(op, [prev, f"{name}_c{i}"] if op in ("Mul", "Add", "Sub") else [prev], [out]))
            prev = out
        inits = [helper.make_tensor(f"{name}_c{i}", TensorProto.FLOAT, [32], np.linspace(0.5, 1.5, 32).astype(np.float32) + i)
                 for i, op in enumerate(ops) if op in ("Mul", "Add", "Sub")]  # fmt: skip
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4, 32])], inits)

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=branch("then", ["Mul", "Add", "Tanh", "Mul"]), else_branch=branch("else", ["Sub", "Abs"])),
        ],
        "if_on_data",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_an_if_on_the_data_runs_one_branch_and_fuses_inside_it():
    """TVM's importer emits a branch's ops into the enclosing block: both branches ran before
    every If, op by op (a model with an If had no dataflow block, so nothing fused). Each branch
    is now its own function, called from the If, and fused like the rest of the model."""
    import onnxruntime as ort
    from tvm import relax

    from graphpress.backends.tvm.lower import bind_input_shapes, to_relax

    proto = _if_on_data_model()
    model = gp.load(proto)
    mod = to_relax(model, bind_input_shapes(model, None))
    top = [b.value.op.name for blk in mod["main"].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name")]
    assert "relax.tanh" not in top and "relax.abs" not in top, top  # no branch op before the If
    branches = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function) and gv.name_hint != "main"]
    assert len(branches) == 2, branches

    rng = np.random.default_rng(0)
    compiled = compile_model(model, "x86", samples=[{"x": rng.standard_normal((4, 32)).astype(np.float32)}])
    fused = [k for k in compiled.meta["build"]["kernel_names"] if k.startswith("fused_") and "tanh" in k]
    assert fused, compiled.meta["build"]["kernel_names"]  # the then branch's ops in one kernel
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for sign in (1.0, -1.0):  # each branch in turn
        x = (sign * np.abs(rng.standard_normal((4, 32)))).astype(np.float32)
        np.testing.assert_allclose(compiled(x)[0], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
