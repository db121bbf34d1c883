"""decompose_stft: STFT as framing, window and a DFT by MatMul computes what ONNX Runtime's STFT does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.ir import to_proto
from graphpress.passes import InvariantInstrument, PassManager, build_passes


def _stft(rank: int, window: bool, onesided: int, length=200, n=32, step=8) -> onnx.ModelProto:
    shape = [2, length, 1] if rank == 3 else [2, length]
    inits = [onnx.numpy_helper.from_array(np.array(step, np.int64), "step")]
    ins = ["signal", "step"]
    if window:
        inits.append(onnx.numpy_helper.from_array(np.hanning(n).astype(np.float32), "window"))
        ins.append("window")
    else:
        inits.append(onnx.numpy_helper.from_array(np.array(n, np.int64), "n"))
        ins += ["", "n"]
    node = helper.make_node("STFT", ins, ["y"], onesided=onesided)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("signal", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def _ort(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("rank", [3, 2])
@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("onesided", [1, 0])
def test_decomposed_stft_equals_onnxruntimes(rank, window, onesided):
    proto = _stft(rank, window, onesided)
    x = np.random.default_rng(0).standard_normal([2, 200, 1][:rank]).astype(np.float32)
    model = gp.load(proto)
    result = PassManager(build_passes("decompose_stft"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats["decomposed"] == 1 and not any(n.op_type == "STFT" for n in model.graph)
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMul") == 1 and "Mul" not in ops  # one DFT product, the constant window in its rows
    want = _ort(proto, {"signal": x})
    got = _ort(to_proto(model), {"signal": x})
    assert got.shape == want.shape == (2, (200 - 32) // 8 + 1, 17 if onesided else 32, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_x86_compiles_an_stft_model_and_matches_onnxruntime():
    proto = _stft(3, True, 1)
    x = np.random.default_rng(1).standard_normal((2, 200, 1)).astype(np.float32)
    compiled = compile_model(gp.load(proto), "x86")
    np.testing.assert_allclose(compiled(signal=x)[0], _ort(proto, {"signal": x}), rtol=1e-4, atol=2e-5)


def test_a_window_given_as_an_input_multiplies_the_frames():
    proto = _stft(3, True, 1)
    window = proto.graph.initializer.pop(1)
    proto.graph.input.append(helper.make_tensor_value_info("window", TensorProto.FLOAT, [32]))
    feeds = {"signal": np.random.default_rng(2).standard_normal((2, 200, 1)).astype(np.float32), "window": onnx.numpy_helper.to_array(window)}
    model = gp.load(proto)
    PassManager(build_passes("decompose_stft"), [InvariantInstrument()]).run(model)
    assert [n.op_type for n in model.graph].count("Mul") == 1
    np.testing.assert_allclose(_ort(to_proto(model), feeds), _ort(proto, feeds), rtol=1e-4, atol=2e-5)
