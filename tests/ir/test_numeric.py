import math

import numpy as np
import onnx_ir as ir
import pytest

import graphpress as gp
from graphpress.errors import GraphpressError
from graphpress.ir import numeric


def test_tolerance_table_is_explicit_per_family_and_dtype():
    assert numeric.tolerance_for("exact", np.float32).atol == 0.0
    assert numeric.tolerance_for("cleanup", np.float32) == numeric.Tolerance(1e-5, 1e-5, 0.99999)
    assert numeric.tolerance_for("cleanup", np.float16).atol == 2e-3
    assert numeric.tolerance_for("fusion", np.int64).atol == 0.0
    assert math.isinf(numeric.tolerance_for("quantization", np.float32).atol)
    with pytest.raises(GraphpressError, match="valid: exact"):
        numeric.tolerance_for("nope", np.float32)


def test_identical_models_pass(mlp_proto):
    a, b = gp.load(mlp_proto), gp.load(mlp_proto)
    feeds = numeric.make_inputs(a)
    report = numeric.compare_models(a, b, feeds, family="exact")
    assert report.passed and report.max_abs_diff == 0.0 and report.min_cosine == pytest.approx(1.0)


def test_changed_weight_fails_and_names_first_diverging_node(mlp_proto):
    ref, new = gp.load(mlp_proto), gp.load(mlp_proto)
    b1 = new.graph.initializers["b1"]
    b1.const_value = ir.Tensor(b1.const_value.numpy() + np.float32(0.5), name="b1")
    feeds = numeric.make_inputs(ref, seed=3)
    report = numeric.compare_models(ref, new, feeds, family="cleanup")
    assert not report.passed
    assert report.first_divergence["node"] == "add1"
    assert report.first_divergence["op_type"] == "Add"
    assert "first diverging node 'add1'" in report.describe_failure()


def test_tolerance_boundary():
    ref = {"y": np.array([1.0, 2.0], np.float32)}
    ok = {"y": np.array([1.0 + 5e-6, 2.0], np.float32)}
    bad = {"y": np.array([1.0 + 1e-3, 2.0], np.float32)}
    assert numeric.compare_outputs(ref, ok, "cleanup").passed
    assert not numeric.compare_outputs(ref, ok, "exact").passed
    assert not numeric.compare_outputs(ref, bad, "cleanup").passed
    nan = {"y": np.array([np.nan, 2.0], np.float32)}
    assert not numeric.compare_outputs(ref, nan, "cleanup").passed


def test_make_inputs_follows_declared_shapes(mlp_proto):
    feeds = numeric.make_inputs(gp.load(mlp_proto))
    assert feeds["x"].shape == (1, 8) and feeds["x"].dtype == np.float32


def test_load_inputs_checks_names(tmp_path, mlp_proto):
    model = gp.load(mlp_proto)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((1, 8), np.float32))
    assert numeric.load_inputs(good, model)["x"].shape == (1, 8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong=np.ones((1, 8), np.float32))
    with pytest.raises(GraphpressError, match="missing input.*x"):
        numeric.load_inputs(bad, model)


def test_outputs_are_judged_by_the_precision_of_their_math():
    """A float64 output cast from float16 work carries float16's precision: it is judged with
    float16's tolerance, not float64's (the compile check refused correct code on such graphs)."""
    from onnx import TensorProto, helper

    from tests.conftest import make_model

    proto = make_model(
        [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0), helper.make_node("Cast", ["m"], ["y"], to=TensorProto.DOUBLE)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [8])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [])],
    )
    model = gp.load(proto)
    assert numeric.lowest_float_precision(model) == "float16"
    ref = {"y": np.array(1.0, np.float64)}
    off_by_an_ulp = {"y": np.array(1.0 + 2**-10, np.float64)}
    assert not numeric.compare_outputs(ref, off_by_an_ulp, "backend").passed
    assert numeric.compare_outputs(ref, off_by_an_ulp, "backend", precision="float16").passed
    assert not numeric.compare_outputs(ref, {"y": np.array(1.01, np.float64)}, "backend", precision="float16").passed


def test_equal_infinities_and_nans_agree_and_others_do_not():
    """x / 0 is inf in both models: no difference (the end-to-end check refused such graphs,
    found by the fuzzer, NNSmith seeds 81, 220, 473)."""
    ref = {"y": np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)}
    assert numeric.compare_outputs(ref, {"y": ref["y"].copy()}, "exact").passed
    assert not numeric.compare_outputs(ref, {"y": np.array([np.inf, np.inf, np.nan, 1.0], np.float32)}, "cleanup").passed
    assert not numeric.compare_outputs(ref, {"y": np.array([np.inf, -np.inf, 0.0, 1.0], np.float32)}, "cleanup").passed
