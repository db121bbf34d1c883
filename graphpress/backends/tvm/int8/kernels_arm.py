"""aarch64 int8 kernels: the dot-product extension (``sdot``: 4 int32 lanes x 4 bytes, s8 x s8)
and its assembly counter."""

from __future__ import annotations

import re

from graphpress.backends.tvm.int8.dot import dot_dense_kernel, register_dot_intrinsic

__all__ = ["SDOT_INTRIN", "register_sdot_intrinsic", "sdot_count", "sdot_dense_kernel"]

SDOT_INTRIN = "graphpress_dot_4x4_i8i8s32_sdot"


def register_sdot_intrinsic() -> str:
    """Register the s8 x s8 -> s32 4x4 aarch64 ``sdot`` intrinsic once; returns its name (the same
    computation as TVM's ``dot_4x4_i8i8s32_sdot``)."""
    return register_dot_intrinsic(SDOT_INTRIN, "int8", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8")


def sdot_dense_kernel(m: int, n: int, k: int):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (int8) · B^T``, ``B`` packed ``[n/4, k/4, 4, 4]``
    (int8), the ``sdot`` intrinsic (4 int32 lanes x 4 bytes of K per NEON instruction) on the
    innermost 4 x 4."""
    return dot_dense_kernel(m, n, k, "int8", 4, register_sdot_intrinsic(), "sdot")


def sdot_count(asm: str) -> int:
    """aarch64 int8 dot products on 4 int32 lanes in an assembly listing."""
    return len(re.findall(r"^\s*sdot\s+v\d+\.4s", asm, flags=re.MULTILINE))
