"""Fast math on CPU builds: erf/exp/tanh/sigmoid/GELU/softmax as polynomial vector code, within float32
tolerance of ONNX Runtime, no libm calls left in the kernels, and the choice reported."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.ir.io import to_proto
from tests.conftest import make_model

LIBM = re.compile(r"call\w*\s+\W?(erff|expf|tanhf|__erff|__expf)")


def _model():
    nodes = [
        helper.make_node("Erf", ["x"], ["e"]),
        helper.make_node("Exp", ["e"], ["ex"]),
        helper.make_node("Tanh", ["x"], ["t"]),
        helper.make_node("Sigmoid", ["x"], ["g"]),
        helper.make_node("Add", ["ex", "t"], ["s0"]),
        helper.make_node("Add", ["s0", "g"], ["s"]),
        helper.make_node("Softmax", ["s"], ["y"], axis=-1),
    ]
    return gp.load(
        make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])])
    )


@pytest.mark.parametrize("fast", [True, False])
def test_fast_math_matches_ort_and_leaves_no_libm_calls(fast):
    model = _model()
    x = np.random.default_rng(0).normal(0, 3, (64, 256)).astype(np.float32)
    x[0, :4] = [-1e4, -100.0, 100.0, 1e4]  # the sigmoid's exp clamped, never infinite
    want = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = compile_model(model, "x86", fast_math=fast, shipped_databases=False)
    np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-5, atol=1e-7)
    assert compiled.meta["build"]["fast_math"] is fast
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    assert (LIBM.search(asm) is None) == fast


def test_a_model_without_libm_math_says_so():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = gp.load(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])]))
    assert compile_model(model, "x86", shipped_databases=False).meta["build"]["fast_math"] == "no libm math in this model"


def test_softmax_multiplies_by_each_rows_inverted_sum():
    """One division per row (its sum inverted), a multiply per element, as ONNX Runtime's softmax:
    no vector division left in the kernel, and the values as ONNX Runtime's within float32
    tolerance, rows of very different scales included."""
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1)]
    model = gp.load(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [12, 128, 128])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [12, 128, 128])]))
    x = np.random.default_rng(1).normal(0, 4, (12, 128, 128)).astype(np.float32)
    x[0] *= 1e-3
    x[1, :, :3] = 80.0
    want = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = compile_model(model, "x86", shipped_databases=False)
    np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-5, atol=1e-7)
    asm = compiled._executable.mod.imports[0].inspect_source("asm")
    assert "vdivss" in asm and "vdivps" not in asm


_N = 1 << 16


def _quantize_module(scale=None):
    """``quantize`` of a float vector to uint8: by a scale and zero point given at run time, or by
    the constant ``scale`` (a static model's requantization; zero point 0)."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.fastmath import exact_legalization
    from graphpress.backends.tvm.schedules import schedule_injective
    from graphpress.backends.tvm.targets import resolve_target
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((_N,), "float32"))
    if scale is None:
        s, z = relax.Var("s", relax.TensorType((), "float32")), relax.Var("z", relax.TensorType((), "uint8"))
        params, args = [x, s, z], (s, z)
    else:
        params, args = [x], (relax.const(np.float32(scale)), relax.const(np.uint8(0)))
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit_output(relax.op.quantize(x, *args, axis=0, out_dtype="uint8"))
        bb.emit_func_output(y)
    mod, _ = schedule_injective(relax.transform.LegalizeOps(customize_legalize_map=exact_legalization())(bb.get()))
    ex = tvm.compile(mod, target=tvm.target.Target(resolve_target("x86").config), tir_pipeline=cpu_tir_pipeline())
    return relax.VirtualMachine(ex, tvm.cpu()), (ex.mod.imports[0] if ex.mod.imports else ex.mod).inspect_source("asm")



def _quantize_cases(scale, rng):
    """Values whose quotients by ``scale`` are exact ties, their float neighbours, random, infinite
    and huge."""
    sc = np.float32(scale)
    xs = (rng.uniform(-140, 140, _N) * sc).astype(np.float32)
    ties = ((rng.integers(-130, 130, _N // 4) + 0.5) * sc).astype(np.float32)  # quotient k + 0.5 where representable
    xs[: _N // 4], xs[_N // 4 : _N // 2], xs[_N // 2 : 3 * _N // 4] = ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))
    xs[-4:] = [np.inf, -np.inf, 3e38, -3e38]
    return xs


def _divided(xs, scale, zp):
    with np.errstate(over="ignore"):
        return np.clip(np.rint(xs / np.float32(scale)) + np.float32(zp), 0, 255).astype(np.uint8)


SCALES = [1 / 255, 0.1, 3.0, 0.0123, *(float(np.float32(2.0**e * 1.37)) for e in (-30, -11, 7, 30))]


def test_quantize_by_one_scale_multiplies_and_corrects_to_the_divisions_integers():
    """``quantize`` by one scale as ``x * (1 / s)`` and two FMAs: the integers of the division
    (``numpy``'s float32 ``x / s``, rounded half to even), bit for bit, on quotients that are
    exact ties and their float neighbours, infinities, huge values and scales from 2^-30 to
    2^30; the vector division gone from the kernel's loop."""
    import tvm

    vm, asm = _quantize_module()
    assert re.search(r"vfmadd\w*ps", asm)
    rng = np.random.default_rng(0)
    for scale in SCALES:
        sc, zp = np.float32(scale), np.uint8(rng.integers(0, 256))
        xs = _quantize_cases(sc, rng)
        got = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(np.array(sc)), tvm.runtime.tensor(np.array(zp))).numpy()
        np.testing.assert_array_equal(got, _divided(xs, sc, zp), err_msg=f"scale {sc}")


@pytest.mark.parametrize("scale", [SCALES[0], SCALES[4]])
def test_quantize_by_a_constant_scale_keeps_the_division(scale):
    """A static model's requantization (a constant scale, which the legalization receives as a
    ``FloatImm``) keeps the division on purpose: fused into an integer kernel's write-back, the
    divider runs beside the dot products, and the multiply and its correction measured slower
    (``exact_legalization``). The division's integers, bit for bit."""
    import tvm

    vm, asm = _quantize_module(scale)
    assert "vdivps" in asm
    xs = _quantize_cases(scale, np.random.default_rng(1))
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(xs)).numpy(), _divided(xs, scale, 0), err_msg=f"scale {scale}")


def test_a_square_is_a_product_not_a_pow_call():
    """``Pow(x, 2)`` (a spectrogram's power) as ``x * x``, ONNX Runtime's squaring: its outputs bit
    for bit, infinities included, and no libm ``powf`` call per element; another exponent keeps
    ``pow``."""
    x = np.abs(np.random.default_rng(2).normal(0, 30, (97, 257))).astype(np.float32)
    x[0, :3] = [np.inf, 1e20, 0.0]
    for exponent, calls_pow in ((2.0, False), (1.5, True)):
        model = gp.load(make_model([helper.make_node("Pow", ["x", "e"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [97, 257])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [97, 257])], [helper.make_tensor("e", TensorProto.FLOAT, [], [exponent])]))  # fmt: skip
        want = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        compiled = compile_model(model, "x86", shipped_databases=False)
        if calls_pow:
            np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(compiled(x)[0], want)
        asm = compiled._executable.mod.imports[0].inspect_source("asm")
        assert bool(re.search(r"call\w*\s+\W?powf", asm)) == calls_pow, exponent
