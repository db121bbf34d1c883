"""Every x86 int8 path this host runs, selected by target (``x86:avx512_vnni``, ``x86:avx2_vnni``,
``x86:avx2``): the integer kernels are exact against ONNX Runtime and a numpy convolution, the
path's own instructions are in the code that ships, and a quantized CNN agrees with ONNX Runtime
within one output step on each path. A path the host cannot run is skipped with the flags it
lacks (its kernels are still compiled in ``test_tvm_int8.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm.int8.isa import AMX, AVX2, AVX_VNNI, VNNI, select_isa
from graphpress.backends.tvm.targets import X86_PATHS, host_x86_paths, resolve_target
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from tests.backends.test_tvm_quantized import _conv_reference, _matmul_integer_model, _ort, _output_scale
from tests.conftest import host_lacks, make_model, tensor

#: path -> the ISA its int8 build takes, and the report key of that ISA's instruction
PATHS = {"avx512_vnni": (VNNI, "zmm vpdpbusd"), "avx2_vnni": (AVX_VNNI, "ymm vpdpbusd"), "avx2": (AVX2, "ymm vpmaddwd")}


def _skip_unless_host_runs(path: str) -> None:
    if path not in host_x86_paths():
        pytest.skip(host_lacks(*sorted(X86_PATHS[path][1])) or f"this host does not run {path}")


def test_each_path_selects_its_own_isa():
    """The path names resolve to their LLVM CPUs, and int8=auto takes the path's ISA (the best
    one the target declares, never the host's best)."""
    for path, (isa, _) in PATHS.items():
        spec = resolve_target(f"x86:{path}")
        assert spec.config["mcpu"] == X86_PATHS[path][0]
        if path in host_x86_paths():
            assert select_isa(spec, "auto") is isa
    if "avx2" in host_x86_paths():  # AVX-512 without VNNI has no int8 dot product: AVX2's kernel
        assert select_isa(resolve_target("x86:avx512"), "auto") in (AVX2, None)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("a_shape,n,a_dtype", [((4, 64), 48, np.uint8), ((2, 5, 64), 40, np.int8), ((6, 36), 17, np.uint8), ((7, 257), 20, np.int8), ((9, 64), 257, np.uint8)])
