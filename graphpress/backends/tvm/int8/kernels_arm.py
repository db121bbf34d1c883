"""aarch64 int8 kernels and their assembly counters: the dot-product extension (``sdot``: 4 int32
lanes x 4 bytes, s8 x s8) and the 8-bit matrix multiply extension (``usmmla``: a 2 x 8 u8 by
8 x 2 s8 product into a 2 x 2 int32 block; Graviton 3 and later, Neoverse V1/N2, Apple M2)."""

from __future__ import annotations

import re

from graphpress.backends.tvm.int8.dot import cached, dot_dense_kernel, register_dot_intrinsic, register_intrinsic, registered

__all__ = ["I8MM_INTRIN", "SDOT_INTRIN", "i8mm_dense_kernel", "register_sdot_intrinsic", "register_usmmla_intrinsic", "sdot_count", "sdot_dense_kernel", "usmmla_count"]

SDOT_INTRIN = "graphpress_dot_4x4_i8i8s32_sdot"
I8MM_INTRIN = "graphpress_mmla_2x2x8_u8s8s32_usmmla"


def register_sdot_intrinsic() -> str:
    """Register the s8 x s8 -> s32 4x4 aarch64 ``sdot`` intrinsic once; returns its name (the same
    computation as TVM's ``dot_4x4_i8i8s32_sdot``)."""
    return register_dot_intrinsic(SDOT_INTRIN, "int8", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8")


def sdot_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (int8) · B^T``, ``B`` packed ``[n/4, k/4, 4, 4]``
    (int8), the ``sdot`` intrinsic (4 int32 lanes x 4 bytes of K per NEON instruction) on the
    innermost 4 x 4; ``conv``: A read in place from a convolution's padded input,
    ``out_shape``: the write-back fused with what follows (:func:`~.dot.dot_dense_kernel`)."""
    return dot_dense_kernel(m, n, k, "int8", 4, register_sdot_intrinsic(), "sdot", conv=conv, out_shape=out_shape)


def sdot_count(asm: str) -> int:
    """aarch64 int8 dot products on 4 int32 lanes in an assembly listing."""
    return len(re.findall(r"^\s*sdot\s+v\d+\.4s", asm, flags=re.MULTILINE))


def register_usmmla_intrinsic() -> str:
    """Register ``C[4] (int32, a 2 x 2 block) += A[2, 8] (uint8) · B[2, 8]^T (int8)`` as one
    ``usmmla`` (the 8-bit matrix multiply extension, FEAT_I8MM) once; returns its name."""
    if registered(I8MM_INTRIN):
        return I8MM_INTRIN
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2, 8), "uint8", offset_factor=1), B: T.Buffer((2, 8), "int8", offset_factor=1), C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:4])
            for q in T.serial(0, 4):
                for k in T.serial(0, 8):
                    with T.sblock("update"):
                        vq, vk = T.axis.remap("SR", [q, k])
                        C[vq] = C[vq] + T.cast(A[vq // 2, vk], "int32") * T.cast(B[vq % 2, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2, 8), "uint8", offset_factor=1), B: T.Buffer((2, 8), "int8", offset_factor=1), C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:4])
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.usmmla.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"), A.vload([0, 0], dtype="uint8x16"), B.vload([0, 0], dtype="int8x16"), dtype="int32x4",
            )

    return register_intrinsic(I8MM_INTRIN, desc, impl)


def i8mm_dense_kernel(m: int, n: int, k: int):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/2, k/8, 2, 8]``
    (int8), ``usmmla`` on 2 x 2 blocks of C, 8 of K each. The kernel first packs A's row pairs
    ``[m/2, k/8, 2, 8]`` (one pass) so that each instruction reads 16 contiguous bytes of each
    operand; a micro-tile of 4 x 4 blocks (8 x 8 of C) holds 16 of NEON's 32 registers; the 2 x 2
    blocks are unpacked into C at the end. Needs ``m % 2 == n % 2 == k % 8 == 0``."""
    if m % 2 or n % 2 or k % 8:
        raise ValueError(f"i8mm dense {m}x{n}x{k}: M and N must be even, K a multiple of 8")
    return cached(("i8mm", m, n, k), lambda: _i8mm_dense(m, n, k))


def _i8mm_dense(m: int, n: int, k: int):
    import tvm
    from tvm import te

    intrin = register_usmmla_intrinsic()
    a = te.placeholder((m, k), "uint8", name="A")
    b = te.placeholder((n // 2, k // 8, 2, 8), "int8", name="B")
    ap = te.compute((m // 2, k // 8, 2, 8), lambda io, ko, ii, ki: a[io * 2 + ii, ko * 8 + ki], name="A_pairs")
    r = te.reduce_axis((0, k), name="k")
    blocks = te.compute(
        (m // 2, n // 2, 4), lambda io, jo, q: te.sum(ap[io, r // 8, q // 2, r % 8].astype("int32") * b[jo, r // 8, q % 2, r % 8].astype("int32"), axis=r), name="C_blocks"
    )
    c = te.compute((m, n), lambda i, j: blocks[i // 2, j // 2, (i % 2) * 2 + j % 2], name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    pack = sch.get_sblock("A_pairs")
    sch.parallel(sch.get_loops(pack)[0])
    unpack = sch.get_sblock("C")
    sch.parallel(sch.get_loops(unpack)[0])
    block = sch.get_sblock("C_blocks")
    io, jo, q, kk = sch.get_loops(block)
    rows = next(d for d in (4, 2, 1) if (m // 2) % d == 0)
    cols = next(d for d in (4, 2, 1) if (n // 2) % d == 0)
    ioo, ioi = sch.split(io, [None, rows])
    joo, joi = sch.split(jo, [None, cols])
    ko, ki = sch.split(kk, [None, 8])
    sch.reorder(joo, ioo, ko, ioi, joi, q, ki)
    sch.parallel(joo if (n // 2) // cols >= 2 else sch.fuse(joo, ioo))
    sch.unroll(ioi)
    sch.unroll(joi)
    sch.decompose_reduction(block, ko)
    sch.tensorize(q, intrin)
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_i8mm_dense_{m}x{n}x{k}"})


def usmmla_count(asm: str) -> int:
    """aarch64 8-bit matrix multiplies (``usmmla``, 2 x 8 by 8 x 2 into 2 x 2 int32) in an assembly listing."""
    return len(re.findall(r"^\s*usmmla\s+v\d+\.4s", asm, flags=re.MULTILINE))
