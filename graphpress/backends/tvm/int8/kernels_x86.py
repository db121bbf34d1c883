"""x86 int8 kernels, and the assembly counters that prove they were emitted (tensorization
failures are only warnings in TVM):

* AVX-512 VNNI: ``vpdpbusd`` on zmm, 16 int32 lanes x 4 bytes, u8 x s8;
* AMX: ``tdpbusd`` on 16 x 64-byte tiles;
* AVX-VNNI (Alder Lake and later laptops and desktops, Zen 5): the VEX ``vpdpbusd`` on ymm, 8
  lanes x 4 bytes, for CPUs with AVX2 and VNNI but no AVX-512;
* AVX2, three kernels, chosen per layer by its weight: two ``vpmaddubsw`` (u8 x s8 pairs into
  int16) added in int16, then ``vpmaddwd`` by ones, where no group of four weights can saturate
  the int16 sum (:func:`fits_u8s8_quads`: what the quantizer makes for CPUs without VNNI); one
  ``vpmaddubsw`` then ``vpmaddwd``, 8 lanes x 4 bytes -- ONNX Runtime's AVX2 sequence -- where
  no pair can (:func:`fits_u8s8_pairs`: 7-bit weights); else ``vpmaddwd`` on weights widened to int16 at compile time
  and activations widened in one pass, 8 lanes x 2 int16 products: exact for any weight, half
  the products per instruction.

TVM 0.27 ships a ``dot_16x4_vnni`` tensor intrinsic whose implementation no longer matches
LLVM 22's ``llvm.x86.avx512.vpdpbusd.512`` signature (the last two operands are now
``<64 x i8>``), so MetaSchedule's VNNI candidates fail to build and the slow code is kept
silently: :func:`register_vnni_intrinsic` registers a replacement that reinterprets the
operands. Both kernels read the weight packed ``[N/16, K/4, 16, 4]``: a 16 x 4 block is
contiguous, which is also exactly AMX's B-tile layout.
"""

from __future__ import annotations

import re

import numpy as np

from graphpress.backends.tvm.int8.dot import cached, dot_dense_kernel, register_dot_intrinsic
from graphpress.passes.int16_sums import fits_int16_quads

__all__ = [
    "VNNI_INTRIN", "amx_dense_kernel", "amx_dot_product_count", "avx2_dense_kernel", "avx2_int16_batched_kernel", "avx2_u8s8_dense_kernel", "avx2_u8s8_quad_dense_kernel",
    "avx_vnni_dense_kernel", "fits_u8s8_pairs", "fits_u8s8_quads", "register_vnni_intrinsic", "vnni_dense_kernel", "ymm_vpdpbusd_count", "ymm_vpmaddubsw_count", "ymm_vpmaddwd_count",
    "zmm_vpdpbusd_count",
]  # fmt: skip

VNNI_INTRIN = "dot_16x4_vnni_fixed"

#: Linux x86-64: arch_prctl syscall number, its request for an extended state component, AMX tile data
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def register_vnni_intrinsic() -> str:
    """Register the fixed u8 x s8 -> s32 16x4 VNNI intrinsic once; returns its name. LLVM 22's
    ``vpdpbusd.512`` takes ``<64 x i8>`` operands, which TVM's own ``dot_16x4_vnni`` does not pass."""
    return register_dot_intrinsic(VNNI_INTRIN, "uint8", 16, "llvm.x86.avx512.vpdpbusd.512")


def vnni_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/16, k/4, 16, 4]``
    (int8), the fixed VNNI intrinsic on the innermost 16 x 4. ``conv``: A read in place from a
    convolution's padded input; ``out_shape``: the write-back fused with what follows
    (:func:`~.dot.dot_dense_kernel`; every dot-product kernel here)."""
    return dot_dense_kernel(m, n, k, "uint8", 16, register_vnni_intrinsic(), "vnni", conv=conv, out_shape=out_shape)


def avx_vnni_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/8, k/4, 8, 4]``
    (int8), 256-bit ``vpdpbusd`` (AVX-VNNI, VEX-encoded where the target has no AVX-512) on the
    innermost 8 x 4; 12 accumulators of the 16 ymm registers, 6 rows x 2 column vectors (or 4 x 3),
    which leaves one for the broadcast A: ``vpdpbusd`` adds into its accumulator, so no product
    needs a register. 2 Zen 5 cores, one kernel alone: 3120x64x576 279 -> 239 us with 6 x 2
    instead of 4 x 2, 780x128x1152 265 -> 230, 780x192x1152 391 -> 340 (4 x 3: 336). The AVX2
    kernels gain nothing from more rows: their products take registers."""
    intrin = register_dot_intrinsic("graphpress_dot_8x4_avx_vnni", "uint8", 8, "llvm.x86.avx512.vpdpbusd.256")
    return dot_dense_kernel(m, n, k, "uint8", 8, intrin, "avxvnni", accumulators=12, registers=16, max_rows=6, conv=conv, out_shape=out_shape)