def test_matmul_integer_is_exact_on_every_path(path, a_shape, n, a_dtype):
    """MatMulInteger with an activation zero point, int8 activations moved by 128, K and N not
    multiples of the vector, K not even a multiple of 4 (zero weight rows pad it, and as many
    activation columns), N of 17 zmm vectors (computed as 18: :func:`padded_columns`): bit for bit
    ONNX Runtime's."""
    _skip_unless_host_runs(path)
    isa, counter = PATHS[path]
    model = _matmul_integer_model(a_shape, n, a_dtype)
    info = np.iinfo(a_dtype)
    a = np.random.default_rng(1).integers(info.min, info.max + 1, a_shape).astype(a_dtype)
    compiled = compile_model(model, f"x86:{path}", int8="on", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["isa"] == isa.name and report["lowered"] == 1, report
    assert report["instructions"][counter] > 0, report["instructions"]
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def test_a_prime_count_of_column_vectors_is_computed_one_vector_wider():
    """The micro-tile's column blocks divide the padded columns: 17 vectors (257 mel bins) would
    take one a tile; 18 take 3. AMX's tiles and counts with a divisor from 2 to 4 are kept.
    (Exactness with such columns: ``test_matmul_integer_is_exact_on_every_path``.)"""
    from graphpress.backends.tvm.int8.emit import padded_columns

    assert [padded_columns(n, VNNI) for n in (16, 64, 80, 257, 260, 112, 176)] == [16, 64, 96, 288, 288, 128, 192]
    assert padded_columns(257, AVX_VNNI) == 264  # 33 ymm vectors: 3 x 11
    assert padded_columns(257, AMX) == 288  # whole 32-column tiles, as before


def _exact_conv_integer(x, w, zx, pads, strides, target):
    """``ConvInteger(x, w, zx)`` compiled for ``target`` with every layer on its integer kernel:
    bit for bit a numpy convolution; returns the build's int8 report."""
    proto = make_model(
        [helper.make_node("ConvInteger", ["x", "W", "zx"], ["y"], pads=pads, strides=strides, name="ci")],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [tensor("W", w), tensor("zx", np.array(zx, np.uint8))],
    )
    compiled = compile_model(gp.load(proto), target, int8="on", int8_guard=False)
    np.testing.assert_array_equal(compiled.run_named(x=x)["y"], _conv_reference(x, w, zx, pads, strides))
    return compiled.meta["build"]["int8"]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("oc", [20, 16])
def test_conv_integer_is_exact_on_every_path(path, oc):
    """ConvInteger with asymmetric padding, stride 2 and a zero point (the extremes of both
    operands, where a saturating u8 x s8 pair sum would overflow int16): numpy's integers. 55
    output pixels (padded rows), 20 output channels (padded columns; AVX-VNNI's 4 x 3 tile) or 16
    (its 6 x 2)."""
    _skip_unless_host_runs(path)
    rng = np.random.default_rng(7)
    x = rng.choice(np.array([0, 255, 254, 1], np.uint8), (1, 6, 9, 11))
    w = rng.choice(np.array([-128, 127, -127, 0], np.int8), (oc, 6, 3, 3))
    zx, pads, strides = 3, [1, 0, 1, 2], [2, 1]
    report = _exact_conv_integer(x, w, zx, pads, strides, f"x86:{path}")
    assert report["lowered"] == 1 and report["nodes"][0]["kernel"] == f"{PATHS[path][0].label} kernel, unfolded in place", report["nodes"]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("oc", [22, 72])
def test_a_convolution_of_one_output_pixel_is_exact(path, oc):
    """A squeeze-and-excitation block's 1x1 convolution on a 1x1 map (88 -> 22 channels,
    PP-OCR's MobileNetV3; and 72 outputs, three column panels): one real output row padded to 4.
    In tiles of 2 rows, the tile of padding rows wrote the real row from its own C tile, read
    before the start of its local buffer; tiles of 4 rows now. 7-bit and 8-bit weights (on the
    AVX2 path, each its own kernel): bit for bit a numpy convolution."""
    _skip_unless_host_runs(path)
    rng = np.random.default_rng(1)
    for bound in (20, 127):
        x = rng.integers(0, 256, (1, 88, 1, 1), dtype=np.uint8)
        w = rng.integers(-bound, bound + 1, (oc, 88, 1, 1)).astype(np.int8)
        _exact_conv_integer(x, w, 3, [0, 0, 0, 0], [1, 1], f"x86:{path}")


@pytest.mark.parametrize("m", [1, 3, 4, 5, 12])
def test_a_product_of_few_rows_keeps_its_weight_in_bytes_on_avx2(m, monkeypatch):
    """On the AVX2 int16 kernel a product of at most one micro-tile of rows (a classifier at batch
    1) stores its 8-bit weight as int8 and widens each vector as it is loaded; more rows store it
    widened to int16. Both bit for bit ONNX Runtime's MatMulInteger."""
    _skip_unless_host_runs("avx2")
    from graphpress.backends.tvm.int8 import emit, kernels_x86

    stored = []
    real = emit.pack_weight

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        stored.append(str(out[0].dtype))
        return out

    monkeypatch.setattr(emit, "pack_weight", spy)
    model = _matmul_integer_model((m, 72), 40)
    a = np.random.default_rng(m).integers(0, 256, (m, 72)).astype(np.uint8)
    compiled = compile_model(model, "x86:avx2", int8="on", int8_guard=False, measure=False)
    assert compiled.meta["build"]["int8"]["instructions"]["ymm vpmaddwd"] > 0
    assert stored == ["int8" if m <= kernels_x86.BYTE_WEIGHT_ROWS else "int16"]
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def exact_on_this_many_threads(paths: list[str]) -> None:
    """The integer kernels of few-row convolutions and of dense layers of every kind of schedule
    (rows outermost with the write-back on the tiles, column panels over the cores), each bit for
    bit its numpy or ONNX Runtime reference, on every path in ``paths``: run in a process whose
    TVM has more than one thread (:func:`test_the_integer_kernels_are_exact_on_two_threads`)."""
    rng = np.random.default_rng(0)
    for path in paths:
        target = f"x86:{path}"
        for bound in (16, 127) if path == "avx2" else (127,):
            for (h, w), c, oc in [((1, 1), 88, 72), ((1, 2), 16, 24), ((1, 3), 88, 40), ((1, 5), 88, 22), ((7, 7), 64, 72)]:
                x = rng.integers(0, 256, (1, c, h, w), dtype=np.uint8)
                _exact_conv_integer(x, rng.integers(-bound, bound + 1, (oc, c, 1, 1)).astype(np.int8), 3, [0] * 4, [1, 1], target)
            for h, c, oc, stride in [(1, 16, 24, 1), (3, 32, 72, 2), (6, 64, 24, 1), (14, 32, 32, 2)]:
                x = rng.integers(0, 256, (1, c, h, h + 1), dtype=np.uint8)
                _exact_conv_integer(x, rng.integers(-bound, bound + 1, (oc, c, 3, 3)).astype(np.int8), 5, [1] * 4, [stride] * 2, target)
        for m, n, k in [(1, 48, 64), (3, 1536, 384), (33, 17, 36), (128, 384, 384), (7, 64, 257)]:
            model = _matmul_integer_model((m, k), n)
            a = rng.integers(0, 256, (m, k)).astype(np.uint8)
            compiled = compile_model(model, target, int8="on", int8_guard=False, measure=False)
            np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0], err_msg=f"{path} {m}x{n}x{k}")


