"""The shape every int8 dense kernel shares: a dot-product instruction that adds ``lanes`` int32
sums of ``depth`` products (4 bytes for ``vpdpbusd``/``sdot``/``vpmaddubsw``; 2 int16 for
``vpmaddwd``), registered as a TVM tensor intrinsic, and the micro-tiled dense kernel built around
it. The ISA files (:mod:`.kernels_x86`, :mod:`.kernels_arm`) instantiate it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["cached", "dot_dense_kernel", "register_dot_intrinsic", "register_intrinsic", "registered"]

_registered: set[str] = set()
_KERNELS: dict[tuple, Any] = {}


def register_dot_intrinsic(name: str, a_dtype: str, lanes: int, product: str | Callable[[Any, Any, Any], Any], depth: int = 4, b_dtype: str = "int8") -> str:
    """Register ``C[lanes] (int32) += A[depth] (a_dtype) · B[lanes, depth] (b_dtype)`` as a tensor
    intrinsic, the ``depth`` values of A broadcast to every lane; once per process.

    ``product``: an LLVM intrinsic that takes C, A and B and returns the new C (``vpdpbusd``,
    ``sdot``), or ``product(c, a, b)`` building the new C from vectors of ``lanes`` int32,
    ``lanes * depth`` of ``a_dtype`` and of ``b_dtype`` (instructions that do not accumulate).

    Not via ``tvm.s_tir.tensor_intrin``: importing that package parses every target's intrinsics
    (CUDA, ARM, Hexagon, ...) in TVMScript first, about 30 s on 2 cores."""
    if name in _registered:
        return name
    from tvm.script import tirx as T

    width = depth * lanes
    if isinstance(product, str):
        intrinsic = product

        def product(c, a, b):
            return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(intrinsic), c, a, b, dtype=f"int32x{lanes}")

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((lanes, depth), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((lanes, depth), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x{depth}"), dtype="int32"), lanes), dtype=f"{a_dtype}x{width}")
            b = B.vload([0, 0], dtype=f"{b_dtype}x{width}")
            C[T.ramp(T.int32(0), 1, lanes)] = product(C.vload([0], dtype=f"int32x{lanes}"), a, b)

    return register_intrinsic(name, desc, impl)


def register_intrinsic(name: str, desc, impl) -> str:
    """Register a tensor intrinsic once per process (another caller may have registered it)."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.register(name, desc, impl)
    except Exception as e:  # already registered in this process by someone else
        if "already" not in str(e).lower():
            raise
    _registered.add(name)
    return name


def registered(name: str) -> bool:
    """Whether :func:`register_intrinsic` registered ``name`` in this process."""
    return name in _registered


def _micro_tile(m: int, blocks: int, accumulators: int) -> tuple[int, int]:
    """Rows x column blocks of a micro-tile: as many accumulator registers as the budget allows
    (``rows`` dividing ``m``, ``cols`` dividing ``blocks``), then the fewest loads per step
    (``rows`` broadcasts + ``cols`` weight vectors)."""
    options = [(r, c) for r in (4, 3, 2, 1) for c in (4, 3, 2, 1) if m % r == 0 and blocks % c == 0 and r * c <= accumulators]
    return max(options, key=lambda rc: (rc[0] * rc[1], -(rc[0] + rc[1]), rc[0]))