def _llvm(name: str, dtype: str, *args):
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def avx2_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/8, k/2, 8, 2]``
    as int16, ``vpmaddwd`` (8 int32 sums of 2 int16 products, exact) on the innermost 8 x 2, each
    pair of A (widened to int16 in one pass first) broadcast from memory; 8 accumulators of the
    16 ymm registers (each product needs a register before it is added). 0.42 TOP/s at
    196x256x1152 on 2 Zen 5 cores; 0.26-0.37 with 12 accumulators, 0.29 widening A inside the
    loop (zero-extend and broadcast: four instructions per pair).

    At most :data:`BYTE_WEIGHT_ROWS` rows, ``B`` is packed as int8 (the same layout) and each
    weight vector widened as it is loaded (``vpmovsxbw``)."""
    weight = avx2_weight_dtype(m)
    return dot_dense_kernel(m, n, k, "uint8", 8, _pmaddwd_intrinsic(weight), "avx2", depth=2, b_dtype=weight, accumulators=8, widen_a="int16",
                            conv=conv, out_shape=out_shape)  # fmt: skip


#: a product of at most this many rows -- one micro-tile of rows, which reads each weight vector
#: once -- keeps its weight int8 in memory and widens it in the loads: widened beforehand, the
#: weight is twice the bytes to stream for the same multiplies. MobileNetV2's classifier (1 x
#: 1280 x 1000) on AVX2 in the whole model: 13 us instead of 30 (2 Zen 5 cores); more rows reuse
#: each loaded vector, and widening it every time cost more than the bytes it saves (49 rows
#: level, 196 and more 1.02-1.10x the time)
BYTE_WEIGHT_ROWS = 4


def avx2_weight_dtype(m: int) -> str:
    """The dtype :func:`avx2_dense_kernel` takes an ``m``-row product's packed weight in."""
    return "int8" if m <= BYTE_WEIGHT_ROWS else "int16"


def _pmaddwd_intrinsic(weight: str = "int16") -> str:
    """``vpmaddwd`` on int16 weights, or on int8 weights sign-extended as they are loaded."""
    from tvm.script import tirx as T

    def widen(b):
        return b if weight == "int16" else T.Cast("int16x16", b)

    return register_dot_intrinsic(
        f"graphpress_dot_8x2_avx2_pmaddwd{'' if weight == 'int16' else '_s8'}", "int16", 8,
        lambda c, a, b: c + _llvm("llvm.x86.avx2.pmadd.wd", "int32x8", a, widen(b)), depth=2, b_dtype=weight,
    )  # fmt: skip


def avx2_int16_batched_kernel(batch: int, m: int, n: int, k: int):
    """Scheduled TIR ``C[e, m, n] (int32) = A[e, m, k] (int16) · B[e]^T`` for ``e < batch``, ``B``
    packed ``[batch, n/8, k/2, 8, 2]`` (int16): ``vpmaddwd`` as in :func:`avx2_dense_kernel`, A
    broadcast from memory as it is (a Winograd convolution's transformed input, :mod:`.winograd`)."""
    return dot_dense_kernel(m, n, k, "int16", 8, _pmaddwd_intrinsic(), "avx2i16", depth=2, b_dtype="int16", accumulators=8, batch=batch)