def test_the_integer_kernels_are_exact_on_two_threads():
    """The test workers run TVM on one thread each; a schedule's parallel loops (each iteration a
    C tile of its own) only run over the cores in a process of more threads: this one, with two."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    paths = [p for p in PATHS if p in host_x86_paths()]
    if not paths:
        pytest.skip("this host runs none of the x86 int8 paths")
    code = f"from tests.backends.test_tvm_int8_paths import exact_on_this_many_threads; exact_on_this_many_threads({paths!r})"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"TVM_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_stem_convolution_reads_each_window_row_as_one_run_exactly(path):
    """ResNet's stem (7x7, stride 2, 3 channels): each window row's 7 taps are 21 contiguous bytes
    of the unpadded NHWC input, read as one run of 24 (K = 168, not 7 x 7 x 4 = 196); the 3 bytes
    past the row belong to the next pixels, or to the extra row of padding below the input, and
    meet zero weights. Operands at their extremes, a zero point: bit for bit a numpy convolution."""
    from graphpress.backends.tvm.int8.conv_layout import conv_geometry

    _skip_unless_host_runs(path)
    rng = np.random.default_rng(11)
    x = rng.choice(np.array([0, 255, 254, 1], np.uint8), (1, 3, 21, 18))
    w = rng.choice(np.array([-128, 127, -127, 0], np.int8), (16, 3, 7, 7))
    zx, pads, strides = 5, [3, 3, 3, 3], [2, 2]
    g = conv_geometry(x.shape, w.shape, {"pads": pads, "strides": strides}, PATHS[path][0], w)
    assert (g["rp"], g["kp"]) == (24, 168), g
    report = _exact_conv_integer(x, w, zx, pads, strides, f"x86:{path}")
    assert report["lowered"] == 1 and report["nodes"][0]["shape"][2] == 147, report["nodes"]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_quantized_1d_convolution_runs_on_the_integer_kernel(path, monkeypatch):
    """A static QDQ 1-D convolution (a spectrogram's STFT filters: one input channel, a long
    window, a large stride; openWakeWord's mel spectrogram ran its two in fp32) takes the integer
    kernel as a 2-D one of height 1: the compiled float output is the integer sums of a numpy
    convolution rescaled, plus the bias, and agrees with ONNX Runtime on the QDQ model. Kept in
    fp32 by the guard (its timing injected), the height-1 layer computes the same in float."""
    from graphpress.backends.tvm.int8 import guard
    _skip_unless_host_runs(path)
    rng = np.random.default_rng(5)
    sx, zx = np.float32(0.02), np.uint8(131)
    wq = rng.integers(-63, 64, (20, 1, 64)).astype(np.int8)  # 7 bits: every AVX2 kernel takes it
    sw = (rng.random(20) * 0.01 + 0.001).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    proto = make_model(
        [
            helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
            helper.make_node("Conv", ["xd", "wd", "b"], ["y"], kernel_shape=[64], strides=[16], pads=[8, 3], name="stft"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 800])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor("sx", np.array(sx)), tensor("zx", np.array(zx)), tensor("wq", wq), tensor("sw", sw), tensor("b", bias)],
    )  # fmt: skip
    x = (rng.standard_normal((1, 1, 800)) * 2).astype(np.float32)
    compiled = compile_model(gp.load(proto), f"x86:{path}", int8="on", int8_guard=False, measure=False)
    report = compiled.meta["build"]["int8"]
    assert report["lowered"] == 1 and tuple(report["nodes"][0]["shape"]) == (47, 20, 64), report["nodes"]
    xq = np.clip(np.round(x / sx) + zx, 0, 255).astype(np.uint8)
    sums = _conv_reference(xq[:, :, None, :], wq[:, :, None, :], int(zx), [0, 8, 0, 3], [1, 16])[:, :, 0, :]
    want = (sums * (sx * sw.astype(np.float64))[None, :, None] + bias[None, :, None]).astype(np.float32)
    got = compiled.run_named(x=x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, _ort(gp.load(proto), {"x": x})[0], rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(guard, "_time_pairs", lambda pairs, *a, **k: [(2.0, 1.0)] * len(pairs))  # int8 2x slower: fp32
    kept = compile_model(gp.load(proto), f"x86:{path}", int8="auto", measure=False)
    assert kept.meta["build"]["int8"]["lowered"] == 0
    np.testing.assert_allclose(kept.run_named(x=x)["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", list(PATHS))
def test_convolutions_of_one_input_share_its_padded_copy(path, monkeypatch):
    """Two static QDQ 1-D convolutions of one input (a spectrogram's cosine and sine filters),
    padded alike around a zero point the padding must hold: the lowered module pads the input
    once (Relax's common-subexpression elimination after the integer lowering), and both outputs
    are still the integer sums of a numpy convolution rescaled, as ONNX Runtime's."""
    from graphpress.backends.tvm import build

    _skip_unless_host_runs(path)
    rng = np.random.default_rng(7)
    sx, zx = np.float32(0.02), np.uint8(131)
    weights = [rng.integers(-63, 64, (24, 1, 64)).astype(np.int8) for _ in range(2)]
    sw = (rng.random(24) * 0.01 + 0.001).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"])]
    for i in range(2):
        nodes += [helper.make_node("DequantizeLinear", [f"w{i}", "sw"], [f"wd{i}"], axis=0),
                  helper.make_node("Conv", ["xd", f"wd{i}"], [f"y{i}"], kernel_shape=[64], strides=[16], pads=[8, 3], name=f"filter{i}")]  # fmt: skip
    proto = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 800])], [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)],
        [tensor("sx", np.array(sx)), tensor("zx", np.array(zx)), tensor("sw", sw), *(tensor(f"w{i}", w) for i, w in enumerate(weights))],
    )  # fmt: skip
    modules = []
    real = build.compile_executable
    monkeypatch.setattr(build, "compile_executable", lambda mod, spec: (modules.append(mod), real(mod, spec))[1])
    compiled = compile_model(gp.load(proto), f"x86:{path}", int8="on", int8_guard=False, measure=False)
    assert compiled.meta["build"]["int8"]["lowered"] == 2
    assert modules[-1]["main"].script().count("graphpress_nhwc_pad") == 1
    x = (rng.standard_normal((1, 1, 800)) * 2).astype(np.float32)
    xq = np.clip(np.round(x / sx) + zx, 0, 255).astype(np.uint8)
    got, ort = compiled.run_named(x=x), _ort(gp.load(proto), {"x": x})
    for i, w in enumerate(weights):
        sums = _conv_reference(xq[:, :, None, :], w[:, :, None, :], int(zx), [0, 8, 0, 3], [1, 16])[:, :, 0, :]
        want = (sums * (sx * sw.astype(np.float64))[None, :, None]).astype(np.float32)
        np.testing.assert_allclose(got[f"y{i}"], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[f"y{i}"], ort[i], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_quantized_cnn_agrees_with_ort_on_every_path(digits_cnn, path):
    """The digits CNN quantized static, every layer on the path's integer kernels in NHWC, each
    kernel writing its requantized uint8 output itself (the write-back fused into its micro-tiles):
    within one output step of ONNX Runtime running the same QDQ model."""
    _skip_unless_host_runs(path)
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    PassManager(build_passes("cleanup,fuse")).run(model)
    PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(32)])).run(model)
    compiled = compile_model(model, f"x86:{path}", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["isa"] == PATHS[path][0].name and report["lowered"] == 5, report
    build = compiled.meta["build"]
    requantizing = [k for k in build["kernel_names"] if k.startswith("fused_graphpress_") and "quantize" in k]
    assert build["int8_fused_kernels"] >= 3 and len(requantizing) >= 2, build["kernel_names"]
    scale = _output_scale(model)
    lsb = np.concatenate([np.abs(next(iter(compiled.run_named(**{name: x}).values())) - _ort(model, {name: x})[0]).ravel() / scale
                          for x in (data.x_test[i : i + 1] for i in range(16))])  # fmt: skip
    assert lsb.max() <= 1.01 and (lsb < 0.01).mean() >= 0.8, (lsb.max(), (lsb < 0.01).mean())


#: weights of each class the AVX2 path tells apart, and the kernel each takes
AVX2_WEIGHTS = {
    # 6-bit extremes: no group of four (K offsets 0, 1, 4, 5 / 2, 3, 6, 7 of each 8) sums past
    # 128, though a pair of pairs the kernel does not add ((0, 1) + (2, 3): 64 + 64 + 64 + 64) would
    "quads": ("AVX2 u8s8 quads kernel", lambda rng, k, n: np.tile(np.array([64, 64, 64, 64, 0, 0, 0, 0], np.int8), k // 8)[:, None]
              * rng.choice(np.array([1, 0], np.int8), (1, n)) + rng.choice(np.array([-32, 0], np.int8), (k, n)) * (np.arange(k) % 8 >= 4)[:, None]),
    # 7-bit extremes, next to each other: pairs fit int16, groups of four do not
    "pairs": ("AVX2 u8s8 kernel", lambda rng, k, n: rng.choice(np.array([-64, 64, 63, -1, 0], np.int8), (k, n))),
    # one pair that could saturate (127, 127: 255 * 254 > 32767)
    "saturating": ("AVX2 kernel", lambda rng, k, n: np.where((np.arange(k) // 2 == 5)[:, None] & (np.arange(n) == 5), np.int8(127),
                                                              rng.choice(np.array([-64, 64, 63, -1, 0], np.int8), (k, n)))),
}


@pytest.mark.parametrize("weights", list(AVX2_WEIGHTS))
def test_avx2_takes_the_kernel_whose_int16_sums_the_weight_cannot_saturate(weights):
    """The AVX2 path's three kernels, chosen per layer by its weight (with activations of 255):
    two vpmaddubsw added in int16 where no group of four weights can saturate it, one where no
    pair can, the int16 vpmaddwd kernel otherwise. All exact. A weight on the int16 kernel is
    counted in the report, with the hint that quantizing for the target gives the others."""
    from graphpress.passes.int16_sums import fits_int16_quads

    _skip_unless_host_runs("avx2")
    k, n = 64, 24
    kernel, make = AVX2_WEIGHTS[weights]
    w = make(np.random.default_rng(3), k, n).astype(np.int8)
    assert fits_int16_quads(w) == (weights == "quads")
    proto = make_model(
        [helper.make_node("MatMulInteger", ["a", "W", "za"], ["y"], name="mmi")],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [5, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [5, n])],
        [tensor("W", w), tensor("za", np.array(9, np.uint8))],
    )
    model = gp.load(proto)
    a = np.random.default_rng(4).choice(np.array([255, 254, 0], np.uint8), (5, k))
    a[0] = 255
    compiled = compile_model(model, "x86:avx2", int8="on", int8_guard=False)
    report = compiled.meta["build"]["int8"]
    assert report["nodes"][0]["kernel"] == kernel, report["nodes"]
    assert (report["instructions"]["ymm vpmaddubsw"] > 0) == (weights != "saturating"), report["instructions"]
    assert report.get("wide_weights", 0) == (weights == "saturating") and ("quantize:mode=static" in report.get("hint", "")) == (weights == "saturating"), report
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


def test_a_one_hot_layer_of_257_values_runs_on_the_quads_kernel():
    """Magika's first layer: a one-hot of 257 byte values (its 256 bytes and padding) times an
    int8 weight quantized for the AVX2 path (6-bit). K = 257 is padded to 264 by zero weight rows
    (and activation columns) and takes the quads kernel -- it had no integer kernel, and ran as a
    float matmul of the dequantized one-hot -- bit for bit ONNX Runtime's."""
    _skip_unless_host_runs("avx2")
    k, n = 257, 64
    w = np.random.default_rng(2).integers(-32, 32, (k, n)).astype(np.int8)
    proto = make_model(
        [helper.make_node("MatMulInteger", ["a", "W", "za"], ["y"], name="mmi")],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 48, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 48, n])],
        [tensor("W", w), tensor("za", np.array(0, np.uint8))],
    )
    model = gp.load(proto)
    a = np.zeros((2, 48, k), np.uint8)
    a[np.arange(2)[:, None], np.arange(48), np.random.default_rng(3).integers(0, k, (2, 48))] = 255
    compiled = compile_model(model, "x86:avx2", int8="on", int8_guard=False, measure=False)
    node = compiled.meta["build"]["int8"]["nodes"][0]
    assert node["lowered"] and node["kernel"] == "AVX2 u8s8 quads kernel", node
    np.testing.assert_array_equal(compiled.run_named(a=a)["y"], _ort(model, {"a": a})[0])


