"""int8 dot-product intrinsics (x86 AVX-512 VNNI, aarch64 sdot): the building block of the int8
TVM path (issue #6).

TVM 0.27 ships a ``dot_16x4_vnni`` tensor intrinsic whose implementation no longer matches
LLVM 22's ``llvm.x86.avx512.vpdpbusd.512`` signature (the last two operands are now
``<64 x i8>``), so MetaSchedule's VNNI candidates fail to build and the slow code is kept
silently. :func:`register_vnni_intrinsic` registers a replacement (``dot_16x4_vnni_fixed``)
that reinterprets the operands; :func:`vnni_space` is a MetaSchedule search space that tiles
with it first. The weight must be packed so that a 16 x 4 block is contiguous
(:func:`pack_dense_weight`: ``[N, K] -> [N/16, K/4, 16, 4]``), otherwise nothing tensorizes.

:func:`tune_int8_dense` builds ``C[M, N] = A[M, K] (uint8) x B[N, K]^T (int8) -> int32``,
tunes it and reports how many 512-bit ``vpdpbusd`` instructions the assembly contains
(tensorization failures are only warnings in TVM, so the count is the proof).

Whole models use a hand-scheduled variant of the same packed kernel (no tuning needed) through
:mod:`graphpress.backends.tvm.quantized`, which also does the QDQ rewrite and the per-node
"slower than fp32 stays fp32" guard.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SDOT_INTRIN", "VNNI_INTRIN", "amx_dot_product_count", "pack_dense_weight", "register_sdot_intrinsic", "register_vnni_intrinsic", "sdot_count",
           "tune_int8_dense", "vnni_space", "zmm_vpdpbusd_count"]  # fmt: skip

VNNI_INTRIN = "dot_16x4_vnni_fixed"
#: aarch64 int8 dot product (NEON ``sdot``): 4 int32 lanes x 4 bytes of K
SDOT_INTRIN = "graphpress_dot_4x4_i8i8s32_sdot"
_registered: set[str] = set()


def _register_dot_intrinsic(name: str, a_dtype: str, lanes: int, llvm_intrinsic: str) -> str:
    """Register ``C[lanes] (int32) += A[4] (a_dtype) · B[lanes, 4] (int8)`` as one call of
    ``llvm_intrinsic``, the four bytes of A broadcast to every lane; once per process.

    Not via ``tvm.s_tir.tensor_intrin``: importing that package parses every target's intrinsics
    (CUDA, ARM, Hexagon, ...) in TVMScript first, about 30 s on 2 cores."""
    if name in _registered:
        return name
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    width = 4 * lanes

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32"), lanes), dtype=f"{a_dtype}x{width}")
            b = B.vload([0, 0], dtype=f"int8x{width}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic), C.vload([0], dtype=f"int32x{lanes}"), a, b, dtype=f"int32x{lanes}"
            )

    try:
        TensorIntrin.register(name, desc, impl)
    except Exception as e:  # already registered in this process by someone else
        if "already" not in str(e).lower():
            raise
    _registered.add(name)
    return name


def register_vnni_intrinsic() -> str:
    """Register the fixed u8 x s8 -> s32 16x4 VNNI intrinsic once; returns its name. LLVM 22's
    ``vpdpbusd.512`` takes ``<64 x i8>`` operands, which TVM's own ``dot_16x4_vnni`` does not pass."""
    return _register_dot_intrinsic(VNNI_INTRIN, "uint8", 16, "llvm.x86.avx512.vpdpbusd.512")