def dot_dense_kernel(
    m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str, depth: int = 4, b_dtype: str = "int8", accumulators: int = 16,
    widen_a: bool = False, conv: dict[str, Any] | None = None,
):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (a_dtype) · B^T`` with ``B`` packed
    ``[n/lanes, k/depth, lanes, depth]`` (``b_dtype``) and ``intrin`` (``lanes`` int32 outputs x
    ``depth`` of K) tensorizing the innermost ``lanes x depth``: micro-tiles of rows x blocks of
    ``lanes`` columns holding at most ``accumulators`` vector registers (16 of AVX-512's 32
    registers; 8 of AVX2's 16, which also hold the broadcast A and the products).

    ``widen_a``: A is first converted to ``b_dtype`` in a workspace of the kernel (one vector pass),
    so that the innermost loop broadcasts it straight from memory (``intrin`` takes A in
    ``b_dtype`` then).

    ``conv``: the geometry of a convolution (:func:`~.conv_layout.conv_geometry`): the kernel's
    first argument is then its padded NHWC input ``XP[N, Hp, Wp, Cp]`` and A its unfolded rows
    read in place -- row ``i`` is output pixel ``min(i, M - 1)``, column ``(ky, kx, c)`` the byte
    ``XP[.., y + ky, x + kx, c]`` -- with the reduction split into ``ky·kx`` runs of ``Cp``
    contiguous bytes, so no im2col copy is written and read back."""
    geometry = None if conv is None else tuple(conv[f] for f in _CONV_FIELDS)
    key = (prefix, m, n, k, depth, b_dtype, accumulators, widen_a, geometry)
    return cached(key, lambda: _dot_dense(m, n, k, a_dtype, lanes, intrin, prefix, depth, b_dtype, accumulators, widen_a, conv))


#: the geometry fields an implicit-im2col kernel depends on
_CONV_FIELDS = ("n", "hp", "wp", "cp", "kh", "kw", "oh", "ow", "m", "strides", "dilations")


def _dot_dense(m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str, depth: int, b_dtype: str, accumulators: int, widen_a: bool,
               conv: dict[str, Any] | None):  # fmt: skip
    import tvm
    from tvm import te

    if conv is None:
        a = te.placeholder((m, k), a_dtype, name="A")
        name = f"graphpress_{prefix}_dense_{m}x{n}x{k}"
    else:
        g = conv
        a = te.placeholder((g["n"], g["hp"], g["wp"], g["cp"]), a_dtype, name="XP")
        (sh, sw), (dh, dw) = g["strides"], g["dilations"]
        name = f"graphpress_{prefix}_conv_{m}x{n}x{k}_in{g['hp']}x{g['wp']}_k{g['kh']}x{g['kw']}_s{sh}x{sw}_d{dh}x{dw}"
    b = te.placeholder((n // lanes, k // depth, lanes, depth), b_dtype, name="B")
    a_wide = te.compute(a.shape, lambda *idx: a(*idx).astype(b_dtype), name="A_wide") if widen_a else a

    def read(i, kk):
        if conv is None:
            return a_wide[i, kk]
        q, kwc, cp = te.min(i, g["m"] - 1), g["kw"] * g["cp"], g["cp"]
        y, x = (q // g["ow"]) % g["oh"] * sh + kk // kwc * dh, q % g["ow"] * sw + (kk // cp) % g["kw"] * dw
        return a_wide[q // (g["oh"] * g["ow"]), y, x, kk % cp]

    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(read(i, r).astype("int32") * b[j // lanes, r // depth, j % lanes, r % depth].astype("int32"), axis=r), name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    if widen_a:
        widen = sch.get_sblock("A_wide")
        *outer, wk = sch.get_loops(widen)
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        extent = int(a.shape[-1])
        sch.vectorize(sch.split(wk, [None, 16] if extent % 16 == 0 else [None, extent])[1])
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    rows, cols = _micro_tile(m, n // lanes, accumulators)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, lanes])
    joo, joi = sch.split(jo, [None, cols])
    ko, ki = sch.split(kk, [None, depth])
    # a convolution's K: one loop per (ky, kx), each over Cp contiguous bytes of one input pixel
    k_loops = [ko] if conv is None else list(sch.split(ko, [g["kh"] * g["kw"], g["cp"] // depth]))
    # column panels outermost (parallel): a panel of B (cols x lanes x K) stays in L1 while
    # every row block passes over it; 91.8 vs 121 us with rows outermost at 128x512x512 (VNNI)
    sch.reorder(joo, io, *k_loops, ii, joi, ji, ki)
    sch.parallel(joo if n // lanes // cols >= 2 else sch.fuse(joo, io))
    sch.unroll(ii)
    sch.unroll(joi)
    sch.decompose_reduction(block, k_loops[0])
    sch.tensorize(ji, intrin)
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": name})


def cached(key: tuple, build) -> Any:
    """The kernel ``build()`` made for ``key`` earlier in this process, or a new one."""
    if key not in _KERNELS:
        _KERNELS[key] = build()
    return _KERNELS[key]