@pytest.mark.parametrize("c", [16, 12])
def test_an_avx2_convolution_of_quad_fitting_weights_is_exact(c):
    """A 3x3 ConvInteger (stride 2, asymmetric padding, a zero point) whose weights fit the quads
    kernel at its limit: 16 channels run on it, read in place in runs of 8; 12 (runs of 12, not
    whole steps of 8) on the pairs kernel. Bit for bit a numpy convolution."""
    _skip_unless_host_runs("avx2")
    rng = np.random.default_rng(5)
    x = rng.choice(np.array([0, 255, 255, 1], np.uint8), (1, c, 9, 11))
    w = rng.choice(np.array([-32, 32, 31, 0], np.int8), (8, c, 3, 3))
    zx, pads, strides = 3, [1, 0, 1, 2], [2, 1]
    node = _exact_conv_integer(x, w, zx, pads, strides, "x86:avx2")["nodes"][0]
    assert node["kernel"] == ("AVX2 u8s8 quads" if c == 16 else "AVX2 u8s8") + " kernel, unfolded in place", node


@pytest.mark.parametrize(
    "x_shape,oc,pads",
    [
        ((1, 32, 9, 11), 20, [1, 1, 1, 1]),  # 5 x 6 tiles, the last row and column overhanging; 20 output channels padded to 24
        ((1, 16, 8, 7), 24, [1, 0, 1, 2]),  # asymmetric padding: 8 x 8 outputs from a 8 x 7 map
        ((1, 512, 7, 7), 16, [1, 1, 1, 1]),  # the most channels it takes: 512 products of 1020 x 1152 at most
    ],
)
def test_an_avx2_3x3_convolution_runs_as_an_exact_integer_winograd(x_shape, oc, pads):
    """A 3x3 stride-1 ConvInteger on the AVX2 path (8-bit weights at their extremes, a zero
    point): input transform, 16 int16 products on vpmaddwd and output transform, in the NHWC
    build, bit for bit a numpy convolution."""
    _skip_unless_host_runs("avx2")
    rng = np.random.default_rng(13)
    x = rng.choice(np.array([0, 255, 254, 1], np.uint8), x_shape)
    w = rng.choice(np.array([-128, 127, -127, 0], np.int8), (oc, x_shape[1], 3, 3))
    proto = make_model(
        [helper.make_node("ConvInteger", ["x", "W", "zx"], ["y"], pads=pads, name="ci")],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [tensor("W", w), tensor("zx", np.array(3, np.uint8))],
    )
    compiled = compile_model(gp.load(proto), "x86:avx2", int8="on", int8_guard=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC", build["conv_layout"]
    assert build["int8"]["nodes"][0]["kernel"].startswith("Winograd F(2,3)"), build["int8"]["nodes"]
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    assert "winograd_int_input" in asm and "graphpress_avx2i16_dense_16x" in asm
    assert build["int8"]["instructions"]["ymm vpmaddwd"] > 0
    np.testing.assert_array_equal(compiled.run_named(x=x)["y"], _conv_reference(x, w, 3, pads, [1, 1]))


def test_integer_winograd_takes_only_what_it_computes_exactly_and_faster():
    """F(2,3) is for AVX2's 3x3 stride-1 convolutions with 16 to 512 channels in (more: the
    int32 sums could overflow), an even number of them, 16 tiles or more, and transformed
    weights of at most 2 MB where the direct kernel would be a vpmaddubsw one."""
    from graphpress.backends.tvm.int8.conv_layout import conv_geometry
    from graphpress.backends.tvm.int8.isa import AVX2_U8S8_QUADS
    from graphpress.backends.tvm.int8.winograd import applies, weight_transform

    def geometry(c, hw, isa=AVX2, k=3, stride=1, oc=64):
        return conv_geometry((1, c, hw, hw), (oc, c, k, k), {"pads": [k // 2] * 4, "strides": [stride] * 2}, isa)

    assert applies(geometry(64, 56)) and applies(geometry(512, 7)) and applies(geometry(64, 56, AVX2_U8S8_QUADS))
    assert not applies(geometry(64, 56, VNNI)) and not applies(geometry(64, 56, AVX_VNNI))  # a dot product of 4 bytes: no gain
    assert not applies(geometry(514, 7)) and not applies(geometry(63, 56)) and not applies(geometry(8, 56))
    assert not applies(geometry(64, 56, stride=2)) and not applies(geometry(64, 56, k=1)) and not applies(geometry(64, 6))
    # 8 MB of transformed weights, read from memory every call: not where the direct kernel is vpmaddubsw's
    assert applies(geometry(512, 7, oc=512)) and not applies(geometry(512, 7, AVX2_U8S8_QUADS, oc=512))
    w = np.full((4, 3, 3, 3), -128, np.int8)
    assert np.abs(weight_transform(w)).max() == 9 * 128 and weight_transform(w).dtype == np.int16


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
@pytest.mark.parametrize(("stride", "relu"), [(1, True), (2, True), (1, False)])
def test_a_quantized_depthwise_convolution_reads_its_uint8_input(stride, relu, target, monkeypatch):
    """pointwise -> depthwise -> pointwise, quantized static: the depthwise layer (float weights,
    no integer kernel) reads the uint8 map its producer quantized, dequantized in the
    convolution's own loads (one fused kernel, padding with the zero point's float 0; on the
    256-bit classes from a uint8 copy padded with the zero point), and the model stays within
    one output step of ONNX Runtime running the same QDQ model. Without the ReLU in front, the
    map's zero point is not 0."""
    import re

    from graphpress.backends.tvm.int8 import depthwise, emit

    copies = []

    def spy(*args, **kwargs):
        copies.append(args[4] if len(args) > 4 else kwargs.get("padded_copy", False))
        return depthwise.depthwise_call(*args, **kwargs)

    monkeypatch.setattr(emit, "depthwise_call", spy)

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(8, 32, 1), torch.nn.ReLU6() if relu else torch.nn.Identity(), torch.nn.Conv2d(32, 32, 3, stride=stride, padding=1, groups=32), torch.nn.ReLU6(),
        torch.nn.Conv2d(32, 16, 1),
    ).eval()
    x = torch.randn(1, 8, 14, 14)
    model = gp.load(module, x)
    name = model.graph.inputs[0].name
    PassManager(build_passes("cleanup,fuse")).run(model)
    calibration = [{name: torch.randn(1, 8, 14, 14).numpy()} for _ in range(16)]
    PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=calibration)).run(model)
    if target != "x86":
        _skip_unless_host_runs("avx2")
    compiled = compile_model(model, target, int8="on", int8_guard=False, measure=False)
    assert compiled.meta["build"]["conv_layout"] == "NHWC"
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    assert re.search(r"^\S*fused_graphpress_uint8_depthwise\S*:", asm, flags=re.M), "no uint8 depthwise kernel"
    zero_points = {int(z) for z in re.findall(r"uint8_depthwise_\S*?_z(\d+)", " ".join(compiled.meta["build"]["kernel_names"]))}
    assert zero_points and (zero_points == {0}) == relu, zero_points
    isa = compiled.meta["build"]["int8"]["isa"]
    assert copies and set(copies) == {isa in depthwise.PADDED_COPY_ISAS}, (isa, copies)
    assert target == "x86" or isa in depthwise.PADDED_COPY_ISAS
    scale = _output_scale(model)
    for seed in range(4):
        feed = torch.randn(1, 8, 14, 14, generator=torch.Generator().manual_seed(seed)).numpy()
        got = next(iter(compiled.run_named(**{name: feed}).values()))
        assert np.abs(got - _ort(model, {name: feed})[0]).max() <= 1.01 * scale


def _conv_pool_conv(seed: int = 0):
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1), torch.nn.Conv2d(16, 8, 3, padding=1)).eval()
    model = gp.load(module, torch.randn(1, 3, 32, 32))
    name = model.graph.inputs[0].name
    PassManager(build_passes("cleanup,fuse")).run(model)
    calibration = [{name: torch.randn(1, 3, 32, 32).numpy()} for _ in range(8)]
    PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=calibration)).run(model)
    return model, name


