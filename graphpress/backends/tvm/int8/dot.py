"""The shape every int8 dense kernel shares: a dot-product instruction that adds ``lanes`` int32
sums of ``depth`` products (4 bytes for ``vpdpbusd``/``sdot``/``vpmaddubsw``; 2 int16 for
``vpmaddwd``), registered as a TVM tensor intrinsic, and the micro-tiled dense kernel built around
it. The ISA files (:mod:`.kernels_x86`, :mod:`.kernels_arm`) instantiate it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from graphpress.backends.tvm.schedules import parallel_rows

__all__ = ["cached", "dot_dense_kernel", "padded_shape", "register_dot_intrinsic", "register_intrinsic", "registered", "schedule_dot_kernels"]

_registered: set[str] = set()

#: the suffix of a dot-product intrinsic's variant that accumulates into "local" memory
LOCAL = "_local"
_KERNELS: dict[tuple, Any] = {}


def register_dot_intrinsic(name: str, a_dtype: str, lanes: int, product: str | Callable[[Any, Any, Any], Any], depth: int = 4, b_dtype: str = "int8", halves: int = 1) -> str:
    """Register ``C[lanes] (int32) += A[depth] (a_dtype) · B[lanes, depth] (b_dtype)`` as a tensor
    intrinsic, the ``depth`` values of A broadcast to every lane; once per process.

    ``product``: an LLVM intrinsic that takes C, A and B and returns the new C (``vpdpbusd``,
    ``sdot``), or ``product(c, a, b)`` building the new C from vectors of ``lanes`` int32,
    ``lanes * depth`` of ``a_dtype`` and of ``b_dtype`` (instructions that do not accumulate).

    Not via ``tvm.s_tir.tensor_intrin``: importing that package parses every target's intrinsics
    (CUDA, ARM, Hexagon, ...) in TVMScript first, about 30 s on 2 cores.

    ``halves``: B holds the ``depth`` products of each lane as that many blocks of ``lanes x
    depth/halves`` (``B[halves, lanes, depth/halves]``: consecutive blocks of the ``depth/halves``
    layout), and ``product(c, a, b)`` takes lists of one broadcast A and one B vector per block."""
    if name in _registered:
        return name
    if halves > 1:
        return _register_split_intrinsic(name, a_dtype, lanes, product, depth, b_dtype, halves)
    from tvm.script import tirx as T

    width = depth * lanes
    if isinstance(product, str):
        intrinsic = product

        def product(c, a, b):
            return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(intrinsic), c, a, b, dtype=f"int32x{lanes}")

    # C in global memory (a kernel's output), and in "local" memory (the micro-tile of a kernel
    # whose write-back is fused): tensorize matches the scope
    for scope, registered_name in (("global", name), ("local", name + LOCAL)):

        @T.prim_func(s_tir=True)
        def desc(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((lanes, depth), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, depth):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((lanes, depth), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
                T.writes(C[0:lanes])
                # operands inline: a name bound here becomes a buffer, allocated by the runtime per call
                C[T.ramp(T.int32(0), 1, lanes)] = product(
                    C.vload([0], dtype=f"int32x{lanes}"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x{depth}"), dtype="int32"), lanes), dtype=f"{a_dtype}x{width}"),
                    B.vload([0, 0], dtype=f"{b_dtype}x{width}"),
                )

        register_intrinsic(registered_name, desc, impl)
    return name


def _register_split_intrinsic(name: str, a_dtype: str, lanes: int, product: Callable[[Any, Any, Any], Any], depth: int, b_dtype: str, halves: int) -> str:
    from tvm.script import tirx as T

    sub = depth // halves
    width = sub * lanes

    def split_product(C, A, B):  # one broadcast A and one B vector per block
        a = [T.reinterpret(T.broadcast(T.reinterpret(A.vload([h * sub], f"{a_dtype}x{sub}"), dtype="int32"), lanes), dtype=f"{a_dtype}x{width}") for h in range(halves)]
        return product(C.vload([0], dtype=f"int32x{lanes}"), a, [B.vload([h, 0, 0], dtype=f"{b_dtype}x{width}") for h in range(halves)])

    for scope, registered_name in (("global", name), ("local", name + LOCAL)):

        @T.prim_func(s_tir=True)
        def desc(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((halves, lanes, sub), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:halves, 0:lanes, 0:sub])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, depth):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk // sub, vi, vk % sub], "int32")

        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((depth,), a_dtype, offset_factor=1), B: T.Buffer((halves, lanes, sub), b_dtype, offset_factor=1), C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:halves, 0:lanes, 0:sub])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = split_product(C, A, B)

        register_intrinsic(registered_name, desc, impl)
    return name


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


def _micro_tile(m: int, blocks: int, accumulators: int, registers: int | None = None, max_rows: int = 4, min_rows: int = 1) -> tuple[int, int]:
    """Rows x column blocks of a micro-tile: as many accumulator registers as the budget allows
    (``rows`` dividing ``m``, from ``min_rows`` to ``max_rows``; ``cols`` dividing ``blocks``; with
    ``registers``, the accumulators, the ``cols`` weight vectors and one broadcast must fit them),
    then the fewest loads per step (``rows`` broadcasts + ``cols`` weight vectors)."""
    options = [(r, c) for r in range(max_rows, min_rows - 1, -1) for c in (4, 3, 2, 1)
               if m % r == 0 and blocks % c == 0 and r * c <= accumulators and (registers is None or r * c + c + 1 <= registers)]  # fmt: skip
    return max(options, key=lambda rc: (rc[0] * rc[1], -(rc[0] + rc[1]), rc[0]))


def dot_dense_kernel(
    m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str, depth: int = 4, b_dtype: str = "int8", accumulators: int = 16,
    widen_a: str | None = None, conv: dict[str, Any] | None = None, out_shape: tuple[int, ...] | None = None, registers: int | None = None, max_rows: int = 4,
    halves: int = 1, batch: int = 0,
):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (a_dtype) · B^T`` with ``B`` packed
    ``[n/lanes, k/depth, lanes, depth]`` (``b_dtype``) and ``intrin`` (``lanes`` int32 outputs x
    ``depth`` of K) tensorizing the innermost ``lanes x depth``: micro-tiles of rows x blocks of
    ``lanes`` columns holding at most ``accumulators`` vector registers (16 of AVX-512's 32
    registers; 8 of AVX2's 16, which also hold the broadcast A and the products; ``registers`` and
    ``max_rows``: see :func:`_micro_tile`).

    ``widen_a``: A is first converted to this dtype in a workspace of the kernel (one vector pass),
    so that the innermost loop broadcasts it straight from memory (``intrin`` takes A in it then).

    ``conv``: the geometry of a convolution (:func:`~.conv_layout.conv_geometry`): the kernel's
    first argument is then its padded NHWC input ``XP[N, Hp, Wp, Cp]`` and A its unfolded rows
    read in place -- row ``i`` is output pixel ``min(i, M - 1)``, column ``(ky, kx, c)`` the byte
    ``XP[.., y + ky, x + kx, c]`` -- with the reduction split into ``ky·kx`` runs of ``Cp``
    contiguous bytes, so no im2col copy is written and read back; with row runs (``rp``), ``XP``
    is :func:`padded_shape`'s rows of bytes and the reduction ``ky`` runs of ``rp`` bytes.

    ``halves``: the intrinsic takes B as that many consecutive ``[lanes, depth/halves]`` blocks
    (:func:`register_dot_intrinsic`), ``B`` packed ``[n/lanes, k/depth, halves, lanes,
    depth/halves]``, the same bytes as the ``depth/halves`` layout.

    ``batch``: ``batch`` independent products in one kernel, ``C[batch, m, n] = A[batch, m, k] ·
    B[batch]^T`` (``B`` packed ``[batch, n/lanes, k/depth, lanes, depth]``; not with ``conv``,
    ``out_shape``, ``widen_a`` or ``halves``; a Winograd convolution's 16, :mod:`.winograd`): blocks
    of rows of all the products over the cores where one product's weight stays in L2
    (:data:`BATCH_ROWS_BYTES`), else the products' column panels.

    ``out_shape``: the kernel writes ``out[..., j] = C[row, j] - corr[j]`` of that shape instead
    (its leading dims flattened are the rows, its last at most ``n`` columns; ``corr`` an int32
    ``[n]`` third argument), and is returned *unscheduled*, fusable (``op_pattern`` 4) and
    without a global symbol: Relax fuses the requantization behind it (an NHWC convolution's
    output is already the next layer's layout) and :func:`schedule_dot_kernels` schedules the
    fused kernel, the write-back computed on each micro-tile while it is in registers and L1."""
    geometry = None if conv is None else tuple(conv[f] for f in _CONV_FIELDS)
    if batch and (conv is not None or out_shape is not None or widen_a or halves != 1):
        raise ValueError("a batched dot kernel reads a plain A, writes C and takes B whole")
    key = (prefix, m, n, k, depth, b_dtype, accumulators, registers, max_rows, widen_a, geometry, None if out_shape is None else tuple(out_shape), halves, batch)
    tile = (accumulators, registers, max_rows)
    return cached(key, lambda: _dot_dense(m, n, k, a_dtype, lanes, intrin, prefix, depth, b_dtype, tile, widen_a, conv, out_shape, halves, batch))


