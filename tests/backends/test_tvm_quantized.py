"""Quantized dense layers on TVM's VNNI and AMX kernels: bit-exact integer results against ONNX Runtime,
QDQ graphs within one LSB, the per-node fp32 guard, and real vpdpbusd/tdpbusd in the code."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm.int8 import guard
from graphpress.backends.tvm.int8.isa import select_isa
from graphpress.backends.tvm.int8.kernels_x86 import amx_dot_product_count, zmm_vpdpbusd_count
from graphpress.backends.tvm.int8.qdq import qdq_to_integer
from graphpress.backends.tvm.targets import has_amx, has_vnni, resolve_target
from graphpress.errors import GraphpressError
from graphpress.ir.io import to_proto
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from tests.conftest import host_lacks, make_model, tensor

pytestmark = pytest.mark.skipif(not has_vnni(resolve_target("x86")), reason=host_lacks("avx512_vnni", "avx512f") or "the x86 target has no AVX-512 VNNI")


def _ort(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _matmul_integer_model(a_shape, n: int, a_dtype=np.uint8, zero_point=7) -> ir.Model:
    k = a_shape[-1]
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    elem = TensorProto.UINT8 if a_dtype == np.uint8 else TensorProto.INT8
    proto = make_model(
        [helper.make_node("MatMulInteger", ["a", "W", "za"], ["y"], name="mmi")],
        [helper.make_tensor_value_info("a", elem, list(a_shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [*a_shape[:-1], n])],
        [tensor("W", w), tensor("za", np.array(zero_point, dtype=a_dtype))],
    )
    return gp.load(proto)


HAS_AMX = has_amx(resolve_target("x86"))


@pytest.mark.parametrize(
    "a_shape,n,a_dtype,kernel",
    [
        ((4, 64), 48, np.uint8, "VNNI"),
        ((2, 5, 64), 40, np.uint8, "VNNI"),
        ((3, 128), 16, np.int8, "VNNI"),
        # shapes that fill AMX tiles (M % 32, K % 64) take the tile kernel; N is padded to 32
        ((64, 128), 48, np.uint8, "AMX"),
        ((2, 16, 192), 80, np.int8, "AMX"),
    ],
)
def test_matmul_integer_equals_ort_bit_for_bit(a_shape, n, a_dtype, kernel):
    if kernel == "AMX" and not HAS_AMX:
        pytest.skip(host_lacks("amx_tile", "amx_int8") or "the x86 target has no AMX-INT8")
    model = _matmul_integer_model(a_shape, n, a_dtype)
    rng = np.random.default_rng(1)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, a_shape).astype(a_dtype)
    compiled = compile_model(model, "x86", int8="on", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["lowered"] == 1 and report["nodes"][0]["kernel"] == f"{kernel} kernel", report["nodes"]
    assert (report["amx_tile_products"] >= 4) if kernel == "AMX" else (report["zmm_vpdpbusd"] > 0 and report["amx_tile_products"] == 0)
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def _shipped_int8_instructions(compiled) -> int:
    """Integer dot products in the library that ships: what the guard's decision really built."""
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    return zmm_vpdpbusd_count(asm) + amx_dot_product_count(asm)


def test_guard_times_both_kernels_and_what_it_reports_is_what_ships():
    model = _matmul_integer_model((64, 256), 256)
    lines = []
    compiled = compile_model(model, "x86", int8="on", progress=lines.append)
    report = compiled.meta["build"]["int8"]
    (node,) = report["nodes"]
    assert node["int8_ms"] > 0 and node["fp32_ms"] > 0
    # the long steps say what they are doing (the CLI shows these lines)
    assert lines[0].startswith("int8 guard: 1 layer shape(s) of the 1 integer layers") and (report["lowered"] == 0 or "whole int8 build" in lines[-1]), lines
    # the report's verdict (layer and whole model) matches the instructions in the shipped library
    assert (report["lowered"] == 1) == (_shipped_int8_instructions(compiled) > 0), report
    a = np.random.default_rng(2).integers(0, 256, (64, 256)).astype(np.uint8)
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