def test_a_max_pool_between_quantizers_of_one_grid_pools_the_integers():
    """conv -> ReLU -> MaxPool -> conv quantized static (MaxPool between a DequantizeLinear and a
    QuantizeLinear of the same grid): the pool runs on the uint8 values, bit-exact in ONNX
    Runtime against the QDQ model; a pool whose quantizers differ is left alone."""
    import onnx_ir as ir

    from graphpress.backends.tvm.int8.qdq import integer_max_pools
    from graphpress.ir.edit import add_initializer
    from graphpress.pipelines import copy_model

    model, name = _conv_pool_conv()
    rewritten = copy_model(model)
    assert integer_max_pools(rewritten) == 1
    pool = next(n for n in rewritten.graph if n.op_type == "MaxPool")
    assert pool.inputs[0].producer().op_type == "QuantizeLinear" and pool.outputs[0].dtype == ir.DataType.UINT8
    for seed in range(4):
        feed = {name: torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).numpy()}
        np.testing.assert_array_equal(_ort(rewritten, feed)[0], _ort(model, feed)[0])
    # another grid after the pool: not the same values on the integers
    other = copy_model(model)
    after = next(u.node for n in other.graph if n.op_type == "MaxPool" for u in n.outputs[0].uses())
    assert after.op_type == "QuantizeLinear"
    after.replace_input_with(1, add_initializer(other.graph, "other_scale", np.asarray(after.inputs[1].const_value.numpy() * 2, np.float32)))
    assert integer_max_pools(other) == 0
    assert [n.op_type for n in other.graph].count("MaxPool") == 1