def register_sdot_intrinsic() -> str:
    """Register the s8 x s8 -> s32 4x4 aarch64 ``sdot`` intrinsic once; returns its name (the same
    computation as TVM's ``dot_4x4_i8i8s32_sdot``)."""
    return _register_dot_intrinsic(SDOT_INTRIN, "int8", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8")


def vnni_space():
    """MetaSchedule space: multi-level tiling with the fixed VNNI intrinsic, then vectorize/unroll."""
    from tvm.s_tir import meta_schedule as ms

    register_vnni_intrinsic()
    rules = [
        ms.schedule_rule.MultiLevelTilingWithIntrin(
            VNNI_INTRIN,
            structure="SSRSRS",
            tile_binds=None,
            max_innermost_factor=64,
            vector_load_lens=None,
            reuse_read=None,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"),
        ),
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
    ]
    postprocs = [
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
        ms.postproc.RewriteTensorize(vectorize_init_loop=True),
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs={ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1})


def pack_dense_weight(weight: np.ndarray) -> np.ndarray:
    """``[N, K]`` int8 -> ``[N/16, K/4, 16, 4]`` (N % 16 == 0, K % 4 == 0)."""
    n, k = weight.shape
    if n % 16 or k % 4:
        raise ValueError(f"dense weight {weight.shape}: N must be a multiple of 16 and K of 4 for VNNI packing")
    return np.ascontiguousarray(weight.reshape(n // 16, 16, k // 4, 4).transpose(0, 2, 1, 3))


def _dense_module(m: int, n: int, k: int):
    import tvm
    from tvm import te

    a = te.placeholder((m, k), "uint8", name="A")
    b = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def zmm_vpdpbusd_count(asm: str) -> int:
    """512-bit VNNI dot products in an assembly listing (LLVM emits a few xmm ones on its own)."""
    return len(re.findall(r"vpdpbusd\s+[^\n]*zmm", asm))


def amx_dot_product_count(asm: str) -> int:
    """AMX int8 tile dot products (``tdpbusd``, u8 x s8 -> s32) in an assembly listing."""
    return len(re.findall(r"^\s*tdpbusd\s", asm, flags=re.MULTILINE))


def sdot_count(asm: str) -> int:
    """aarch64 int8 dot products on 4 int32 lanes in an assembly listing."""
    return len(re.findall(r"^\s*sdot\s+v\d+\.4s", asm, flags=re.MULTILINE))


def drop_unnamed_tuning_log_handlers() -> None:
    """MetaSchedule (TVM 0.27) re-lists the handlers of its global logger by name when it sets up
    a tuning run; a handler without a name (left by an earlier run in the same process) makes
    that crash with ``'NoneType' object has no attribute 'format'``."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def tune_int8_dense(m: int, n: int, k: int, *, trials: int, work_dir: str | Path, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tune and build the packed u8 x s8 dense; returns the callable, the assembly count and timings."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from graphpress.backends.tvm.targets import resolve_target

    spec = resolve_target(target or "x86")
    tvm_target = spec.tvm_target()
    mod = _dense_module(m, n, k)
    drop_unnamed_tuning_log_handlers()
    start = time.perf_counter()
    database = ms.tune_tir(
        mod,
        tvm_target,
        str(work_dir),
        max_trials_global=trials,
        num_trials_per_iter=min(8, trials),
        space=vnni_space(),
        builder=ms.builder.LocalBuilder(timeout_sec=120),
        runner=ms.runner.LocalRunner(timeout_sec=60),
    )
    sch = ms.tir_integration.compile_tir(database, mod, tvm_target)
    tuning_s = time.perf_counter() - start
    if sch is None:
        raise RuntimeError(f"int8 dense {m}x{n}x{k}: no valid candidate in {trials} trials")
    lib = tvm.compile(sch.mod, target=tvm_target)
    asm = lib.mod.inspect_source("asm")
    return {"kernel": lib, "zmm_vpdpbusd": zmm_vpdpbusd_count(asm), "tuning_seconds": round(tuning_s, 1), "shape": (m, n, k)}


def run_int8_dense(kernel, a: np.ndarray, packed_b: np.ndarray, repeat: int = 0) -> tuple[np.ndarray, float | None]:
    """Run a kernel from :func:`tune_int8_dense`; with ``repeat`` also the median milliseconds."""
    import tvm

    dev = tvm.cpu()
    m, n = a.shape[0], packed_b.shape[0] * 16
    ta, tb, tc = tvm.runtime.tensor(a, dev), tvm.runtime.tensor(packed_b, dev), tvm.runtime.tensor(np.zeros((m, n), "int32"), dev)
    kernel(ta, tb, tc)
    ms_ = None
    if repeat:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            kernel(ta, tb, tc)
            times.append((time.perf_counter() - t0) * 1e3)
        ms_ = float(np.median(times))
    return tc.numpy(), ms_