@pytest.mark.parametrize("int8_ms,fp32_ms", [(2.0, 1.0), (1.0, 1.0), (0.5, 1.0)])
def test_the_guard_follows_its_measurements(monkeypatch, int8_ms, fp32_ms):
    """Measurements injected: a layer whose int8 kernel is not faster is computed in float (no
    integer instructions ship), a faster one on its kernel; the integers are ORT's either way."""
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *args, **kw: [(int8_ms, fp32_ms)] * len(pairs))
    model = _matmul_integer_model((8, 64), 32)
    compiled = compile_model(model, "x86", int8="on")
    report = compiled.meta["build"]["int8"]
    faster = int8_ms < fp32_ms
    assert (report["nodes"][0]["int8_ms"], report["nodes"][0]["fp32_ms"]) == (int8_ms, fp32_ms)
    if faster:
        assert report["nodes"][0]["lowered"] and "kept in fp32" not in report["nodes"][0]["reason"]
    else:
        assert report["lowered"] == 0 and report["kept_fp32"] == 1 and "kept in fp32" in report["nodes"][0]["reason"]
        assert _shipped_int8_instructions(compiled) == 0
    a = np.random.default_rng(3).integers(0, 256, (8, 64)).astype(np.uint8)
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def test_a_layer_kept_in_fp32_feeds_its_float_consumer_without_the_int32_round_trip(monkeypatch):
    """MatMulInteger -> Cast(float) -> Mul, the layer kept in float: the rounded float product
    feeds the Mul directly (no Cast to int32 and back: TVM's float->int32 cast handles NaN, inf
    and wrap-around, 0.09 ms on the digits CNN's first layer), with ONNX Runtime's values."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (64, 24), dtype=np.int8)
    proto = make_model(
        [helper.make_node("MatMulInteger", ["a", "W", "za"], ["acc"], name="mmi"), helper.make_node("Cast", ["acc"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["f", "s"], ["y"])],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [6, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 24])],
        [tensor("W", w), tensor("za", np.array(3, dtype=np.uint8)), tensor("s", np.array(0.0125, dtype=np.float32))],
    )  # fmt: skip
    model = gp.load(proto)
    direct = gp.load(proto)
    (node,) = [n for n in direct.graph if n.op_type == "MatMulInteger"]
    guard.to_float(direct.graph, node, w)
    ops = [(n.op_type, n.attributes.get_int("to", 0)) for n in direct.graph]
    assert ("Cast", int(ir.DataType.INT32)) not in ops and ("Cast", int(ir.DataType.FLOAT)) in ops  # only the activation's Cast stays
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *args, **kw: [(2.0, 1.0)] * len(pairs))  # int8 slower: kept in float
    compiled = compile_model(model, "x86", int8="on")
    assert compiled.meta["build"]["int8"]["kept_fp32"] == 1
    a = rng.integers(0, 256, (6, 64)).astype(np.uint8)
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])  # products below 2**24: exact in float


def _digits_mlp_qdq():
    from graphpress.models.cnn import digits_data, fit

    data = digits_data()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    fit(module, data, epochs=3)
    model = gp.load(module.eval(), torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    context = PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(32)])
    PassManager(build_passes("cleanup,fuse,quantize:mode=static"), context=context).run(model)
    return model, data, name


def _output_scale(model: ir.Model) -> float:
    dq = model.graph.outputs[0].producer()
    assert dq.op_type == "DequantizeLinear"
    return float(dq.inputs[1].const_value.numpy())


def test_static_qdq_mlp_agrees_with_ort_within_one_lsb():
    model, data, name = _digits_mlp_qdq()
    # the ONNX-level rewrite alone, checked in ORT
    rewritten = ir.serde.deserialize_model(to_proto(model))
    stats = qdq_to_integer(rewritten)
    assert len(stats["rewritten"]) == 2
    assert [n.op_type for n in rewritten.graph].count("MatMulInteger") == 2
    scale = _output_scale(model)
    x = data.x_test[:1]
    want = _ort(model, {name: x})[0]
    np.testing.assert_allclose(_ort(rewritten, {name: x})[0], want, atol=1.01 * scale, rtol=0)

    compiled = compile_model(model, "x86", int8="on", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["qdq_rewritten"] == 2 and report["lowered"] == 2 and report["zmm_vpdpbusd"] > 0
    lsb = []
    for i in range(64):
        x = data.x_test[i : i + 1]
        got = compiled.run_named(**{name: x})
        lsb.append(np.abs(next(iter(got.values())) - _ort(model, {name: x})[0]) / scale)
    lsb = np.concatenate(lsb).ravel()
    assert lsb.max() <= 1.01  # at most one step of the output scale
    assert (lsb < 0.01).mean() >= 0.95  # and almost always the same value


def test_a_quantized_model_the_guard_ships_in_fp32_is_checked_against_its_fp32_counterpart(monkeypatch):
    """When the whole-model guard finds the fp32 build faster (the analytic fp32 schedules can
    be), the shipped code drops the activations' Quantize/Dequantize pairs: it computes the
    model's fp32 counterpart, and is checked against ONNX Runtime running that counterpart by
    the backend's tolerance (on a deep network the dropped pairs move the outputs by far more
    than one step of the QDQ model's output; here, a shallow MLP, by at most about one)."""
    from graphpress.backends.tvm import build as build_module

    model, data, name = _digits_mlp_qdq()
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *args, **kw: [(0.5, 1.0)] * len(pairs))  # each layer: int8 faster
    # the whole model, the int8 build and the fp32 build timed side by side: fp32 faster
    monkeypatch.setattr(build_module, "_side_by_side", lambda builds, inputs: {key: 1.0 if key == "fp32" else 2.0 for key in builds})
    samples = [{name: data.x_test[i : i + 1]} for i in range(8)]
    compiled = compile_model(model, "x86", samples=samples)
    report = compiled.meta["build"]
    assert report["int8"]["model_guard"]["chosen"] == "fp32" and report["int8"]["lowered"] == 0 and report["int8"]["kept_fp32"] == 2
    check = report["check_vs_onnxruntime"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and "fp32 counterpart" in check["against"]
    steps = [np.abs(compiled(x)[0] - _ort(model, {name: x})[0]).max() / _output_scale(model) for x in (data.x_test[i : i + 1] for i in range(8))]
    assert max(steps) <= 1.5  # against the QDQ model itself: about one step of its output


def test_the_whole_model_guard_decides_the_layer_guards_close_calls(monkeypatch):
    """The layer guard keeps the second layer in fp32 by a close call (its int8 kernel 1.2x
    slower alone; timings injected); the whole model built with that layer on its integer kernel
    too is then timed beside the guard's mix and the fp32 build, and ships when it is the fastest
    (injected): every layer lowered, the report says why, and the code computes the QDQ model
    (within one step of its output in ONNX Runtime). A layer kept by more (2x) gets no such
    build."""
    from graphpress.backends.tvm import build as build_module

    model, data, name = _digits_mlp_qdq()
    timings = iter([(0.5, 1.0), (1.2, 1.0)])  # the second layer kept by a close call
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *a, **k: [next(timings) for _ in pairs])
    timed = []

    def side_by_side(builds, inputs):
        if "fp32" in builds:  # the whole-model guard (not fast math against libm)
            timed.append(sorted(builds))
        return {key: 1.0 if key == "close_calls_int8" else 2.0 for key in builds}

    monkeypatch.setattr(build_module, "_side_by_side", side_by_side)
    samples = [{name: data.x_test[i : i + 1]} for i in range(8)]
    compiled = compile_model(model, "x86", samples=samples, measure=False)
    i8 = compiled.meta["build"]["int8"]
    assert timed == [["close_calls_int8", "fp32", "int8"]]
    assert i8["model_guard"]["chosen"] == "close_calls_int8" and i8["lowered"] == 2 and i8["kept_fp32"] == 0, i8
    assert [n["lowered"] for n in i8["nodes"]] == [True, True] and "lowered all the same" in i8["nodes"][1]["reason"]
    assert sum(i8["instructions"].values()) > 0  # counted in the library that ships
    check = compiled.meta["build"]["check_vs_onnxruntime"]
    assert check["passed"] and check["against"] == "the model"
    scale = _output_scale(model)
    steps = [np.abs(compiled(s[name])[0] - _ort(model, s)[0]).max() / scale for s in samples]
    assert max(steps) <= 1.01
    timings, timed[:] = iter([(0.5, 1.0), (2.0, 1.0)]), []
    compiled = compile_model(model, "x86", samples=samples, measure=False)
    assert timed == [["fp32", "int8"]] and compiled.meta["build"]["int8"]["lowered"] == 1