#: a fused kernel whose int8 weight is at most half this many bytes runs rows outermost (about
#: half a core's L2 cache; :data:`~graphpress.backends.tvm.schedules.PANEL_BYTES`)
PANEL_BYTES = 512 * 1024

#: a batched product whose weight per product is at most this many bytes runs blocks of rows
#: over the cores (else column panels)
BATCH_ROWS_BYTES = 256 * 1024

#: the geometry fields an implicit-im2col kernel depends on
_CONV_FIELDS = ("n", "hp", "wp", "cp", "kh", "kw", "oh", "ow", "m", "strides", "dilations", "rp")


def padded_shape(g: dict[str, Any]) -> tuple[int, ...]:
    """The shape of :func:`~.conv_layout.nhwc_pad_kernel`'s output for geometry ``g``: ``[N, Hp,
    Wp, Cp]``, or with row runs (``g["rp"]``) ``[N, Hp + 1, Wp * C]``: rows of bytes, and one
    more row of padding that the last windows' run padding reads."""
    return (g["n"], g["hp"] + 1, g["wp"] * g["cp"]) if g["rp"] else (g["n"], g["hp"], g["wp"], g["cp"])


#: the schedule of every dot-product block made in this process, by the block's name (which
#: Relax's fusion keeps): what :func:`schedule_dot_kernels` needs to schedule a fused kernel
_DOT_BLOCKS: dict[str, dict[str, Any]] = {}


