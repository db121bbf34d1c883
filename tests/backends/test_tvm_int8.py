"""The int8 building blocks: every ISA's dense kernel emits its instructions (checked on any
host: the kernels are compiled, not run), and a packed u8 x s8 -> s32 dense tuned by MetaSchedule
with the fixed VNNI intrinsic is exact and really uses 512-bit vpdpbusd (tensorization failures
are only warnings in TVM)."""

from __future__ import annotations

import numpy as np
import pytest

from graphpress.backends.tvm.int8.emit import pack_weight
from graphpress.backends.tvm.int8.isa import AVX2_U8S8, AVX2_U8S8_QUADS, ISAS
from graphpress.backends.tvm.int8.kernels_x86 import VNNI_INTRIN, register_vnni_intrinsic, zmm_vpdpbusd_count
from graphpress.backends.tvm.targets import resolve_target
from graphpress.backends.tvm.tuning import drop_unnamed_tuning_log_handlers
from tests.conftest import host_lacks

#: a target for each ISA, compiled for on any host (nothing here runs the code)
ISA_TARGETS = {
    "vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"},
    "amx": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"},
    "avx_vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"},
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
    "avx2_u8s8": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
    "avx2_u8s8_quads": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
    "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
    "i8mm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm"]},
}

#: a candidate's build and run may take this long: under CI's load (the other test worker
#: compiling on the same 2 cores) LLVM builds of AVX-512 candidates took over 120 s
TUNING_TIMEOUT_S = 900


def test_pack_weight_layout():
    """[K, N] int8 -> [N/16, K/4, 16, 4] blocks; N padded with zero columns, column sums of the padded matrix."""
    w_kn = np.arange(8 * 20, dtype=np.int8).reshape(8, 20)
    packed, colsum, npad = pack_weight(w_kn, 32, 16)
    assert npad == 32 and packed.shape == (2, 2, 16, 4)
    assert packed[1, 1, 3, 2] == w_kn[4 + 2, 16 + 3]
    assert packed[1, 0, 4, 0] == 0  # column 20: padding
    np.testing.assert_array_equal(colsum[:20], w_kn.astype(np.int32).sum(0))
    assert not colsum[20:].any()


def test_pack_weight_int16_pairs():
    """AVX2's layout: [K, N] int8 -> [N/8, K/2, 8, 2] int16, the same values."""
    w_kn = np.random.default_rng(0).integers(-128, 128, (12, 16), dtype=np.int8)
    packed, colsum, npad = pack_weight(w_kn, 8, 8, depth=2, dtype="int16")
    assert npad == 16 and packed.shape == (2, 6, 8, 2) and packed.dtype == np.int16
    assert packed[1, 4, 3, 1] == w_kn[4 * 2 + 1, 8 + 3]
    np.testing.assert_array_equal(colsum, w_kn.astype(np.int32).sum(0))


@pytest.mark.parametrize("isa", [*ISAS, AVX2_U8S8, AVX2_U8S8_QUADS], ids=lambda isa: isa.name)
def test_every_isa_kernel_emits_its_instructions(isa):
    """Each ISA's dense kernel, compiled for a target with that ISA: the instructions its record
    counts are in the assembly (a record whose kernel or counter were wrong would count 0)."""
    import tvm

    m, n, k = 64, 64, 128
    func = isa.dense(m, n, k)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target(ISA_TARGETS[isa.name]).tvm_target())
    counts = isa.count(lib.mod.inspect_source("asm"))
    assert counts[isa.counters[0].key] > 0, counts


def test_avx2_kernel_of_one_row_widens_its_byte_weight_as_it_loads_it():
    """AVX2's int16 kernel for a product of one row (a classifier at batch 1) takes its weight
    as int8 and sign-extends each vector in the load (``vpmovsxbw`` from memory) before
    ``vpmaddwd``; for more rows than a micro-tile the weight comes widened (no ``vpmovsxbw``)."""
    import re

    import tvm

    from graphpress.backends.tvm.int8.isa import AVX2
    from graphpress.backends.tvm.int8.kernels_x86 import BYTE_WEIGHT_ROWS

    asm = {}
    for m in (1, 64):
        assert AVX2.stored_weight(m) == ("int8" if m <= BYTE_WEIGHT_ROWS else "int16")
        lib = tvm.compile(tvm.IRModule({"main": AVX2.dense(m, 64, 128)}), target=resolve_target(ISA_TARGETS["avx2"]).tvm_target())
        asm[m] = lib.mod.inspect_source("asm")
        assert AVX2.count(asm[m])["ymm_vpmaddwd"] > 0
    assert re.search(r"vpmovsxbw\s+[^,]*\(", asm[1]), "no widening load in the one-row kernel"
    assert not re.search(r"vpmovsxbw", asm[64])


def _dense_module(m: int, n: int, k: int):
    import tvm
    from tvm import te

    a = te.placeholder((m, k), "uint8", name="A")
    b = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _vnni_space():
    """MetaSchedule space: multi-level tiling with the fixed VNNI intrinsic, then vectorize/unroll."""
    from tvm.s_tir import meta_schedule as ms

    register_vnni_intrinsic()
    rules = [
        ms.schedule_rule.MultiLevelTilingWithIntrin(
            VNNI_INTRIN, structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None, reuse_read=None,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"),
        ),
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
    ]  # fmt: skip
    postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(), ms.postproc.RewriteReductionBlock(),
                 ms.postproc.RewriteTensorize(vectorize_init_loop=True)]  # fmt: skip
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs={ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1})


