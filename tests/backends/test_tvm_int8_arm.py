"""Integer kernels for aarch64 (dot-product extension, and the 8-bit matrix multiply extension on
``aarch64:i8mm``): bit-exact under qemu (whose CPU has both) against ONNX Runtime and a numpy
ConvInteger, with real ``sdot`` / ``usmmla`` instructions in the code."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm.qemu import arm_env_ready, run_aarch64
from graphpress.ir.io import to_proto
from tests.backends.test_tvm_quantized import _conv_reference
from tests.conftest import make_model, tensor

pytestmark = pytest.mark.skipif(not arm_env_ready(), reason="no qemu-aarch64 / arm env (make arm-env)")


def _compile(model, tmp_path, name, target="aarch64"):
    compiled = compile_model(model, target, int8="on")
    report = compiled.meta["build"]["int8"]
    isa = "i8mm" if target.endswith("i8mm") else "sdot"
    assert report["isa"] == isa and report["lowered"] == 1 and report["usmmla" if isa == "i8mm" else "sdot"] > 0, report
    assert report["guard"].startswith("not run")
    return compiled.save(tmp_path / name)


@pytest.mark.parametrize("target", ["aarch64", "aarch64:i8mm"])
@pytest.mark.parametrize("a_dtype,zero_point", [(np.uint8, 7), (np.int8, -3)])
def test_matmul_integer_on_sdot_equals_ort(tmp_path, a_dtype, zero_point, target):
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (64, 40), dtype=np.int8)
    elem = TensorProto.UINT8 if a_dtype == np.uint8 else TensorProto.INT8
    model = gp.load(
        make_model(
            [helper.make_node("MatMulInteger", ["a", "W", "za"], ["y"], name="mmi")],
            [helper.make_tensor_value_info("a", elem, [6, 64])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [6, 40])],
            [tensor("W", w), tensor("za", np.array(zero_point, dtype=a_dtype))],
        )
    )
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, (6, 64)).astype(a_dtype)
    want = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    got = run_aarch64(_compile(model, tmp_path, "mmi.arm", target), {"a": a})["y"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target", ["aarch64", "aarch64:i8mm"])
def test_conv_integer_on_sdot_equals_a_reference(tmp_path, target):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (1, 6, 9, 11), dtype=np.uint8)
    w = rng.integers(-128, 128, (12, 6, 3, 3), dtype=np.int8)
    pads, strides, zx = [1, 0, 1, 2], [2, 1], 17
    model = gp.load(
        make_model(
            [helper.make_node("ConvInteger", ["x", "W", "zx"], ["y"], pads=pads, strides=strides, name="ci")],
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 6, 9, 11])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
            [tensor("W", w), tensor("zx", np.array(zx, np.uint8))],
        )
    )
    got = run_aarch64(_compile(model, tmp_path, "conv.arm", target), {"x": x})["y"]
    np.testing.assert_array_equal(got, _conv_reference(x, w, zx, pads, strides))


def test_int8_auto_stays_float_on_a_cross_target():
    """Without int8=on a cross-compiled target keeps the importer's lowering: the guard cannot time it."""
    model = gp.load(
        make_model(
            [helper.make_node("MatMulInteger", ["a", "W"], ["y"])],
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 8])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])],
            [tensor("W", np.ones((8, 4), np.int8))],
        )
    )
    assert "int8" not in compile_model(model, "aarch64").meta["build"]  # nothing to time the guard with