def test_int8_option_errors():
    model = _matmul_integer_model((4, 64), 48)
    with pytest.raises(GraphpressError, match="int8 must be"):
        compile_model(model, "x86", int8="maybe")
    with pytest.raises(GraphpressError, match="VNNI"):  # aarch64 int8: tests/backends/test_tvm_int8_arm.py
        compile_model(model, "cuda", int8="on")
    # off: the importer's own (int32) lowering, same integers, no VNNI report
    compiled = compile_model(model, "x86", int8="off")
    assert "int8" not in compiled.meta["build"]
    a = np.random.default_rng(4).integers(0, 256, (4, 64)).astype(np.uint8)
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def test_qdq_cnn_convs_and_gemms_run_on_vnni(digits_cnn):
    """The digits CNN quantized static: its convs (im2col + the integer dense) and Gemms get integer
    kernels where the guard measured them faster (which ones depends on this machine's load), and
    the outputs, with every layer on its integer kernel too, stay within one step of the output
    scale of ONNX Runtime running the same QDQ model."""
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    PassManager(build_passes("cleanup,fuse")).run(model)
    context = PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(32)])
    PassManager(build_passes("quantize:mode=static"), context=context).run(model)
    guarded = compile_model(model, "x86")
    report = guarded.meta["build"]["int8"]
    assert report["qdq_rewritten"] == 5  # 3 convs + 2 Gemms
    assert len(report["nodes"]) == 5
    assert all(node["int8_ms"] > 0 and node["fp32_ms"] > 0 for node in report["nodes"])
    assert (report["lowered"] > 0) == (_shipped_int8_instructions(guarded) > 0), report
    everything = compile_model(model, "x86", int8_guard=False)
    assert everything.meta["build"]["int8"]["lowered"] == 5
    scale = _output_scale(model)
    for compiled in (guarded, everything):
        lsb = []
        for i in range(32):
            x = data.x_test[i : i + 1]
            got = next(iter(compiled.run_named(**{name: x}).values()))
            lsb.append(np.abs(got - _ort(model, {name: x})[0]).ravel() / scale)
        lsb = np.concatenate(lsb)
        assert lsb.max() <= 1.01 and (lsb < 0.01).mean() >= 0.8, (lsb.max(), (lsb < 0.01).mean())


