"""The shape every int8 dense kernel shares: a dot-product instruction that adds ``lanes`` int32
sums of 4 byte products, registered as a TVM tensor intrinsic, and the micro-tiled dense kernel
built around it. The ISA files (:mod:`.kernels_x86`, :mod:`.kernels_arm`) instantiate it."""

from __future__ import annotations

from typing import Any

__all__ = ["cached", "dot_dense_kernel", "register_dot_intrinsic"]

_registered: set[str] = set()
_KERNELS: dict[tuple, Any] = {}


def register_dot_intrinsic(name: str, a_dtype: str, lanes: int, llvm_intrinsic: str) -> str:
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


def _largest_divisor(n: int, options: tuple[int, ...]) -> int:
    return next(d for d in options if n % d == 0)


def dot_dense_kernel(m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (a_dtype) · B^T`` with ``B`` int8 packed
    ``[n/lanes, k/4, lanes, 4]`` and ``intrin`` (``lanes`` int32 outputs x 4 bytes of K) tensorizing
    the innermost ``lanes x 4``: rows x 4 blocks of ``lanes`` columns per micro-tile."""
    return cached((prefix, m, n, k), lambda: _dot_dense(m, n, k, a_dtype, lanes, intrin, prefix))


def _dot_dense(m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str):
    import tvm
    from tvm import te

    a = te.placeholder((m, k), a_dtype, name="A")
    b = te.placeholder((n // lanes, k // 4, lanes, 4), "int8", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j // lanes, r // 4, j % lanes, r % 4].astype("int32"), axis=r), name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    rows = _largest_divisor(m, (4, 3, 2, 1))
    cols = _largest_divisor(n // lanes, (4, 2, 1))
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, lanes])
    joo, joi = sch.split(jo, [None, cols])
    ko, ki = sch.split(kk, [None, 4])
    # column panels outermost (parallel): a panel of B (cols x lanes x K bytes) stays in L1 while
    # every row block passes over it; 91.8 vs 121 us with rows outermost at 128x512x512 (VNNI)
    sch.reorder(joo, io, ko, ii, joi, ji, ki)
    sch.parallel(joo if n // lanes // cols >= 2 else sch.fuse(joo, io))
    sch.unroll(ii)
    sch.unroll(joi)
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_{prefix}_dense_{m}x{n}x{k}"})


def cached(key: tuple, build) -> Any:
    """The kernel ``build()`` made for ``key`` earlier in this process, or a new one."""
    if key not in _KERNELS:
        _KERNELS[key] = build()
    return _KERNELS[key]