def test_a_quantized_max_pool_runs_on_the_uint8_map():
    """The compiled int8 model: the convolution before the pool writes its requantized uint8
    output, the pool reads it in NHWC (no transposes around it), and the result is within one
    output step of ONNX Runtime."""
    model, name = _conv_pool_conv(1)
    compiled = compile_model(model, "x86", int8="on", int8_guard=False, measure=False)
    build = compiled.meta["build"]
    assert build["int8"]["integer_max_pools"] == 1 and build["int8"]["lowered"] == 2, build["int8"]
    assert any(k.startswith("fused_graphpress_") and "quantize" in k for k in build["kernel_names"]), build["kernel_names"]
    # the pool in NHWC with the convolutions: one transpose, the output's back to NCHW
    assert sum(k.startswith("transpose") for k in build["kernel_names"]) == 1, build["kernel_names"]
    scale = _output_scale(model)
    for seed in range(4):
        feed = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).numpy()
        got = next(iter(compiled.run_named(**{name: feed}).values()))
        assert np.abs(got - _ort(model, {name: feed})[0]).max() <= 1.01 * scale


def test_avx_vnni_tiles_hold_twelve_accumulators_and_a_pointwise_conv_is_still_read_in_place():
    """AVX-VNNI's micro-tile: 12 accumulators of the 16 ymm registers beside its weight vectors and
    one broadcast (6 rows x 2 vectors, 4 x 3 where the columns allow; never 3 x 4, which needs 17);
    a convolution's pixels padded to its 6 rows, a 1x1 one's only to 4 so that its NHWC input
    stays the unfolded one."""
    from graphpress.backends.tvm.int8.conv_layout import conv_geometry, pointwise
    from graphpress.backends.tvm.int8.dot import _micro_tile

    assert _micro_tile(3138, 8, 12, 16, 6) == (6, 2)
    assert _micro_tile(128, 48, 12, 16, 6) == (4, 3)
    assert _micro_tile(132, 8, 12, 16, 6) == (6, 2)
    assert _micro_tile(128, 8, 12, 16, 6) == (4, 2)  # 3 x 4 would need 17 registers
    assert _micro_tile(3136, 8, 8) == (4, 2)  # the other ISAs' budget
    conv3 = conv_geometry((1, 64, 56, 56), (64, 64, 3, 3), {"pads": (1, 1, 1, 1)}, AVX_VNNI)
    assert conv3["m"] == 3136 and conv3["mp"] == 3138
    conv1 = conv_geometry((1, 64, 56, 56), (64, 64, 1, 1), {}, AVX_VNNI)
    assert conv1["mp"] == 3136 and pointwise(conv1)
    assert conv_geometry((1, 64, 7, 7), (64, 64, 1, 1), {}, AVX_VNNI)["mp"] == 54  # 49 pixels: no multiple of 4
    assert conv_geometry((1, 64, 56, 56), (64, 64, 3, 3), {"pads": (1, 1, 1, 1)}, VNNI)["mp"] == 3136


