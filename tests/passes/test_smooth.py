"""SmoothQuant (``quantize:smooth=ALPHA``): exact in fp32, and int8 closer to fp32 than without,
on a post-LayerNorm block whose activation has one channel 40x wider than the rest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir.numeric import run
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from graphpress.passes.smooth import smooth_activations
from tests.conftest import make_model, tensor

D, H = 32, 64


def _block() -> onnx.ModelProto:
    """x -> LayerNorm (one channel's gain 40x) -> y; y -> MatMul -> Relu -> MatMul -> + y (residual)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    gamma[5] = 40.0
    proto = make_model(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln", axis=-1),
            helper.make_node("MatMul", ["y", "W1"], ["h"], name="up"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W2"], ["d"], name="down"),
            helper.make_node("Add", ["d", "y"], ["out"], name="residual"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, D])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, D])],
        [tensor("gamma", gamma), tensor("beta", rng.normal(0, 0.1, D).astype(np.float32)),
         tensor("W1", rng.normal(0, 0.2, (D, H)).astype(np.float32)), tensor("W2", rng.normal(0, 0.2, (H, D)).astype(np.float32))],
    )  # fmt: skip
    onnx.checker.check_model(proto)
    return proto


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 16, D)).astype(np.float32)} for _ in range(n)]


def test_smoothing_is_exact_in_fp32_and_leaves_other_readers_alone():
    proto = _block()
    model = gp.load(proto)
    info = smooth_activations(model, _samples(4, 0), 0.5)
    assert info["smoothed_activations"] == 2 and info["smoothed_layers"] == 2  # y (for up) and r (for down)
    assert info["largest_factor"] > 2
    muls = [n for n in model.graph if n.op_type == "Mul"]
    assert len(muls) == 2
    residual = next(n for n in model.graph if n.name == "residual")
    assert residual.inputs[1].name == "y"  # the residual still adds the LayerNorm's own output
    assert "W1" not in model.graph.initializers  # replaced by the scaled copy, not kept beside it
    for feeds in _samples(3, 7):
        np.testing.assert_allclose(run(model, feeds)["out"], run(proto, feeds)["out"], rtol=1e-5, atol=1e-5)


def test_a_gemm_with_transposed_weight_scales_its_columns_and_samples_may_differ_in_length():
    """Gemm(transB=1) keeps its weight as [N, K]: the factors go on its columns. Samples of
    different lengths (text) are taken one at a time."""
    rng = np.random.default_rng(4)
    proto = make_model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])],
        [tensor("W", rng.normal(0, 0.2, (H, D)).astype(np.float32)), tensor("b", rng.normal(0, 0.1, H).astype(np.float32))],
    )
    samples = []
    for n in (3, 5, 8):
        x = rng.normal(0, 1, (n, D)).astype(np.float32)
        x[:, 2] *= 30
        samples.append({"x": x})
    model = gp.load(proto)
    info = smooth_activations(model, samples, 0.5)
    assert info["smoothed_layers"] == 1 and info["largest_factor"] > 2
    for feeds in samples:
        np.testing.assert_allclose(run(model, feeds)["y"], run(proto, feeds)["y"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["dynamic", "static", "static-auto"])
def test_smoothed_int8_is_closer_to_fp32_than_plain_int8(mode):
    proto = _block()
    calibration, held_out = _samples(8, 1), _samples(6, 2)

    def quantized(spec: str):
        model = gp.load(proto)
        result = PassManager(build_passes(spec), context=PassContext(samples=calibration)).run(model)
        return model, result.records[0].stats

    def error(model) -> float:
        return float(np.mean([np.mean((run(model, f)["out"] - run(proto, f)["out"]) ** 2) for f in held_out]))

    ops = "" if mode == "static-auto" else ";ops=MatMul"  # static's default quantizes Mul too
    plain, _ = quantized(f"quantize:mode={mode.split('-')[0]}{ops}")
    smoothed, stats = quantized(f"quantize:mode={mode.split('-')[0]}{ops};smooth=0.5")
    assert stats["smoothing"]["smoothed_layers"] == 2
    smoothing_muls = [n for n in smoothed.graph if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert len(smoothing_muls) == 2
    for mul in smoothing_muls:  # its 1/s stays float: never an int8 initializer
        assert mul.inputs[1].const_value is not None, mul
    if mode == "static-auto":
        # the LayerNorm's output is quantized per tensor for the residual addition too, before
        # any smoothing: nothing to win on it, and nothing may be lost
        assert error(smoothed) <= 1.05 * error(plain), (error(smoothed), error(plain))
    else:
        assert error(smoothed) < 0.5 * error(plain), (error(smoothed), error(plain))
