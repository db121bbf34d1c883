"""compile_model checks the compiled code against ONNX Runtime: wrong code is never returned silently."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model


def _model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    w = onnx.numpy_helper.from_array(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="the_sigmoid"),
        helper.make_node("Add", ["s", "x"], ["y"], name="residual"),
    ]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    return gp.load(proto)


@pytest.fixture
def wrong_sigmoid(monkeypatch):
    """TVM's importer lowers Sigmoid as tanh: real, wrong compiled code (the importer's own
    converter registry, the way graphpress's integer converters are registered)."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map

    class TanhNotSigmoid(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            return relax.op.tanh(inputs[0])

    monkeypatch.setattr(onnx_frontend, "_get_convert_map", lambda: {**original(), "Sigmoid": TanhNotSigmoid})


def test_a_correct_build_is_checked_and_says_so():
    compiled = compile_model(_model(), "x86")
    check = compiled.meta["build"]["check_vs_onnxruntime"]
    assert check["passed"] and check["max_abs_diff"] < 1e-5


def test_wrong_compiled_code_is_an_error_naming_the_first_diverging_node(wrong_sigmoid):
    with pytest.raises(gp.GraphpressError, match="differs from ONNX Runtime") as e:
        compile_model(_model(), "x86")
    assert "'the_sigmoid' (Sigmoid" in str(e.value) and "\n" not in str(e.value)


def test_verify_false_returns_the_unchecked_build(wrong_sigmoid):
    model = _model()
    compiled = compile_model(model, "x86", verify=False)
    assert "check_vs_onnxruntime" not in compiled.meta["build"]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    (got,) = compiled(x=x)
    h = x @ np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_allclose(got, np.tanh(h) + x, rtol=1e-5, atol=1e-5)  # what was built: tanh


def test_the_check_runs_on_the_samples_given():
    x = np.full((2, 8), 3.0, np.float32)
    compiled = compile_model(_model(), "x86", samples=[{"x": x}, {"x": -x}])
    assert compiled.meta["build"]["check_vs_onnxruntime"]["inputs"] == "2 sample(s) given"