@pytest.mark.parametrize("path", ["avx2", "avx512_vnni"])
def test_per_token_write_backs_run_on_the_tiles(path):
    """A per-token quantized MatMul (its rows' zero points computed in the kernel, broadcast over
    the output) followed by a bias and a residual addition, and one followed by a GELU (whose
    write-back reads the dequantized product four times): both write-backs run on the product's
    micro-tiles (the zero points inlined; the GELU's input a block of its own on each tile), not
    after the product as loop nests of their own over the whole output; within a quantization
    step's worth of ONNX Runtime on the same quantized model."""
    _skip_unless_host_runs(path)
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal((64, 64)) * 0.1).astype(np.float32), (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    model = gp.load(make_model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]), helper.make_node("Add", ["hb", "x"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["g"]), helper.make_node("Gelu", ["g"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 64])],
        [tensor("w1", w1), tensor("w2", w2), tensor("b", b)], opset=20,
    ))  # fmt: skip
    PassManager(build_passes("quantize:mode=dynamic;ops=MatMul;activations=token")).run(model)
    compiled = compile_model(model, f"x86:{path}", int8="on", int8_guard=False, measure=False)
    build = compiled.meta["build"]
    assert build["int8"]["lowered"] == 2, build["int8"]
    fused = [k for k in build["kernel_names"] if "_dense_" in k]
    residual, gelu = [k for k in fused if "gelu" not in k], [k for k in fused if "gelu" in k]
    assert residual and gelu, fused
    assert not build.get("int8_write_back_apart"), (fused, build.get("int8_write_back_apart"))
    x = rng.standard_normal((1, 32, 64)).astype(np.float32)
    got, want = compiled.run_named(x=x)["y"], _ort(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-3)