@pytest.mark.skipif(bool(host_lacks("avx512_vnni", "avx512f")), reason=host_lacks("avx512_vnni", "avx512f"))
def test_metaschedule_tunes_the_fixed_vnni_intrinsic_exactly(tmp_path):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    m, n, k = 32, 64, 128
    target = resolve_target("x86").tvm_target()
    mod = _dense_module(m, n, k)
    drop_unnamed_tuning_log_handlers()
    database = ms.tune_tir(mod, target, str(tmp_path), max_trials_global=8, num_trials_per_iter=8, space=_vnni_space(),
                           builder=ms.builder.LocalBuilder(timeout_sec=TUNING_TIMEOUT_S), runner=ms.runner.LocalRunner(timeout_sec=TUNING_TIMEOUT_S))  # fmt: skip
    sch = ms.tir_integration.compile_tir(database, mod, target)
    assert sch is not None, "no valid candidate in 8 trials"
    lib = tvm.compile(sch.mod, target=target)
    assert zmm_vpdpbusd_count(lib.mod.inspect_source("asm")) > 0
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (n, k), dtype=np.int8)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((m, n), "int32"), dev)
    lib(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(pack_weight(b.T, 16, 16)[0], dev), out)
    np.testing.assert_array_equal(out.numpy(), a.astype(np.int32) @ b.astype(np.int32).T)


def _requantized_dense(act: str, extra_output: bool = False):
    """``MatMulInteger(a, W, 7) -> Cast -> Mul(S) -> Add(B) -> [act] -> QuantizeLinear(0.03, 3)``,
    the form :func:`~graphpress.backends.tvm.int8.qdq.qdq_to_integer` gives a static QDQ layer;
    ``extra_output``: the rescaled sums are a graph output too."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tests.conftest import make_model, tensor

    rng = np.random.default_rng(0)
    k, n = 48, 24
    nodes = [
        helper.make_node("MatMulInteger", ["a", "W", "za"], ["sums"], name="mmi"),
        helper.make_node("Cast", ["sums"], ["f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["f", "S"], ["scaled"], name="rescale"),
        helper.make_node("Add", ["scaled", "B"], ["biased"], name="bias"),
    ]
    inits = [tensor("W", rng.integers(-128, 128, (k, n)).astype(np.int8)), tensor("za", np.array(7, np.uint8)),
             tensor("S", rng.uniform(1e-4, 4e-4, n).astype(np.float32)), tensor("B", rng.normal(0, 0.5, n).astype(np.float32)),
             tensor("q", np.array(0.03, np.float32)), tensor("zq", np.array(3, np.uint8))]  # fmt: skip
    last = "biased"
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["biased"], ["act"], name="relu"))
        last = "act"
    elif act == "clip":
        nodes.append(helper.make_node("Clip", ["biased", "lo", "hi"], ["act"], name="clip"))
        inits += [tensor("lo", np.array(0.0, np.float32)), tensor("hi", np.array(6.0, np.float32))]
        last = "act"
    nodes.append(helper.make_node("QuantizeLinear", [last, "q", "zq"], ["y"], name="quantize"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.UINT8, [16, n])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [16, n]))
    proto = make_model(nodes, [helper.make_tensor_value_info("a", TensorProto.UINT8, [16, k])], outputs, inits)
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("act", ["none", "relu", "clip"])
def test_the_output_quantizers_scale_folds_into_the_rescale_within_one_step(act):
    """``fold_requantize`` moves the quantizer's scale into the rescale, the bias and the clip's
    bounds (the quantizer's becomes 1): ONNX Runtime on the folded graph gives the same uint8
    values as on the one that divides, but for a rare rounding tie, by at most one step."""
    import onnxruntime as ort

    from graphpress.backends.tvm.int8.qdq import fold_requantize
    from graphpress.ir.io import to_proto

    def run(model, a):
        return ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]

    model, folded = _requantized_dense(act), _requantized_dense(act)
    assert fold_requantize(folded) == 1
    nodes = {n.name: n for n in folded.graph}
    assert float(nodes["quantize"].inputs[1].const_value.numpy()) == 1.0
    scale = nodes["rescale"].inputs[1].const_value.numpy()
    np.testing.assert_allclose(scale, model.graph.initializers["S"].const_value.numpy() / np.float32(0.03), rtol=1e-6)
    if act == "clip":
        assert [float(v.const_value.numpy()) for v in nodes["clip"].inputs[1:]] == pytest.approx([0.0, 6.0 / 0.03])
    rng = np.random.default_rng(1)
    steps = np.concatenate([np.abs(run(folded, a).astype(int) - run(model, a).astype(int)).ravel()
                            for a in (rng.integers(0, 256, (16, 48)).astype(np.uint8) for _ in range(20))])  # fmt: skip
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99, (steps.max(), (steps == 0).mean())
    assert len(np.unique(run(model, rng.integers(0, 256, (16, 48)).astype(np.uint8)))) > 20  # not all clipped


def test_a_rescale_read_by_another_node_keeps_the_quantizers_scale():
    """Where the rescaled sums feed anything besides the quantizer (here a graph output), moving
    the scale into them would change that reader: nothing is folded."""
    from graphpress.backends.tvm.int8.qdq import fold_requantize

    model = _requantized_dense("none", extra_output=True)
    assert fold_requantize(model) == 0
    assert float(next(n for n in model.graph if n.op_type == "QuantizeLinear").inputs[1].const_value.numpy()) == pytest.approx(0.03)
