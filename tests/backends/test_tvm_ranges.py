"""A dynamic quantizer's ``max(x)`` and ``min(x)`` as one kernel reading ``x`` once
(``graphpress.backends.tvm.ranges``, scheduled by ``schedules._ranges_reduction``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("tvm")


def _avx2() -> bool:
    return " avx2" in open("/proc/cpuinfo").read()


def test_the_max_and_min_of_one_tensor_become_one_kernel_only_when_both_are_taken():
    """Pairs within a binding block: ``max(x)`` with ``min(x)`` becomes one ``ranges`` kernel;
    the max of one tensor with the min of another, and a max alone, stay as they were."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.ranges import fused_ranges

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 64], "float32"))
    y = relax.Var("y", relax.TensorType([4, 64], "float32"))
    n = relax.Var("n", relax.TensorType([4, 64], "int32"))
    with bb.function("main", [x, y, n]):
        with bb.dataflow():
            hi = bb.emit(relax.op.max(x))
            lo = bb.emit(relax.op.min(x))
            other = bb.emit(relax.op.min(y))  # no max of y
            ints = (bb.emit(relax.op.max(n)), bb.emit(relax.op.min(n)))  # integers: -n may overflow
            rows = bb.emit(relax.op.max(x, axis=[1]))  # not a whole-tensor reduction
            out = bb.emit_output(relax.Tuple([hi, lo, other, *ints, rows]))
        bb.emit_func_output(out)
    mod = fused_ranges()(bb.get())
    text = mod["main"].script()
    assert re.findall(r"R\.call_tir\(ranges\w*, \((\w+),\)", text) == ["x"], text
    kept = re.findall(r"R\.(max|min)\((\w+), axis=(\w+|\[\d\])", text)
    assert sorted(kept) == [("max", "n", "None"), ("max", "x", "[1]"), ("min", "n", "None"), ("min", "y", "None")], text

    data = {name: np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32) * 4 for name in ("x", "y")}
    data["n"] = np.random.default_rng(2).integers(-1000, 1000, (4, 64)).astype(np.int32)
    target = tvm.target.Target({"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(mod), target=target), tvm.cpu())
    got = [t.numpy() for t in vm["main"](*(tvm.runtime.tensor(data[k]) for k in ("x", "y", "n")))]
    want = [data["x"].max(), data["x"].min(), data["y"].min(), data["n"].max(), data["n"].min(), data["x"].max(axis=1)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    "shape, lanes, parallel",
    [((1, 128, 384), 32, True), ((1, 128, 1536), 32, True), ((1, 50, 768), 32, True), ((4, 100), 16, False), ((3, 5, 16), 16, False), ((7, 13), None, False)],
)
def test_a_range_kernel_loads_each_vector_once_for_both_and_matches_numpy_exactly(shape, lanes, parallel):
    """``_ranges_reduction``: the pair ``(x, -x)`` unrolled inside the vector lanes (each vector
    loaded once for both maxima), chunks over the cores from PARALLEL_WORK elements on, the lanes
    split off the last axis where it is a multiple of them; a tensor too small or ragged for
    whole vectors keeps TVM's default. ``max(x)`` and ``-min(x)`` bit for bit, built for the host
    and, where it runs them, for AVX2."""
    import tvm
    from tvm import te

    from graphpress.backends.tvm.ranges import ranges_compute
    from graphpress.backends.tvm.schedules import schedule_injective
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    x = te.placeholder(shape, "float32", name="x")
    mod, count = schedule_injective(tvm.IRModule({"main": te.create_prim_func([x, ranges_compute(x)])}))
    script = mod["main"].script()
    if lanes is None:
        assert count == 0, script
    else:
        assert count == 1, script
        assert re.search(rf"for j in T\.unroll\(2\):\n\s+for \w+ in T\.vectorized\({lanes}\):", script), script
        assert ("T.parallel(" in script) == parallel, script
        # the lanes off a last axis that is a multiple of them: no division per index
        assert ("//" in script) == (shape[-1] % 16 != 0), script
    data = (np.random.default_rng(5).standard_normal(shape) * 7).astype(np.float32)
    data.flat[len(data.flat) // 3] = -40.0  # the minimum somewhere inside, not at an end
    for target in [{"kind": "llvm"}] + ([{"kind": "llvm", "mcpu": "haswell"}] if _avx2() else []):
        lib = tvm.compile(mod, target=tvm.target.Target(target), tir_pipeline=cpu_tir_pipeline())
        out = tvm.runtime.tensor(np.zeros(2, np.float32))
        (lib.mod if hasattr(lib, "mod") else lib)["main"](tvm.runtime.tensor(data), out)
        np.testing.assert_array_equal(out.numpy(), [data.max(), -data.min()])


@pytest.mark.skipif(not _avx2(), reason="the AVX2 build runs on a host with AVX2")
def test_a_dynamically_quantized_matmul_compiles_its_range_to_one_kernel_and_matches_onnxruntime():
    """``DynamicQuantizeLinear`` (what ONNX Runtime's dynamic quantizer puts before each MatMul)
    through the whole build: one ``ranges`` kernel, no ``max``/``min`` kernels, and the quantized
    activation, its scale, zero point and the integer product equal ONNX Runtime's; a
    ``ReduceMax`` alone keeps its own kernel."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from tests.conftest import make_model, tensor

    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]), helper.make_node("MatMulInteger", ["q", "W", "z", "wz"], ["acc"]),
         helper.make_node("Relu", ["x"], ["r"]), helper.make_node("ReduceMax", ["r"], ["rmax"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 96])],
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in
         (("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8), ("acc", TensorProto.INT32), ("rmax", TensorProto.FLOAT))],
        [tensor("W", rng.integers(-127, 128, (96, 32)).astype(np.int8)), tensor("wz", np.array(0, np.int8))],
    )  # fmt: skip
    compiled = compile_model(gp.load(proto), "x86:haswell", verify=False, measure=False)
    kernels = compiled.meta["build"]["kernel_names"]
    assert "ranges" in kernels and not {"max", "min"} & set(kernels), kernels
    for scale in (3.0, 0.01):
        x = (rng.standard_normal((1, 64, 96)) * scale).astype(np.float32)
        want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        for name, got, ref in zip("q s z acc rmax".split(), compiled(x), want):
            np.testing.assert_array_equal(got, ref, err_msg=name)