def _dot_dense(m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str, depth: int, b_dtype: str, tile: tuple, widen_a: str | None,
               conv: dict[str, Any] | None, out_shape: tuple[int, ...] | None, halves: int = 1, batch: int = 0):  # fmt: skip
    import tvm
    from tvm import te

    block = f"graphpress_dot_{len(_DOT_BLOCKS)}"

    def dims(*extents):  # a fusable kernel's buffers in the int64 shapes of Relax's (FuseTIR matches them by type)
        return tuple(tvm.tirx.IntImm("int64", e) for e in extents) if out_shape is not None else extents

    lead = (batch,) if batch else ()
    if conv is None:
        a = te.placeholder(dims(*lead, m, k), a_dtype, name="A")
        name = f"graphpress_{prefix}_dense_{f'{batch}x' if batch else ''}{m}x{n}x{k}"
    else:
        g = conv
        a = te.placeholder(dims(*padded_shape(g)), a_dtype, name="XP")
        (sh, sw), (dh, dw) = g["strides"], g["dilations"]
        name = f"graphpress_{prefix}_conv_{m}x{n}x{k}_in{g['hp']}x{g['wp']}_k{g['kh']}x{g['kw']}_s{sh}x{sw}_d{dh}x{dw}"
    sub = depth // halves
    if halves == 1:
        b = te.placeholder(dims(*lead, n // lanes, k // depth, lanes, depth), b_dtype, name="B")
    else:  # the same bytes as [n/lanes, k/sub, lanes, sub]: each step takes `halves` consecutive blocks
        b = te.placeholder(dims(n // lanes, k // depth, halves, lanes, sub), b_dtype, name="B")

    def weight(j, r):
        if halves == 1:
            return b[j // lanes, r // depth, j % lanes, r % depth]
        return b[j // lanes, r // depth, r % depth // sub, j % lanes, r % sub]

    a_wide = te.compute(a.shape, lambda *idx: a(*idx).astype(widen_a), name=f"{block}_widen") if widen_a else a

    def read(i, kk):
        if conv is None:
            return a_wide[i, kk]
        q, kwc, cp, rp = te.min(i, g["m"] - 1), g["kw"] * g["cp"], g["cp"], g["rp"]
        if rp:  # row runs: rp bytes from the window row's first tap on
            return a_wide[q // (g["oh"] * g["ow"]), (q // g["ow"]) % g["oh"] * sh + kk // rp * dh, q % g["ow"] * sw * cp + kk % rp]
        y, x = (q // g["ow"]) % g["oh"] * sh + kk // kwc * dh, q % g["ow"] * sw + (kk // cp) % g["kw"] * dw
        return a_wide[q // (g["oh"] * g["ow"]), y, x, kk % cp]

    r = te.reduce_axis(dims(0, k), name="k")
    if batch:
        c = te.compute(dims(batch, m, n), lambda e, i, j: te.sum(a[e, i, r].astype("int32") * b[e, j // lanes, r // depth, j % lanes, r % depth].astype("int32"), axis=r),
                       name=block)  # fmt: skip
    else:
        c = te.compute(dims(m, n), lambda i, j: te.sum(read(i, r).astype("int32") * weight(j, r).astype("int32"), axis=r), name=block)
    _DOT_BLOCKS[block] = {
        "m": m, "n": n, "k": k, "lanes": lanes, "depth": depth, "intrin": intrin, "tile": tile,
        "widen": f"{block}_widen" if widen_a else None, "batch": batch, "k_runs": None if conv is None else (g["kh"], g["rp"] // depth) if g["rp"] else (g["kh"], g["kw"], g["cp"] // depth),
        "rows_real": m if out_shape is None else math.prod(int(d) for d in out_shape[:-1]),
    }  # fmt: skip
    if out_shape is None:
        sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
        _schedule_dot(sch, sch.get_sblock(block), _DOT_BLOCKS[block])
        return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": name})
    corr = te.placeholder(dims(n), "int32", name="corr")
    shape = [int(d) for d in out_shape]

    def row(idx):
        flat = idx[0]
        for d, size in zip(idx[1:], shape[1:-1]):
            flat = flat * size + d
        return flat

    out = te.compute(dims(*shape), lambda *idx: c[row(idx[:-1]), idx[-1]] - corr[idx[-1]], name=f"{block}_out")
    # no global symbol: once fused with what follows, nothing is left of this function
    return te.create_prim_func([a, b, corr, out]).without_attr("global_symbol").with_attr({"op_pattern": 4, "graphpress.kernel": name})


def _schedule_dot(sch, block, p: dict[str, Any], at_tile: Callable[[Any], None] | None = None, local: bool = False) -> None:
    """The micro-tiled schedule of a dot-product block (made by :func:`_dot_dense`).
    ``at_tile(loop)``: called with the loop under which one micro-tile of C is complete, before
    the reduction is split and tensorized (what moves under it must see one reduction block).
    ``local``: C is in "local" memory (one micro-tile; TVM allocates it from the runtime's
    workspace once per iteration of the parallel loop, which takes several tiles)."""
    if p["widen"] is not None:
        widen = sch.get_sblock(p["widen"])
        *outer, wk = sch.get_loops(widen)
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        extent = int(sch.get(wk).extent)
        sch.vectorize(sch.split(wk, [None, 16] if extent % 16 == 0 else [None, extent])[1])
    lanes, depth = p["lanes"], p["depth"]
    *outer, i, j, kk = sch.get_loops(block)
    # a write-back on the tiles: no tile of padding rows only (rows padded to 4 for one output
    # pixel, tiles of 2). TVM cannot give such a tile an empty write-back, so it wrote the first
    # real row from the tile's own C, whose rows it holds in local memory from its first one on:
    # read 2 rows before the buffer (PP-OCR's squeeze-and-excitation convolutions, 1 pixel)
    min_rows = 1 if at_tile is None else p["m"] - p["rows_real"] + 1
    rows, cols = _micro_tile(p["m"], p["n"] // lanes, *p["tile"], min_rows=min_rows)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, lanes])
    joo, joi = sch.split(jo, [None, cols])
    ko, ki = sch.split(kk, [None, depth])
    # a convolution's K: loops over ky and kx, each step over Cp contiguous bytes of one input
    # pixel, so that the pixel's address is linear in the loops (one ky.kx loop of 49 left the
    # stem's 7x7 taps a division by 7 and vector-to-scalar moves per step: 16 vpdpbusd among
    # 25 other instructions)
    k_loops = [ko] if p["k_runs"] is None else list(sch.split(ko, list(p["k_runs"])))
    if at_tile is not None and p["k"] * p["n"] * 2 <= PANEL_BYTES:
        # a fused write-back: rows outermost, so that each core writes whole rows of the output
        # (column panels over the cores wrote halves of the same cache lines: MobileNetV2's 16 ->
        # 96 expansion took 0.16 ms); the weight is small enough to stay cached for every row
        sch.reorder(io, joo, *k_loops, ii, joi, ji, ki)
        sch.parallel(sch.split(io, [None, _per_iteration(p["m"] // rows)])[0])
        tile = joo
    elif p.get("batch") and p["k"] * p["n"] * 2 <= BATCH_ROWS_BYTES:
        # a product's weight small enough to stay in L2 for all its rows: blocks of rows over the
        # cores, each block's rows read once for every column panel
        e = outer[-1]
        sch.reorder(e, io, joo, *k_loops, ii, joi, ji, ki)
        ioo, _ = sch.split(io, [None, _per_iteration(p["m"] // rows)])
        sch.parallel(sch.fuse(e, ioo))
        tile = joo
    elif p.get("batch"):  # each product's column panels, all products' together over the cores
        e = outer[-1]
        sch.reorder(e, joo, io, *k_loops, ii, joi, ji, ki)
        sch.parallel(sch.fuse(e, joo))
        tile = io
    else:
        # column panels outermost (parallel): a panel of B (cols x lanes x K) stays in L1 while
        # every row block passes over it; 91.8 vs 121 us with rows outermost at 128x512x512 (VNNI)
        sch.reorder(joo, io, *k_loops, ii, joi, ji, ki)
        if p["n"] // lanes // cols >= 2:
            sch.parallel(joo)
            tile = io
        else:
            fused = sch.fuse(joo, io)
            outer, tile = sch.split(fused, [None, _per_iteration(int(sch.get(fused).extent))])
            sch.parallel(outer)
    if at_tile is not None:
        at_tile(tile)
    sch.unroll(ii)
    sch.unroll(joi)
    sch.decompose_reduction(block, k_loops[0])
    sch.tensorize(ji, p["intrin"] + (LOCAL if local else ""))


def _per_iteration(tiles: int) -> int:
    """Tiles per iteration of the parallel loop: a few where there are many (what a tile
    allocates -- a fused kernel's C tile -- is allocated once per iteration), at least 32
    iterations to spread over the cores."""
    return next((f for f in (8, 4, 2) if tiles % f == 0 and tiles // f >= 32), 1)


def schedule_dot_kernels(mod) -> tuple[Any, int, list[str]]:
    """Schedule every kernel of ``mod`` built around a fusable dot-product block
    (:func:`dot_dense_kernel` with ``out_shape``): the block micro-tiled, and what Relax fused
    behind it (the write-back, the requantization) inlined and computed on each micro-tile; where
    that write-back cannot be moved onto the tiles, it runs after the product as its own parallel
    loop nest. Returns the module, how many kernels it scheduled and the names of those whose
    write-back runs apart."""
    import tvm

    count, apart = 0, []
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs or {}).get("tirx.is_scheduled", False):
            continue
        sch = tvm.s_tir.Schedule(func)
        try:
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
        except Exception:  # noqa: BLE001 - no root block: not one of these
            continue
        dots = [b for b in blocks if sch.get(b).name_hint in _DOT_BLOCKS]
        if len(dots) != 1:
            continue
        for inline_broadcasts in (False, True):
            try:
                _schedule_fused(sch, blocks, dots[0], inline_broadcasts)
                break
            except Exception:  # noqa: BLE001 - again with what the write-back reads inlined, then apart
                sch = tvm.s_tir.Schedule(func)
                blocks = sch.get_child_blocks(sch.get_sblock("root"))
                dots = [b for b in blocks if sch.get(b).name_hint in _DOT_BLOCKS]
        else:  # the write-back as its own loop nests
            p = _DOT_BLOCKS[sch.get(dots[0]).name_hint]
            others = [sch.get(b).name_hint for b in blocks if not b.same_as(dots[0]) and sch.get(b).name_hint != p["widen"]]
            _schedule_dot(sch, dots[0], p)
            for name in others:
                parallel_rows(sch, sch.get_sblock(name))
            apart.append(gv.name_hint)
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        count += 1
    return mod, count, apart


def _schedule_fused(sch, blocks, dot, inline_broadcasts: bool = False) -> None:
    """The write-back Relax fused behind the product computed on each micro-tile of it.

    ``inline_broadcasts``: what is broadcast over the output and read by the write-back only (a
    per-token quantizer's row zero points, cast to int32 with ONNX's isfinite/floor_mod checks)
    is inlined into it too, and a value the write-back reads more than once (a GELU's input) is
    a block of its own on each tile instead of inlined into every use. TVM moves the write-back
    onto the tiles (``reverse_compute_at``) only where every block it reads is under them, so
    with the zero points in a loop nest of their own, MiniLM's per-token kernels wrote their
    int32 product whole and ran their write-back's steps as loop nests of their own over the
    whole output (per-token + SmoothQuant MiniLM, both forms timed in one process: AVX2 11.26 ->
    9.98 ms, AVX-512 VNNI 6.63 -> 5.18 ms). Tried where the first attempt, with the broadcasts
    in loop nests of their own (each computed once per row), fails."""
    import tvm

    p = _DOT_BLOCKS[sch.get(dot).name_hint]
    at = next(i for i, b in enumerate(blocks) if b.same_as(dot))
    # elementwise work Relax fused in front (the other input of a residual addition): into the
    # write-back that reads it, or its own parallel loop nest before the product. What the
    # product itself reads (a per-token quantization of its activation) is computed once, in its
    # own loop nest: inlined, every column tile would quantize its rows again (MiniLM's
    # 128x1536x384 FFN kernel quantized each row 32 times)
    out_size = _domain_size(sch, blocks[-1])
    for name in [sch.get(b).name_hint for b in blocks[:at] if sch.get(b).name_hint != p["widen"]]:
        block = sch.get_sblock(name)
        # so is what is broadcast over the output (a per-row zero point cast to int32, with
        # ONNX's isfinite/floor_mod checks): inlined, every output element would pay it
        feeds_dot = any(c.same_as(dot) for c in sch.get_consumers(block))
        if feeds_dot or (_domain_size(sch, block) * 4 <= out_size and not inline_broadcasts):
            parallel_rows(sch, block)
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable
            parallel_rows(sch, block)
    after = [sch.get(b).name_hint for b in blocks[at + 1 :]]
    kept = []  # with inline_broadcasts: the value the write-back reads more than once, a block of its own on the tiles
    for name in after[:-1]:  # the chain into the last block: one expression per output element
        block = sch.get_sblock(name)
        if inline_broadcasts and not kept and len(sch.get_consumers(block)) > 1:
            kept.append(block)
            continue
        sch.compute_inline(block)
    last = sch.get_sblock(after[-1])
    if inline_broadcasts and any(_loads_of(sch.get(b), sch.get(dot).name_hint) > 1 for b in [*kept, last]):
        # the broadcast's chain inlined would be computed once per read of the product
        raise ValueError("the write-back reads the product more than once")
    dims = [int(iv.dom.extent) for iv in sch.get(last).iter_vars]
    if len(dims) > 2:  # rows flattened as in C, so that a tile's rows are a range of them
        strides = [1] * (len(dims) - 1)
        for d in range(len(dims) - 3, -1, -1):
            strides[d] = strides[d + 1] * dims[d + 1]
        flat = tvm.tirx.IndexMap.from_func(lambda *idx: (sum(v * s for v, s in zip(idx[:-1], strides)), idx[-1]), ndim=len(dims))
        for block in [*kept, last]:
            sch.transform_block_layout(block, flat)
    for block in kept:
        sch.set_scope(block, 0, "local")
    # one micro-tile of C at a time, in "local" memory: allocated once per iteration of the
    # parallel loop (a few tiles, :func:`_per_iteration`; once per tile, the allocations
    # cost more than the fusion saved: ResNet-18 2.43 -> 2.56 ms)
    sch.set_scope(dot, 0, "local")

    def at_tile(tile) -> None:
        for block in [*kept, last]:
            sch.reverse_compute_at(block, tile)

    _schedule_dot(sch, dot, p, at_tile=at_tile, local=True)
    for block in [*kept, last]:
        inner = sch.get_loops(block)[-1]
        extent = sch.get(inner).extent
        if hasattr(extent, "value") and int(extent) % p["lanes"] == 0:
            sch.vectorize(sch.split(inner, [None, p["lanes"]])[1])


def _loads_of(block, name: str) -> int:
    """How many loads of the buffer ``name`` the body of ``block`` has (in its TVMScript)."""
    import re

    return len(re.findall(rf"\b{re.escape(name)}\[", block.body.script()))


def _domain_size(sch, block) -> int:
    """How many points a block's iteration domain has (0 when an extent is not known)."""
    size = 1
    for iv in sch.get(block).iter_vars:
        if not hasattr(iv.dom.extent, "value"):
            return 0
        size *= int(iv.dom.extent)
    return size


def cached(key: tuple, build) -> Any:
    """The kernel ``build()`` made for ``key`` earlier in this process, or a new one."""
    if key not in _KERNELS:
        _KERNELS[key] = build()
    return _KERNELS[key]
