"""The quantize pass: QDQ static (calibrated) on a CNN trained in the test, dynamic on MiniLM,
weight-only, fp16, accuracy control, and ONNX Runtime running every model it emits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.cli import main
from graphpress.ir import numeric
from graphpress.ir.io import to_proto
from graphpress.ir.numeric import run
from graphpress.models.cnn import accuracy
from graphpress.passes import InvariantInstrument, PassManager, build_passes
from graphpress.passes.context import PassContext
from tests.conftest import make_model, tensor


def _cnn(digits_cnn):
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    return model, data


def _accuracy(model, data):
    return accuracy(next(iter(numeric.run(model, {model.graph.inputs[0].name: data.x_test}).values())), data.y_test)


def _quantize(model, spec, calibration=None, metric=None):
    context = PassContext(samples=calibration, metric=metric)
    return PassManager(build_passes(spec), [InvariantInstrument()], context=context).run(model).records[0].stats


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_keeps_digits_accuracy(digits_cnn, method):
    model, data = _cnn(digits_cnn)
    before = _accuracy(model, data)
    name = model.graph.inputs[0].name
    calibration = [{name: data.x_train[i : i + 32]} for i in range(0, 256, 32)]
    stats = _quantize(model, f"quantize:mode=static;method={method}", calibration)
    ops = [n.op_type for n in model.graph]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 6
    assert stats["scheme"] == "u8s8" and stats["calibration"] == "given"
    conv_layers = [v for v in stats["layers"].values() if v["decision"] == "int8"]
    assert len(conv_layers) >= 3 and all(v["sqnr_db"] > 15 for v in conv_layers)
    # the activations are uint8, the weights int8 per channel
    q_types = {n.inputs[2].const_value.dtype for n in model.graph if n.op_type == "QuantizeLinear"}
    assert q_types == {ir_dtype("UINT8")}
    w_types = {n.inputs[0].const_value.dtype for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None}
    assert ir_dtype("INT8") in w_types
    after = _accuracy(model, data)  # ORT runs the QDQ model
    assert after >= before - 0.005, (before, after)


def ir_dtype(name):
    import onnx_ir as ir

    return getattr(ir.DataType, name)


def test_accuracy_control_falls_back_the_worst_layers(digits_cnn):
    model, data = _cnn(digits_cnn)
    name = model.graph.inputs[0].name
    calibration = [{name: data.x_train[i : i + 16]} for i in range(0, 64, 16)]
    stats = _quantize(model, "quantize:mode=static;tolerance=0.00001;max_fallback=2", calibration)
    fallen = {k: v for k, v in stats["layers"].items() if v["decision"] == "fp32"}
    assert stats["fallback_layers"] == len(fallen) >= 1
    assert all("lowest SQNR" in v["reason"] for v in fallen.values())
    _accuracy(model, data)


def test_accuracy_control_falls_back_dynamic_layers(digits_cnn):
    """Dynamic mode: a layer's output is the rescale Mul after MatMulInteger; the accuracy control
    must still rank it and exclude the fp32 node that made it."""
    model, data = _cnn(digits_cnn)
    fp32_gemms = {n.name for n in model.graph if n.op_type in ("Gemm", "MatMul")}
    stats = _quantize(model, "quantize:mode=dynamic;tolerance=0.0000001;max_fallback=1")
    fallen = {k for k, v in stats["layers"].items() if v["decision"] == "fp32"}
    ranked = {k for k, v in stats["layers"].items() if "sqnr_db" in v}
    assert stats["fallback_layers"] == 1 and len(fallen) == 1 and fallen <= fp32_gemms, stats["layers"]
    assert ranked and ranked <= fp32_gemms
    # every quantized layer is dense: ranked by its own error, the weakest one goes first
    own = {k: v["own_sqnr_db"] for k, v in stats["layers"].items()}
    assert set(own) == fp32_gemms and fallen == {min(own, key=own.get)}
    assert "own SQNR" in stats["layers"][next(iter(fallen))]["reason"]
    # kept in fp32 (ORT splits a Gemm into "<name>_MatMul" + Add)
    (name,) = fallen
    assert any(n.name in (name, f"{name}_MatMul") and n.op_type in ("Gemm", "MatMul") for n in model.graph)
    assert not any(n.name.startswith(name) and n.op_type == "MatMulInteger" for n in model.graph)
    _accuracy(model, data)


def test_weight_only_and_fp16_run_in_ort(digits_cnn):
    model, data = _cnn(digits_cnn)
    fp32_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values())
    before = _accuracy(model, data)
    stats = _quantize(model, "quantize:mode=weight_only")
    assert stats["weights"] >= 4
    int8_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values())
    assert int8_bytes < fp32_bytes / 3
    assert abs(_accuracy(model, data) - before) <= 0.005
    model, data = _cnn(digits_cnn)
    _quantize(model, "quantize:mode=fp16")
    assert abs(_accuracy(model, data) - before) <= 0.005


def test_dynamic_matmuls_keep_minilm_embeddings():
    from graphpress.models.minilm import load_minilm, tokenize

    sentences = ["The quick brown fox.", "Quantization makes models smaller.", "Return the sum of a list.", "Open a file for reading."]
    toks = tokenize(sentences, seq_len=32)
    model = gp.load(load_minilm().eval(), tuple(toks.values()))
    PassManager(build_passes("cleanup")).run(model)
    feeds = {i.name: v.numpy() for i, v in zip(model.graph.inputs, toks.values())}
    ref = next(iter(numeric.run(model, feeds).values()))
    stats = _quantize(model, "quantize:mode=dynamic;ops=MatMul")
    assert stats["quantized_nodes"] >= 36
    got = next(iter(numeric.run(model, feeds).values()))
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.99, cos


def test_cli_quantize_with_verify_and_report(tmp_path, cnn_onnx, capsys):
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    assert main(["optimize", str(cnn_onnx), "-o", str(out), "--passes", "cleanup,fuse,quantize", "--verify", "--report", str(report)]) == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    q = next(p for p in data["passes"] if p["name"] == "quantize")
    assert q["verification"]["passed"] and q["stats"]["calibration"].startswith("generated")
    assert data["verification"]["cosine"] >= 0.99


def test_cli_calibrates_on_given_inputs(tmp_path, cnn_onnx, digits_cnn, capsys):
    _, data = digits_cnn
    model = gp.load(cnn_onnx)
    npz = tmp_path / "calib.npz"
    np.savez(npz, **{model.graph.inputs[0].name: data.x_train[:64]})
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    assert main(["optimize", str(cnn_onnx), "-o", str(out), "--passes", "cleanup,fuse,quantize:method=percentile", "--inputs", str(npz), "--report", str(report)]) == 0, capsys.readouterr().err
    stats = next(p for p in json.loads(report.read_text())["passes"] if p["name"] == "quantize")["stats"]
    assert stats["calibration"] == "given"
    # inputs given to a pipeline that needs no samples are used: every pass is checked on them
    capsys.readouterr()
    assert main(["optimize", str(cnn_onnx), "-o", str(out), "--passes", "cleanup", "--inputs", str(npz)]) == 0
    assert f"verification vs the input model ({npz})" in capsys.readouterr().out


def test_weight_only_shared_weight_is_quantized_once():
    from onnx import TensorProto, helper

    from tests.conftest import make_model, tensor

    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="a"), helper.make_node("MatMul", ["h", "w"], ["y"], name="b")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor("w", w)],
    )
    model = gp.load(proto)
    feeds = numeric.make_inputs(model, seed=0)
    ref = numeric.run(model, feeds)["y"]
    stats = _quantize(model, "quantize:mode=weight_only")
    assert stats["weights"] == 1 and [n.op_type for n in model.graph].count("DequantizeLinear") == 1
    got = numeric.run(model, feeds)["y"]
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()


def test_weight_only_int4_block_wise_runs_in_ort():
    """int4 weights, one scale per 32 along the reduction axis, opset-21 DequantizeLinear."""
    import onnxruntime as ort

    import onnx

    from tests.passes.test_dedup import _tiny_gpt_legacy

    data, ids = _tiny_gpt_legacy()
    ids = torch.from_numpy(ids)
    model = gp.load(onnx.load_from_string(data))
    PassManager(build_passes("cleanup")).run(model)
    fp32 = ir.serde.deserialize_model(to_proto(model))
    record = PassManager(build_passes("quantize:mode=weight_only;bits=4")).run(model).records[0]
    stats = record.stats
    assert stats["bits"] == 4 and stats["weights"] >= 5
    # 4 bits + an fp32 scale per 32 weights = 5 bits per weight
    assert stats["weight_bytes_before"] / stats["weight_bytes_after"] == pytest.approx(32 / 5, rel=0.01)
    assert model.opset_imports[""] == 21
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert dqs and all(n.attributes["block_size"].value == 32 and n.inputs[0].dtype == ir.DataType.INT4 for n in dqs)
    sess = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {model.graph.inputs[0].name: ids.numpy()})[0].ravel()
    want = run(fp32, {fp32.graph.inputs[0].name: ids.numpy()})
    want = next(iter(want.values())).ravel()
    assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.99


def test_mse_calibration_narrows_ranges_and_keeps_accuracy(digits_cnn):
    model, data = _cnn(digits_cnn)
    name = model.graph.inputs[0].name
    calibration = [{name: data.x_train[i : i + 32]} for i in range(0, 128, 32)]

    def quantized(method):
        q = gp.load(to_proto(model))
        return q, _quantize(q, f"quantize:method={method}", calibration)

    def scales(m):
        return {n.inputs[0].name: float(n.inputs[1].const_value.numpy()) for n in m.graph if n.op_type == "QuantizeLinear"}

    minmax, _ = quantized("minmax")
    mse, stats = quantized("mse")
    assert stats["mse_clipped_tensors"] > 0
    narrower = [k for k, v in scales(mse).items() if k in scales(minmax) and v < scales(minmax)[k] * 0.999]
    assert narrower  # the MSE ranges reached ONNX Runtime's quantizer
    assert _accuracy(mse, data) >= _accuracy(model, data) - 0.01


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_non_float32_layers_stay_float_and_the_model_runs(dtype, mode):
    """ORT's quantizer handles float32 only: a float16 layer got float32 Q/DQ ORT rejects, a
    float64 graph stopped the quantizer (found by the fuzzer, NNSmith seeds 13, 20). Such
    layers are kept; float32 layers beside them are still quantized."""
    from onnx import TensorProto, helper

    from tests.conftest import make_model, tensor

    rng = np.random.default_rng(0)
    elem = {np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}[dtype]
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm_float32"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
            helper.make_node("MatMul", ["z", "V"], ["o"], name="mm_other"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32]), helper.make_tensor_value_info("z", elem, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16]), helper.make_tensor_value_info("o", elem, [4, 16])],
        [tensor("W", rng.standard_normal((32, 16)).astype(np.float32)), tensor("V", rng.standard_normal((32, 16)).astype(dtype))],
    )  # fmt: skip
    model = gp.load(proto)
    feeds = {"x": rng.standard_normal((4, 32)).astype(np.float32), "z": rng.standard_normal((4, 32)).astype(dtype)}
    stats = _quantize(model, f"quantize:mode={mode}", calibration=[feeds])
    assert stats["kept_float"] == {"non-float32 tensors": 1}
    ops = {n.name: n.op_type for n in model.graph}
    assert ops.get("mm_other") == "MatMul"  # untouched
    assert any(op in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger") for op in ops.values())
    out = run(model, feeds)
    np.testing.assert_array_equal(out["o"], run(gp.load(proto), feeds)["o"])


def test_layers_ort_quantizer_mishandles_stay_float():
    """A Conv whose data input is a constant (the quantizer took it for a weight and gave the
    bias 9 scales for 1 channel: NNSmith seed 731) and, in dynamic mode, a MatMul with a 3-D
    weight (its MatMulInteger zero point is a shape ORT refuses: seed 674) stay float; the
    float32 layers beside them are quantized and the model runs."""
    from onnx import TensorProto, helper

    from tests.conftest import make_model, tensor

    rng = np.random.default_rng(0)
    proto = make_model(
        [
            helper.make_node("Conv", ["c", "w", "b"], ["conv"], name="conv_of_constant"),
            helper.make_node("MatMul", ["x", "W3"], ["mm3"], name="mm_3d"),
            helper.make_node("MatMul", ["x2", "W"], ["mm"], name="mm_2d"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [11, 1]), helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("conv", "mm3", "mm")],
        [tensor("c", rng.standard_normal((1, 9, 4)).astype(np.float32)), tensor("w", rng.standard_normal((1, 9, 3)).astype(np.float32)),
         tensor("b", rng.standard_normal(1).astype(np.float32)), tensor("W3", rng.standard_normal((11, 1, 19)).astype(np.float32)),
         tensor("W", rng.standard_normal((32, 16)).astype(np.float32))],
    )  # fmt: skip
    feeds = {"x": rng.standard_normal((11, 1)).astype(np.float32), "x2": rng.standard_normal((4, 32)).astype(np.float32)}
    for mode, kept in (("static", {"constant data input": 1}), ("dynamic", {"constant data input": 1, "weight not 2-D": 1})):
        model = gp.load(proto)
        stats = _quantize(model, f"quantize:mode={mode}", calibration=[feeds])
        assert stats["kept_float"] == kept, mode
        assert {n.name: n.op_type for n in model.graph}.get("conv_of_constant") == "Conv"
        out = run(model, feeds)
        np.testing.assert_allclose(out["conv"], run(gp.load(proto), feeds)["conv"], rtol=1e-6)


def test_a_dense_layers_row_bias_is_quantized_static():
    """A Keras/tf2onnx Dense layer, ``MatMul + Add`` with a ``[1, N]`` bias, fused into a Gemm whose
    ``C`` is ``[1, N]`` (Magika's classifier): ORT's static quantizer (1.32) stopped on it ("truth
    value of an array is ambiguous", indexing the bias per output channel). The bias goes to ORT
    as ``[N]``, the Gemm is quantized, the output stays within the quantization's noise of the
    float model, and the old ``[1, N]`` initializer, read by nothing else, is gone."""
    rng = np.random.default_rng(3)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor("W", rng.standard_normal((32, 24)).astype(np.float32)), tensor("b", rng.standard_normal((1, 24)).astype(np.float32))],
    )  # fmt: skip
    calibration = [{"x": rng.standard_normal((8, 32)).astype(np.float32)} for _ in range(4)]
    model = gp.load(proto)
    records = PassManager(build_passes("cleanup,fuse,quantize:mode=static"), [InvariantInstrument()], context=PassContext(samples=calibration)).run(model).records
    stats = records[-1].stats
    assert stats["gemm_biases_flattened"] == 1 and stats["quantized_nodes"] >= 1, stats
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.inputs[2].producer().op_type == "DequantizeLinear" and list(gemm.inputs[2].shape) == [24]
    assert "b" not in model.graph.initializers
    want, got = (run(m, calibration[0])["y"] for m in (gp.load(proto), model))
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_run_that_quantizes_nothing_says_so_and_what_would(tmp_path, capsys):
    """A convolution-only model under mode=dynamic: nothing is quantized (ORT's dynamic quantizer
    takes MatMul/Gemm), the pass says so and names the mode that would; static does quantize it."""
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"), helper.make_node("Relu", ["c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [tensor("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))],
    )
    src = tmp_path / "conv.onnx"
    onnx.save(proto, src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "d.onnx"), "--passes", "quantize:mode=dynamic"]) == 0
    err = capsys.readouterr().err
    assert "warning: pass 'quantize': quantized 0 nodes (1 Conv)" in err and "mode=static" in err, err
    assert main(["optimize", str(src), "-o", str(tmp_path / "s.onnx"), "--passes", "quantize:mode=static"]) == 0
    assert "quantized 0 nodes" not in capsys.readouterr().err
    assert any(n.op_type == "DequantizeLinear" for n in gp.load(tmp_path / "s.onnx").graph)


def test_batch_norms_left_after_quantized_layers_are_named_with_the_pass_that_folds_them(tmp_path, capsys):
    """Conv -> BatchNormalization quantized without ``fuse``: the batch norm stays in float after
    the quantized convolution (its weight is no longer a float constant to fold it into), and the
    pass says to run ``fuse`` first; with ``fuse`` first it folds and nothing is said."""
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"), helper.make_node("Relu", ["n"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [tensor("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), tensor("g", rng.random(4).astype(np.float32) + 0.5),
         tensor("b", rng.standard_normal(4).astype(np.float32)), tensor("m", rng.standard_normal(4).astype(np.float32)), tensor("v", rng.random(4).astype(np.float32) + 0.5)],
    )  # fmt: skip
    src = tmp_path / "conv_bn.onnx"
    onnx.save(proto, src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "q.onnx"), "--passes", "quantize:mode=static"]) == 0
    err = capsys.readouterr().err
    assert "warning: pass 'quantize': 1 BatchNormalization(s) after quantized layers" in err and "cleanup,fuse,quantize" in err, err
    assert [n.op_type for n in gp.load(tmp_path / "q.onnx").graph].count("BatchNormalization") == 1
    assert main(["optimize", str(src), "-o", str(tmp_path / "f.onnx"), "--passes", "cleanup,fuse,quantize:mode=static"]) == 0
    assert "BatchNormalization" not in capsys.readouterr().err
    assert not any(n.op_type == "BatchNormalization" for n in gp.load(tmp_path / "f.onnx").graph)