def _conv_reference(x, w, zx, pads, strides, dilations=(1, 1)):
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = w.shape[2:]
    (dh, dw), (sh, sw) = dilations, strides
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    want = np.zeros((1, w.shape[0], oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[0, :, sh * i : sh * i + dh * (kh - 1) + 1 : dh, sw * j : sw * j + dw * (kw - 1) + 1 : dw]
            want[0, :, i, j] = (w.astype(np.int64) * patch).sum(axis=(1, 2, 3))
    return want


@pytest.mark.parametrize(
    "x_shape,w_shape,pads,strides,dilations,kernel,how",
    [
        # 5 channels: AMX would pad K 13x
        ((1, 5, 9, 11), (20, 5, 3, 3), [1, 0, 1, 2], [2, 1], [1, 1], "VNNI", "VNNI kernel, unfolded in place"),
        # 49 pixels: rows padded to 52 repeat the last one; dilated 3x3
        ((1, 16, 9, 9), (32, 16, 3, 3), [1, 1, 1, 1], [1, 1], [2, 2], "VNNI", "VNNI kernel, unfolded in place"),
        # a stem: 7x7/2, 3 channels padded to 4
        ((1, 3, 19, 17), (16, 3, 7, 7), [3, 3, 3, 3], [2, 2], [1, 1], "VNNI", "VNNI kernel, unfolded in place"),
        # a strided 1x1 reads every other pixel in place
        ((1, 32, 7, 7), (16, 32, 1, 1), [0, 0, 0, 0], [2, 2], [1, 1], "VNNI", "VNNI kernel, unfolded in place"),
        ((1, 64, 9, 7), (40, 64, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], "AMX", "im2col + AMX kernel"),  # 63 pixels: rows padded to 64
        ((1, 48, 8, 8), (24, 48, 1, 1), [0, 0, 0, 0], [1, 1], [1, 1], "AMX", "AMX kernel (pointwise)"),  # K padded 48 -> 64; 64 pixels, whole tiles
        ((1, 64, 7, 7), (32, 64, 1, 1), [0, 0, 0, 0], [2, 2], [1, 1], "AMX", "im2col + AMX kernel"),  # strided pointwise
    ],
)
def test_conv_integer_equals_a_reference_bit_for_bit(x_shape, w_shape, pads, strides, dilations, kernel, how):
    """ConvInteger with padding, stride, dilation and a zero point: the VNNI kernel reading the
    padded input in place, and the im2col + AMX path, against numpy."""
    if kernel == "AMX" and not HAS_AMX:
        pytest.skip(host_lacks("amx_tile", "amx_int8") or "the x86 target has no AMX-INT8")
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, x_shape, dtype=np.uint8)
    w = rng.integers(-128, 128, w_shape, dtype=np.int8)
    zx = 17
    proto = make_model(
        [helper.make_node("ConvInteger", ["x", "W", "zx"], ["y"], pads=pads, strides=strides, dilations=dilations, name="ci")],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [tensor("W", w), tensor("zx", np.array(zx, np.uint8))],
    )
    model = gp.load(proto)
    # the VNNI cases on the VNNI path itself: on an AMX host, the host's path gives AMX's tiles the shapes that fill them
    compiled = compile_model(model, "x86:avx512_vnni" if kernel == "VNNI" else "x86", int8="on", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["lowered"] == 1 and report["nodes"][0]["kernel"] == how, report["nodes"]
    assert (report["amx_tile_products"] > 0) == (kernel == "AMX")
    np.testing.assert_array_equal(compiled.run_named(x=x)["y"], _conv_reference(x, w, zx, pads, strides, dilations))


@pytest.mark.parametrize("nhwc", [True, False])
def test_two_integer_convolutions_run_in_nhwc_without_a_transpose_between(monkeypatch, nhwc):
    """ConvInteger -> requantize -> ConvInteger: the requantization runs in NHWC between the two
    integer kernels (no transposing kernel but the model's own NCHW input and output), and the
    result equals numpy's, computed in NCHW, bit for bit. The scale is a power of two, so the
    float requantization is exact on both sides. A build that stays NCHW (``nhwc=False``, as
    when the conversion fails) transposes around each dense kernel, with the same result."""
    import functools

    from graphpress.backends.tvm import build as build_module
    from graphpress.backends.tvm.tuning import Tuning

    monkeypatch.setattr(build_module, "Tuning", functools.partial(Tuning, nhwc=nhwc))
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (1, 16, 8, 8), dtype=np.uint8)
    w1 = rng.integers(-128, 128, (32, 16, 3, 3), dtype=np.int8)
    w2 = rng.integers(-128, 128, (24, 32, 3, 3), dtype=np.int8)
    scale, zp1, zp2 = 2.0**-10, 5, 3
    proto = make_model(
        [
            helper.make_node("ConvInteger", ["x", "W1", "z1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
            helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["af", "s"], ["am"]),
            helper.make_node("Relu", ["am"], ["ar"]),
            helper.make_node("QuantizeLinear", ["ar", "one", "z2"], ["q"]),
            helper.make_node("ConvInteger", ["q", "W2", "z2"], ["y"], pads=[0, 1, 2, 1], strides=[1, 2], name="c2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [tensor("W1", w1), tensor("W2", w2), tensor("z1", np.array(zp1, np.uint8)), tensor("z2", np.array(zp2, np.uint8)),
         tensor("s", np.array(scale, np.float32)), tensor("one", np.array(1.0, np.float32))],
    )  # fmt: skip
    compiled = compile_model(gp.load(proto), "x86", int8="on", int8_guard=False)
    build = compiled.meta["build"]
    assert build.get("conv_layout", "NCHW") == ("NHWC" if nhwc else "NCHW") and build["int8"]["lowered"] == 2
    kernels = build["kernel_names"]
    if nhwc:
        assert not any("to_nchw" in k for k in kernels), kernels
        assert sum("transpose" in k for k in kernels) == 2, kernels  # the model's NCHW input and output only
    else:
        assert sum("to_nchw" in k for k in kernels) == 2, kernels
    a = _conv_reference(x, w1, zp1, [1, 1, 1, 1], [1, 1])
    q = np.clip(np.rint(np.maximum(a.astype(np.float32) * np.float32(scale), 0)) + zp2, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(compiled.run_named(x=x)["y"], _conv_reference(q, w2, zp2, [0, 1, 2, 1], [1, 2]))


def test_transposes_move_below_quantize_and_cancel():
    """``layout.sink_permutes``: permute -> quantize -> inverse permute is one quantize on the
    original layout, its channel axis moved with the data."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.layout import sink_permutes

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            q = bb.emit(relax.op.quantize(t, relax.const(np.full(8, 0.5, np.float32)), relax.const(np.zeros(8, np.int8)), axis=1, out_dtype="int8"))
            out = bb.emit_output(relax.op.permute_dims(q, [0, 2, 3, 1]))
        bb.emit_func_output(out)
    mod = tvm.transform.Sequential([sink_permutes(), relax.transform.DeadCodeElimination()])(bb.get())
    calls = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert calls == ["relax.quantize"], mod["main"]
    quantize = next(b.value for b in mod["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call))
    assert int(quantize.attrs.axis) == 3 and quantize.args[0].same_as(mod["main"].params[0])


def test_constants_transposed_or_reshaped_are_folded_in_numpy():
    """``layout.fold_constants``: a constant bound to a variable and transposed (the bias
    ConvertLayout moves to NHWC) and a constant reshaped to a static shape (the importer's
    broadcast bias) become constants with numpy's values, so ``FoldConstant`` builds no kernel
    for them; a reshape of the data stays."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.layout import fold_constants

    rng = np.random.default_rng(0)
    bias, weight = rng.standard_normal((1, 8, 1, 1)).astype(np.float32), rng.standard_normal((8,)).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            b = bb.emit(relax.const(bias))
            t = bb.emit(relax.op.permute_dims(b, [0, 2, 3, 1]))
            r = bb.emit(relax.op.reshape(relax.const(weight), (1, 1, 1, 8)))
            y = bb.emit(relax.op.reshape(x, (1, 16, 8)))
            out = bb.emit_output(relax.op.add(relax.op.add(relax.op.reshape(y, (1, 4, 4, 8)), t), r))
        bb.emit_func_output(out)
    mod = tvm.transform.Sequential([fold_constants(), relax.transform.DeadCodeElimination()])(bb.get())
    calls, consts = [], []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    relax.analysis.post_order_visit(mod["main"].body, lambda e: consts.append(e.value.numpy()) if isinstance(e, tvm.ir.GenericConst) else None)
    assert "relax.permute_dims" not in calls and calls.count("relax.reshape") == 2, calls  # the data's two reshapes
    assert len(consts) == 2
    np.testing.assert_array_equal(consts[0], bias.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(consts[1], weight.reshape(1, 1, 1, 8))
    # and the function computes what it did
    dev = tvm.cpu()
    xs = rng.standard_normal((1, 4, 4, 8)).astype(np.float32)
    got = relax.VirtualMachine(tvm.compile(mod, target="llvm"), dev)["main"](tvm.runtime.tensor(xs, dev)).numpy()
    np.testing.assert_allclose(got, xs + bias.transpose(0, 2, 3, 1) + weight.reshape(1, 1, 1, 8), rtol=1e-6)


def test_a_batch_norms_constant_statistics_are_folded_in_numpy():
    """A ``BatchNormalization`` left after a quantized convolution (its weights are not float
    constants, so it cannot fold into them) is decomposed by TVM into ``expand_dims``, ``add``
    and ``sqrt`` of its statistics: ``fold_constants`` computes those in numpy (TVM's
    ``FoldConstant`` built a kernel for each, 704 for PP-OCR's classifier), leaving only the ops
    on the data; the function computes what the unfolded one does (TVM), and the batch norm's
    formula (numpy). An integer division and a float-to-int cast of constants stay calls."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.layout import fold_constants

    rng = np.random.default_rng(1)
    gamma, beta, mean = (rng.standard_normal(8).astype(np.float32) for _ in range(3))
    var = rng.random(8).astype(np.float32) + 0.5
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bn = bb.emit(relax.op.nn.batch_norm(x, *(relax.const(a) for a in (gamma, beta, mean, var)), axis=1, epsilon=1e-5)[0])
            q = bb.emit(relax.op.astype(relax.op.divide(relax.const(np.array([7, 9], np.int32)), relax.const(np.array([2, 4], np.int32))), "float32"))
            c = bb.emit(relax.op.astype(relax.const(np.array([1.5], np.float32)), "int32"))
            out = bb.emit_output(relax.op.add(relax.op.add(bn, relax.op.sum(q)), relax.op.astype(c, "float32")))
        bb.emit_func_output(out)
    decomposed = relax.transform.DecomposeOpsForInference()(bb.get())
    mod = tvm.transform.Sequential([fold_constants(), relax.transform.DeadCodeElimination()])(decomposed)
    calls = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.expand_dims" not in calls and "relax.sqrt" not in calls, calls
    assert "relax.divide" in calls and calls.count("relax.astype") == 3, calls  # the integer division and the cast to int32 stay
    dev = tvm.cpu()
    xs = rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
    run = lambda m: relax.VirtualMachine(tvm.compile(m, target="llvm"), dev)["main"](tvm.runtime.tensor(xs, dev)).numpy()  # noqa: E731
    got = run(mod)
    np.testing.assert_array_equal(got, run(decomposed))
    c4 = lambda a: a.reshape(1, 8, 1, 1)  # noqa: E731
    want = (xs - c4(mean)) / np.sqrt(c4(var) + np.float32(1e-5)) * c4(gamma) + c4(beta)
    np.testing.assert_allclose(got, want + (7 // 2 + 9 // 4) + 1, rtol=1e-5, atol=1e-5)  # and the sum of the quotients, the int of 1.5


def test_an_integer_branch_fused_into_an_fp32_convolutions_epilogue_is_computed_once(monkeypatch):
    """Two ConvIntegers of one input, added: the guard keeps one in fp32 (measurements
    injected); the addition joins them inside one convolution's kernel (the integer one's, whose
    write-back is fused, or the fp32 one's), where the other branch's blocks do not read the
    product: they are inlined into the addition (recomputed whole in every tile, they raced:
    ResNet-18 int8 with a downsample kept in fp32 was wrong by 4-7 and 28 ms slow). Against ONNX
    Runtime, within one output step."""
    from graphpress.backends.tvm import build as build_module

    timings = iter([(0.5, 1.0), (2.0, 1.0)])
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *a, **k: [next(timings) for _ in pairs])
    # the whole model: the layer guard's mix fastest (not every layer in int8, not fp32)
    monkeypatch.setattr(build_module, "_side_by_side", lambda builds, inputs: {key: 1.0 if key == "int8" else 2.0 for key in builds})
    rng = np.random.default_rng(5)
    w1, w2 = rng.integers(-128, 128, (64, 32, 3, 3), dtype=np.int8), rng.integers(-128, 128, (64, 32, 1, 1), dtype=np.int8)
    proto = make_model(
        [
            helper.make_node("ConvInteger", ["x", "W1", "z"], ["a"], pads=[1, 1, 1, 1], name="int8_conv"),
            helper.make_node("ConvInteger", ["x", "W2", "z"], ["b"], name="fp32_conv"),  # a 1x1 downsample's shape
            helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["af", "s"], ["as"]),
            helper.make_node("Add", ["as", "bf"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 32, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 14, 14])],
        [tensor("W1", w1), tensor("W2", w2), tensor("z", np.array(0, np.uint8)), tensor("s", np.array(0.5, np.float32))],
    )
    model = gp.load(proto)
    compiled = compile_model(model, "x86", int8="on", verify=False, measure=False)
    build = compiled.meta["build"]
    assert [n["lowered"] for n in build["int8"]["nodes"]] == [True, False] and build["int8"]["model_guard"]["chosen"] == "int8", build["int8"]
    # counted while the fp32 build was made (the int8 build ships): the library's own instructions
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    assert build["int8"]["instructions"] == {c.label: c.count(asm) for c in select_isa(resolve_target("x86"), "on").counters}, build["int8"]
    assert sum(build["int8"]["instructions"].values()) > 0
    joined = [k for k in build["kernel_names"] if ("conv2d" in k or "_vnni_conv_" in k) and "add" in k]
    assert joined, build["kernel_names"]  # the branches join in a convolution's kernel
    x = rng.integers(0, 256, (1, 32, 14, 14)).astype(np.uint8)
    want = _ort(model, {"x": x})[0]
    for _ in range(3):  # the race did not show every time
        np.testing.assert_allclose(compiled.run_named(x=x)["y"], want, rtol=0, atol=1.0)


def test_an_activation_pair_before_a_float_layer_keeps_its_calibrated_clip():
    """QuantizeLinear -> DequantizeLinear in front of a float layer (Softmax): the pair is
    dropped for speed, but its range, [0, 1] here, still clips (a model calibrated on a narrow
    range computed something else without it: static-QDQ MiniLM, cosine 0.31 to the model given).
    Inputs well outside the range; against ONNX Runtime on the QDQ model, within the rounding."""
    proto = make_model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
            helper.make_node("Softmax", ["d"], ["y"], axis=-1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [tensor("s", np.array(1 / 255, np.float32)), tensor("z", np.array(0, np.uint8))],
    )
    model = gp.load(proto)
    x = (np.random.default_rng(4).standard_normal((4, 16)) * 3).astype(np.float32)
    compiled = compile_model(model, "x86", samples={"x": x}, measure=False)
    assert compiled.meta["build"]["int8"]["fp32_bypassed_qdq"] == 1
    np.testing.assert_allclose(compiled.run_named(x=x)["y"], _ort(model, {"x": x})[0], atol=5e-3)


def _amx_and_fallback_model() -> tuple[ir.Model, dict[str, np.ndarray]]:
    """Three layers AMX's tiles take: a 3x3 convolution with a zero point and padding (63
    pixels), a 1x1 one of the same input, a 64x128x48 MatMulInteger; and inputs at the extremes."""
    rng = np.random.default_rng(11)
    w3 = rng.choice(np.array([-128, 127, -1, 0], np.int8), (40, 64, 3, 3))
    w1 = rng.integers(-128, 128, (24, 64, 1, 1), dtype=np.int8)
    wm = rng.integers(-128, 128, (128, 48), dtype=np.int8)
    proto = make_model(
        [helper.make_node("ConvInteger", ["x", "W3", "zx"], ["y3"], pads=[1, 1, 1, 1], name="conv3x3"),
         helper.make_node("ConvInteger", ["x", "W1", "zx"], ["y1"], name="conv1x1"),
         helper.make_node("MatMulInteger", ["a", "Wm", "za"], ["ym"], name="matmul")],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 64, 9, 7]), helper.make_tensor_value_info("a", TensorProto.UINT8, [64, 128])],
        [helper.make_tensor_value_info(n, TensorProto.INT32, None) for n in ("y3", "y1", "ym")],
        [tensor("W3", w3), tensor("W1", w1), tensor("Wm", wm), tensor("zx", np.array(17, np.uint8)), tensor("za", np.array(5, np.uint8))],
    )  # fmt: skip
    feeds = {"x": rng.choice(np.array([0, 255, 254, 1], np.uint8), (1, 64, 9, 7)), "a": rng.integers(0, 256, (64, 128)).astype(np.uint8)}
    return gp.load(proto), feeds


def test_a_layer_the_guard_times_faster_on_the_tile_isas_fallback_is_built_there():
    """AMX's per-layer choice, as the build carries it: the layers named for the fallback (the
    3x3 convolution, whose zero point moves its padding into a pad op of its own, and the
    MatMulInteger) are built on VNNI's kernels, the 1x1 convolution on AMX's; the report lists
    the fallback's convolution shapes. Built for ``x86:amx`` on any host, nothing run."""
    import tvm

    from graphpress.backends.tvm.int8 import int8_converters, lower_int8_convs, plan
    from graphpress.backends.tvm.int8.isa import AMX
    from graphpress.backends.tvm.lower import bind_input_shapes, to_relax
    from graphpress.backends.tvm.tuning import Tuning

    model, _ = _amx_and_fallback_model()
    spec = resolve_target("x86:amx")
    report = plan(model, spec, AMX, Tuning(), guard=False, only=frozenset({"conv3x3", "conv1x1", "matmul"}), fallback=frozenset({"conv3x3", "matmul"}))
    kernels = {n["node"]: (n["kernel"], n["isa"]) for n in report["nodes"]}
    assert kernels == {"conv3x3": ("VNNI kernel, unfolded in place", "vnni"), "conv1x1": ("im2col + AMX kernel", "amx"), "matmul": ("VNNI kernel", "vnni")}, kernels
    assert report["fallback_convs"] == [[1, 64, 11, 9, 40, 64, 3, 3, 0, 0, 0, 0, 1, 1, 1, 1]], report["fallback_convs"]  # the padded input, no padding left
    with int8_converters(AMX):
        mod = to_relax(model, bind_input_shapes(model))
    with spec.tvm_target():
        mod = lower_int8_convs(AMX, report["fallback_convs"])(mod)
    names = sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and ("_dense_" in gv.name_hint or "_conv_" in gv.name_hint))
    assert [n.split("_")[1] for n in names] == ["amx", "vnni", "vnni"], names


def test_on_an_amx_host_each_layer_runs_on_the_kernel_its_guard_timed_faster(monkeypatch):
    """Measurements injected (the fallback faster for the 3x3 convolution and the MatMulInteger,
    AMX for the 1x1 convolution; the whole model fastest so): both instruction sets ship, each layer's report names its
    kernel, and every output is bit for bit numpy's (convolutions) and ONNX Runtime's."""
    if not HAS_AMX:
        pytest.skip(host_lacks("amx_tile", "amx_int8") or "the x86 target has no AMX-INT8")
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, spec, tuning, repeat, isa, fallback: [
        (1.0, 3.0, 0.5 if i != 1 else 2.0) for i in range(len(pairs))])  # fmt: skip
    from graphpress.backends.tvm import build

    monkeypatch.setattr(build, "_side_by_side", lambda builds, inputs: {key: 0.5 if key == "int8" else 1.0 for key in builds})  # the layer guard's mix ships
    model, feeds = _amx_and_fallback_model()
    compiled = compile_model(model, "x86", int8="on")
    report = compiled.meta["build"]["int8"]
    assert report["isa"] == "amx" and report["lowered"] == 3, report
    assert {n["node"]: n["isa"] for n in report["nodes"]} == {"conv3x3": "vnni", "conv1x1": "amx", "matmul": "vnni"}, report["nodes"]
    assert report["instructions"]["AMX tile products"] > 0 and report["instructions"]["zmm vpdpbusd"] > 0, report["instructions"]
    out = compiled.run_named(**feeds)
    w3, w1 = (next(v for v in model.graph.initializers.values() if v.name == n).const_value.numpy() for n in ("W3", "W1"))
    np.testing.assert_array_equal(out["y3"], _conv_reference(feeds["x"], w3, 17, [1, 1, 1, 1], [1, 1]))
    np.testing.assert_array_equal(out["y1"], _conv_reference(feeds["x"], w1, 17, [0, 0, 0, 0], [1, 1]))
    np.testing.assert_array_equal(out["ym"], _ort(model, feeds)[2])


def test_on_an_amx_host_the_whole_model_guard_times_every_layer_on_the_tiles_too(monkeypatch):
    """Where the layer guard put layers on the fallback, the build with all of them on AMX's tiles
    is one of the whole-model guard's candidates; measurements injected (it is the fastest): it
    ships, and the report says so layer by layer. Its outputs are numpy's and ONNX Runtime's."""
    if not HAS_AMX:
        pytest.skip(host_lacks("amx_tile", "amx_int8") or "the x86 target has no AMX-INT8")
    from graphpress.backends.tvm import build

    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, spec, tuning, repeat, isa, fallback: [(1.0, 3.0, 0.5)] * len(pairs))
    monkeypatch.setattr(build, "_side_by_side", lambda builds, inputs: {key: 0.5 if key == "tiles_int8" else 1.0 for key in builds})
    model, feeds = _amx_and_fallback_model()
    compiled = compile_model(model, "x86", int8="on")
    report = compiled.meta["build"]["int8"]
    assert report["model_guard"]["chosen"] == "tiles_int8" and report["fallback_convs"] == [], report["model_guard"]
    assert {n["node"]: n["isa"] for n in report["nodes"]} == {"conv3x3": "amx", "conv1x1": "amx", "matmul": "amx"}, report["nodes"]
    assert all("AMX" in n["kernel"] for n in report["nodes"]) and report["instructions"]["AMX tile products"] > 0, report
    out = compiled.run_named(**feeds)
    w3 = next(v for v in model.graph.initializers.values() if v.name == "W3").const_value.numpy()
    np.testing.assert_array_equal(out["y3"], _conv_reference(feeds["x"], w3, 17, [1, 1, 1, 1], [1, 1]))
    np.testing.assert_array_equal(out["ym"], _ort(model, feeds)[2])
