"""Per-token dynamic int8 (``quantize:mode=dynamic;activations=token``): every row of an
activation gets its own uint8 grid. Checked against a numpy reference of the same arithmetic
(on the weights ONNX Runtime's quantizer wrote), against one scale per tensor on rows of very
different sizes, in ONNX Runtime from a saved file, and compiled with TVM's integer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir.numeric import run
from graphpress.ir.weights import matmul_integer_scale
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from tests.conftest import make_model, tensor

D, H, T = 32, 48, 16


def _mlp() -> onnx.ModelProto:
    """x [2, T, D] -> MatMul -> Relu -> MatMul -> out."""
    rng = np.random.default_rng(0)
    return make_model(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "W2"], ["out"], name="down")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, T, D])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, T, D])],
        [tensor("W1", rng.normal(0, 0.2, (D, H)).astype(np.float32)), tensor("W2", rng.normal(0, 0.2, (H, D)).astype(np.float32))],
    )  # fmt: skip


def _x(seed: int) -> np.ndarray:
    """Rows of very different sizes: token 0 of each sequence 50x the others (a [CLS] row)."""
    x = np.random.default_rng(seed).normal(0, 1, (2, T, D)).astype(np.float32)
    x[:, 0] *= 50
    return x


def _quantized(activations: str):
    model = gp.load(_mlp())
    samples = [{"x": _x(i)} for i in range(2)]
    result = PassManager(build_passes(f"quantize:mode=dynamic;activations={activations}"), context=PassContext(samples=samples)).run(model)
    return model, result


def _reference(model, x: np.ndarray) -> np.ndarray:
    """numpy: each row quantized on its own uint8 grid (ONNX's round half to even), times the
    int8 weights and their per-column scales as the quantizer wrote them."""
    out = x
    for mmi in [n for n in model.graph if n.op_type == "MatMulInteger"]:
        w = mmi.inputs[1].const_value.numpy().astype(np.int64)
        w_scale = matmul_integer_scale(mmi)  # the weight's scales, found through the Sub and the Cast
        lo = np.minimum(out.min(-1, keepdims=True), 0)
        hi = np.maximum(out.max(-1, keepdims=True), 0)
        s = (hi - lo).astype(np.float32) / np.float32(255)
        z = np.round(-lo / s)
        q = np.clip(np.round(out / s) + z, 0, 255)
        acc = (q.astype(np.int64) - z.astype(np.int64)) @ w
        out = (acc.astype(np.float32) * (s * w_scale.astype(np.float32))).astype(np.float32)
        if mmi.name.startswith("up"):
            out = np.maximum(out, 0)
    return out


def test_per_token_matches_its_numpy_reference_and_beats_one_scale_per_tensor(tmp_path):
    model, result = _quantized("token")
    ops = [n.op_type for n in model.graph]
    assert "DynamicQuantizeLinear" not in ops and ops.count("MatMulInteger") == 2
    assert result.records[0].stats["per_token_activations"] == 2
    per_tensor, _ = _quantized("tensor")
    gp.save(model, tmp_path / "token.onnx")  # a file ONNX Runtime loads from any directory
    worse = 0
    for seed in (5, 6, 7):
        x = _x(seed)
        got = run(gp.load(tmp_path / "token.onnx"), {"x": x})["out"]
        np.testing.assert_allclose(got, _reference(model, x), rtol=1e-4, atol=1e-4 * np.abs(got).max())
        want = run(_mlp(), {"x": x})["out"]
        err_token = np.abs(got - want)[:, 1:].mean()  # the ordinary rows
        err_tensor = np.abs(run(per_tensor, {"x": x})["out"] - want)[:, 1:].mean()
        worse += err_token * 5 < err_tensor
    assert worse == 3  # the 50x row no longer coarsens every other row's grid


def test_per_token_needs_dynamic_mode():
    import pytest

    with pytest.raises(gp.GraphpressError, match="use it with mode=dynamic") as e:
        PassManager(build_passes("quantize:mode=static;activations=token"), context=PassContext(samples=[{"x": _x(0)}])).run(gp.load(_mlp()))
    assert "\n" not in str(e.value)


def test_per_token_compiles_to_integer_kernels():
    from graphpress.backends.tvm import compile_model

    model, _ = _quantized("token")
    compiled = compile_model(model, "x86", int8="on", int8_guard=False)
    assert compiled.meta["build"]["int8"]["lowered"] == 2
    for seed in (5, 6):
        x = _x(seed)
        got, want = compiled.run_named(x=x)["out"], run(model, {"x": x})["out"]
        cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cos > 0.99999 and np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def test_per_token_graph_trains_through_its_rounding():
    """``to_torch`` runs the per-token graph as ONNX Runtime does, and gradients reach the first
    layer through ``Round`` (straight-through) and the uint8 ``Cast`` an integer kernel reads."""
    import torch

    from graphpress.ir_torch import to_torch

    model, _ = _quantized("token")
    x = _x(5)
    net = to_torch(model, samples=[{"x": x}])
    out = net(torch.from_numpy(x))
    out = out[0] if isinstance(out, (tuple, list)) else out
    want = run(model, {"x": x})["out"]
    got = out.detach().numpy().reshape(want.shape)
    assert float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.9999
    out.square().sum().backward()
    first = net.params[net._param_of[next(n for n in model.graph if n.op_type == "MatMulInteger").inputs[1].name]]
    # the fp32 gradient of W1, by hand: the straight-through one follows it; cut at the Cast, only
    # the path through the second layer's scale would be left
    w1, w2 = (torch.from_numpy(onnx.numpy_helper.to_array(t)).requires_grad_(k == "W1") for k, t in zip(("W1", "W2"), _mlp().graph.initializer))
    (torch.relu(torch.from_numpy(x) @ w1) @ w2).square().sum().backward()
    g, ref = first.grad.numpy().ravel(), w1.grad.numpy().ravel()
    assert float(g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref))) > 0.95
    # a changed weight is written back with its column sums: ONNX Runtime computes what torch does
    with torch.no_grad():
        first.mul_(1.3)
        trained = net(torch.from_numpy(x))
    trained = (trained[0] if isinstance(trained, (tuple, list)) else trained).numpy().reshape(want.shape)
    written = run(net.write_back(), {"x": x})["out"]
    assert float((written * trained).sum() / (np.linalg.norm(written) * np.linalg.norm(trained))) > 0.99999
    assert np.abs(written - want).max() > 0.1 * np.abs(want).max()  # and it did change


def test_accuracy_control_ranks_layers_with_the_grid_that_ships():
    """``tolerance`` ranks layers by their own error, emulated in numpy: with
    ``activations=token`` that emulation quantizes each row on its own grid, and it predicts the
    error ONNX Runtime's per-token graph makes (the first layer, which reads the input itself)."""
    from graphpress.passes.quantization import local_errors

    fp32 = gp.load(_mlp())
    feeds = {"x": _x(3)}
    want = run(fp32, feeds, outputs=["h"])["h"].astype(np.float64)
    for activations in ("token", "tensor"):
        emulated = local_errors(fp32, feeds, ["MatMul"], per_token=activations == "token")["up"]
        model, _ = _quantized(activations)
        got = run(model, feeds, outputs=["h"])["h"].astype(np.float64)
        measured = 10 * np.log10((want**2).mean() / ((want - got) ** 2).mean())
        assert abs(emulated - measured) < 1.0, (activations, emulated, measured)
        if activations == "token":
            token_db = emulated
    assert token_db > emulated + 10  # the 50x rows: one grid per tensor is far worse