def avx2_u8s8_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/8, k/4, 8, 4]``
    (int8) whose adjacent pairs of K never sum past int16 (:func:`fits_u8s8_pairs`): ``vpmaddubsw``
    (16 int16 sums of 2 u8 x s8 products), then ``vpmaddwd`` by ones into 8 int32 sums of 4, on
    the innermost 8 x 4 -- ONNX Runtime's AVX2 u8 x s8 sequence, exact on such weights (7-bit
    weights, as quantizers make for CPUs without VNNI, always are). 0.53 TOP/s at 196x256x1152
    on 2 Zen 5 cores (the int16 kernel: 0.44); 0.38-0.52 with 12 or 16 accumulators."""
    def product(c, a, b):
        from tvm.script import tirx as T

        pairs = _llvm("llvm.x86.avx2.pmadd.ub.sw", "int16x16", a, b)
        return c + _llvm("llvm.x86.avx2.pmadd.wd", "int32x8", pairs, T.broadcast(T.int16(1), 16))

    intrin = register_dot_intrinsic("graphpress_dot_8x4_avx2_pmaddubsw", "uint8", 8, product)
    return dot_dense_kernel(m, n, k, "uint8", 8, intrin, "avx2u8s8", accumulators=8, conv=conv, out_shape=out_shape)


def fits_u8s8_pairs(w_kn) -> bool:
    """True when every pair of adjacent K rows (0-1, 2-3, ...) of an int8 ``[K, N]`` weight keeps
    ``vpmaddubsw``'s int16 pair sum exact for any uint8 activations: 255 times the pair's positive
    part at most 32767, its negative part at least -32768."""
    w = np.asarray(w_kn, np.int32)
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int32)])
    pos = np.maximum(w, 0)[0::2] + np.maximum(w, 0)[1::2]
    neg = np.minimum(w, 0)[0::2] + np.minimum(w, 0)[1::2]
    return bool(255 * pos.max(initial=0) <= 32767 and 255 * neg.min(initial=0) >= -32768)


def amx_dense_kernel(m: int, n: int, k: int):
    """TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` on AMX tiles (``TDPBUSD``), ``B`` int8 packed
    ``[n/16, k/4, 16, 4]``.

    Needs ``m % 32 == n % 32 == k % 64 == 0``. Per 32 x 32 block of C, four 16 x 16 int32
    accumulator tiles (tmm0-3) take the products of two A tiles (tmm4-5) and two B tiles (tmm6-7)
    per 64 of K and are stored at the end. The cores split the side with more blocks, so the other
    side's operand is read once per core. Linux hands out the tile state on request only: the
    kernel asks (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, per process, idempotent) before the first
    tile instruction, so a library built here runs in any process. 3.0 TOP/s at 784x128x1152 on
    2 cores, 4.5x the VNNI kernel.
    """
    if m % 32 or n % 32 or k % 64:
        raise ValueError(f"AMX dense {m}x{n}x{k}: M and N must be multiples of 32, K of 64")
    return cached(("amx", m, n, k), lambda: _amx_dense(m, n, k))


def _amx_dense(m: int, n: int, k: int):
    from tvm.script import tirx as T

    mb, nb, kb = m // 32, n // 32, k // 64
    rows_outer = int(mb >= nb)  # 1: the cores split the rows of C, 0: its columns
    outer, inner = (mb, nb) if rows_outer else (nb, mb)

    def tile(op: str, *args):
        return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{op}", *args))

    @T.prim_func
    def main(A: T.Buffer((m, k), "uint8"), B: T.Buffer((n // 16, k // 4, 16, 4), "int8"), C: T.Buffer((m, n), "int32")):
        T.func_attr({"tirx.noalias": True})
        T.evaluate(T.call_extern("int64", "syscall", T.int64(_SYS_ARCH_PRCTL), T.int64(_ARCH_REQ_XCOMP_PERM), T.int64(_XFEATURE_XTILEDATA)))
        for o in T.parallel(outer):
            # tile configuration (palette 1): eight tiles of 16 rows x 64 bytes
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for t in range(8):
                cfg[16 + 2 * t] = T.uint8(64)
                cfg[48 + t] = T.uint8(16)
            tile("ldtilecfg", T.address_of(cfg[0]))
            for i in range(inner):
                mi = o * rows_outer + i * (1 - rows_outer)
                nj = i * rows_outer + o * (1 - rows_outer)
                tile("tilezero", T.int8(0))
                tile("tilezero", T.int8(1))
                tile("tilezero", T.int8(2))
                tile("tilezero", T.int8(3))
                for kk in range(kb):
                    tile("tileloadd64", T.int8(4), T.address_of(A[mi * 32, kk * 64]), T.int64(k))
                    tile("tileloadd64", T.int8(5), T.address_of(A[mi * 32 + 16, kk * 64]), T.int64(k))
                    tile("tileloadd64", T.int8(6), T.address_of(B[nj * 2, kk * 16, 0, 0]), T.int64(64))
                    tile("tileloadd64", T.int8(7), T.address_of(B[nj * 2 + 1, kk * 16, 0, 0]), T.int64(64))
                    tile("tdpbusd", T.int8(0), T.int8(4), T.int8(6))
                    tile("tdpbusd", T.int8(1), T.int8(4), T.int8(7))
                    tile("tdpbusd", T.int8(2), T.int8(5), T.int8(6))
                    tile("tdpbusd", T.int8(3), T.int8(5), T.int8(7))
                tile("tilestored64", T.int8(0), T.address_of(C[mi * 32, nj * 32]), T.int64(n * 4))
                tile("tilestored64", T.int8(1), T.address_of(C[mi * 32, nj * 32 + 16]), T.int64(n * 4))
                tile("tilestored64", T.int8(2), T.address_of(C[mi * 32 + 16, nj * 32]), T.int64(n * 4))
                tile("tilestored64", T.int8(3), T.address_of(C[mi * 32 + 16, nj * 32 + 16]), T.int64(n * 4))
            tile("tilerelease")

    return main.with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_amx_dense_{m}x{n}x{k}"})


def zmm_vpdpbusd_count(asm: str) -> int:
    """512-bit VNNI dot products in an assembly listing (LLVM emits a few xmm ones on its own)."""
    return len(re.findall(r"vpdpbusd\s+[^\n]*zmm", asm))


def ymm_vpdpbusd_count(asm: str) -> int:
    """256-bit VNNI dot products (AVX-VNNI's VEX form or AVX-512 VL's) in an assembly listing."""
    return len(re.findall(r"vpdpbusd\s+[^\n]*ymm", asm))


def ymm_vpmaddwd_count(asm: str) -> int:
    """256-bit int16 multiply-adds (``vpmaddwd``) in an assembly listing."""
    return len(re.findall(r"vpmaddwd\s+[^\n]*ymm", asm))


def ymm_vpmaddubsw_count(asm: str) -> int:
    """256-bit u8 x s8 pair multiply-adds (``vpmaddubsw``) in an assembly listing."""
    return len(re.findall(r"vpmaddubsw\s+[^\n]*ymm", asm))


def amx_dot_product_count(asm: str) -> int:
    """AMX int8 tile dot products (``tdpbusd``, u8 x s8 -> s32) in an assembly listing."""
    return len(re.findall(r"^\s*tdpbusd\s", asm, flags=re.MULTILINE))


def avx2_u8s8_quad_dense_kernel(m: int, n: int, k: int, conv=None, out_shape=None):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed as for
    :func:`avx2_u8s8_dense_kernel`, taken two ``[8, 4]`` blocks per step (``[n/8, k/8, 2, 8,
    4]``, the same bytes), for weights whose four-weight groups never sum past int16
    (:func:`~graphpress.passes.int16_sums.fits_int16_quads`): two ``vpmaddubsw`` added in int16
    (``vpaddw``) before one ``vpmaddwd`` by ones, three multiplies per 64 products instead of
    four. ``K`` (a convolution's padded channels) a multiple of 8. ResNet-18's 3x3 convolutions
    on 2 Zen 4 cores, each timed interleaved with the pairs kernel: 8-18 % faster (56x56x64:
    503 -> 432 us, 7x7x512: 685 -> 627)."""
    def product(c, a, b):
        from tvm.script import tirx as T

        pairs = _llvm("llvm.x86.avx2.pmadd.ub.sw", "int16x16", a[0], b[0]) + _llvm("llvm.x86.avx2.pmadd.ub.sw", "int16x16", a[1], b[1])
        return c + _llvm("llvm.x86.avx2.pmadd.wd", "int32x8", pairs, T.broadcast(T.int16(1), 16))

    intrin = register_dot_intrinsic("graphpress_dot_8x8_avx2_pmaddubsw_quads", "uint8", 8, product, depth=8, halves=2)
    return dot_dense_kernel(m, n, k, "uint8", 8, intrin, "avx2u8s8q", depth=8, accumulators=8, conv=conv, out_shape=out_shape, halves=2)


def fits_u8s8_quads(w_kn) -> bool:
    """True when :func:`avx2_u8s8_quad_dense_kernel` is exact on ``[K, N]`` int8 ``w_kn``."""
    return fits_int16_quads(np.asarray(w_kn))
