"""Generic CPU schedules: the loop nests every CPU build uses for kernels no tuning record covers.

TVM's default CPU pipeline schedules nothing, so a kernel without a record runs as one serial
loop nest. :func:`schedule_injective` gives each such kernel a parallel, vectorized schedule:

* elementwise (injective) kernels: contiguous rows of about :data:`ROW_ELEMENTS` elements
  in parallel, the innermost loop vectorized (fusing all loops would put a div/mod per
  vector lane: 9x on a requantization);
* reductions: every block computed per output row, rows in parallel, the last spatial loop
  innermost and vectorized (depthwise convs included; a pooling kernel's row accumulated in
  registers, :data:`POOL_ACCUMULATORS`); whole-tensor reductions use ``rfactor`` into vector
  lanes.

Used by the fp32 builds (:mod:`graphpress.backends.tvm.tuning`) and by the int8 path
(:mod:`graphpress.backends.tvm.int8`), which is why it lives apart from both.

:func:`schedule_gemm` gives matrix products and convolutions (in NHWC/HWIO layout: the output
channel innermost in the output and the weights) a register-blocked schedule computed from the
target's vector unit alone, no tuning: a tile of ``mr`` rows by ``nr = v * lanes`` columns is
accumulated in registers over the whole reduction (one broadcast of the left operand and
``v`` vector loads of the right one per ``mr * v`` FMAs), written back with its epilogue
(bias, activation) while it is hot, tiles spread over the cores. ``mr`` and ``v`` are the
tile whose ``mr * v`` accumulators, ``v`` loads and one broadcast fit the register file and
divide the kernel's extents, and that loads least per FMA among those with enough accumulators
to hide the FMA latency (:func:`register_tile`; a depthwise one, the most accumulators). Weights larger than
:data:`PANEL_BYTES` are read one column panel at a time, and a convolution's panel that alone
exceeds it one block of :data:`IC_BLOCK` input channels at a time for all of its rows; such a
weight, when every caller passes it as a constant, is packed panel-major at compile time
(:func:`panel_major`: each panel, and each block of a panel, one contiguous stream, as ONNX
Runtime's NCHWc filters are). The tile's intermediate
stages stay in local scope, and a depthwise window unrolls its last loop. A padded convolution
skips the window rows, and a tile as wide as the output the window columns, that read only the
padding's zeros (:func:`_skip_padded_rows`). A depthwise convolution takes the register tile on
every map (a float one over a wide map once took the generic per-pixel schedule, while the tile's
accumulators were a workspace in memory; with them on the stack the tile is faster: MobileNetV2's
56x56x144 92 -> 57 us on AVX2, a 2-core Zen 5).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ROW_ELEMENTS", "packed_kernels", "panel_major", "parallel_rows", "register_tile", "schedule_gemm", "schedule_injective", "vectorizable_intrinsics"]


#: TIR intrinsics TVM 0.27 does not mark vectorizable although LLVM has vector forms of them:
#: the loop vectorizer scalarizes a loop that calls one, and LLVM re-vectorizes the scalar code
#: with gathers and scatters. ``nearbyint`` is ONNX's Round (half to even), the rounding of
#: every integer accumulator a kernel kept in fp32 (digits CNN's first convolution: 0.025 ms
#: alone, 0.087 ms with its Round; 0.038 with it vectorized).
VECTORIZABLE_INTRINSICS = ("tirx.nearbyint",)


def vectorizable_intrinsics() -> None:
    """Mark :data:`VECTORIZABLE_INTRINSICS` vectorizable (once per process; every CPU build
    schedules through this module first)."""
    import tvm

    for name in VECTORIZABLE_INTRINSICS:
        op = tvm.ir.Op.get(name)
        if op.get_attr("TVectorizable") is None:
            tvm.ir.register_op_attr(name, "TVectorizable", True)


def _is_spatial(sch, block) -> bool:
    return all(iv.iter_type == 0 for iv in sch.get(block).iter_vars)  # 0: data parallel


def schedule_injective(mod) -> tuple[Any, int]:
    """Schedule every unscheduled kernel made only of elementwise/data-movement blocks (what the
    tuning databases hold no record for: requantization epilogues, layout changes): producers
    inlined, then rows over the cores (:func:`parallel_rows`). Returns the module and how many were scheduled.
    TVM's own CPU rules (dlight) cover only GEMV and reductions."""
    import tvm

    vectorizable_intrinsics()
    count = 0
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs or {}).get("tirx.is_scheduled", False):
            continue
        try:
            sch = tvm.s_tir.Schedule(func)
            root = sch.get_sblock("root") if _has_root(sch) else None
            blocks = sch.get_child_blocks(root) if root is not None else []
            if not blocks:
                continue
            if not all(_is_spatial(sch, b) for b in blocks):
                # a reduction (depthwise conv, pooling, softmax) no database covers: at least
                # spread its output loops over the cores
                if _parallel_reduction(sch, blocks):
                    mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    count += 1
                continue
            tile = transform_tile(sch, blocks)
            for block in blocks[:-1]:
                if tile is not None and WINOGRAD_TILE_ATTR in sch.get(block).annotations:
                    continue  # computed per tile into registers: inlined, its sum would be copied into every use of it in the epilogue
                try:
                    sch.compute_inline(block)
                except Exception:  # noqa: BLE001 - not inlinable: keep it as its own loop nest
                    pass
            remaining = sch.get_child_blocks(root)
            if tile is not None and len(remaining) <= 2:  # a Winograd transform, and its epilogue
                schedule_transform(sch, remaining[-1], tile, remaining[0] if len(remaining) == 2 else None)
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr(NO_CSE_ATTR, True)
                count += 1
                continue
            else:
                for block in remaining:
                    parallel_rows(sch, block)
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            count += 1
        except Exception:  # noqa: BLE001 - leave the kernel to TVM's default (listed as unscheduled)
            continue
    return mod, count


#: the trailing loops of an elementwise kernel are fused into one row while it stays this short
ROW_ELEMENTS = 4096

#: a kernel doing less work than this (elements, or multiply-adds) runs on one core: waking the
#: others costs more than it saves (openWakeWord's wake-word classifier 24.7 -> 21.8 us, silero
#: 30.5 -> 26.6 us on a 2-core Xeon; the larger models unchanged within noise)
PARALLEL_WORK = 16384


def _work(sch, block) -> int:
    """The block's iteration count: its elements, or a reduction's multiply-adds (0 if dynamic)."""
    extents = [_extent(iv.dom.extent) for iv in sch.get(block).iter_vars]
    return int(np.prod(extents)) if all(extents) else 0


def _parallel(sch, loop, work: int) -> None:
    """``loop`` over the cores, unless the kernel's ``work`` is under :data:`PARALLEL_WORK`."""
    if not work or work >= PARALLEL_WORK:
        sch.parallel(loop)


def parallel_rows(sch, block) -> None:
    """Rows over the cores, each row one contiguous loop: the trailing loops are fused while their
    product stays <= :data:`ROW_ELEMENTS` (H*W of an NCHW tensor), the leading ones run in
    parallel. A row is vectorized by 16 when its length allows, else left to LLVM's loop
    vectorizer. Fusing *all* loops instead puts a div/mod per lane into every vector (a
    per-channel scale read from a flat index): 9x slower on a 64x56x56 requantization."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [int(sch.get(lp).extent) if hasattr(sch.get(lp).extent, "value") else None for lp in loops]
    if any(e is None for e in extents):
        sch.parallel(loops[0])
        return
    work = int(np.prod(extents))  # too small to pay for waking the other cores: one core
    if len(loops) >= 3 and extents[-1] <= 4 and (extents[-2] % 16 or _transposes_last_axis(sch, block)):
        # a few channels last (an image going NHWC: 3 of them): fused with the width, every
        # element paid a div/mod and the row stayed scalar; the channels unrolled instead, LLVM
        # vectorizes along the width with interleaved stores (MobileNetV2's input quantize, pad
        # and transpose: 48.6 -> 7.2 us). Also when the width is a multiple of 16 if the block
        # reads across its last axis: a transpose's fused row of 16 was a gather of 16 scalars
        # (ResNet-18's NCHW input to NHWC, 224 x 224 x 3: 78 -> 43 us)
        _parallel(sch, sch.fuse(*loops[:-2]), work)
        sch.unroll(loops[-1])
        return
    split, row = len(loops) - 1, extents[-1]
    while split > 0 and row * extents[split - 1] <= ROW_ELEMENTS:
        split -= 1
        row *= extents[split]
    inner = sch.fuse(*loops[split:]) if len(loops) - split > 1 else loops[split]
    if split == 0:  # the whole tensor is one short row: chunks of it go to the cores
        if row >= 512:
            outer, inner = sch.split(inner, [None, 256])
            _parallel(sch, outer, work)
    else:
        _parallel(sch, sch.fuse(*loops[:split]) if split > 1 else loops[0], work)
    if row % 16 == 0 and row >= 16:
        try:
            _, lanes = sch.split(inner, [None, 16])
            sch.vectorize(lanes)
        except Exception:  # noqa: BLE001 - gathers, conditions: the scalar loop stays
            pass
    elif row > 32 and "if_then_else" in str(sch.get(block).body):
        # a row padded at its end (a K padded to a multiple of 8 for an integer product: 257 of
        # 264): its whole vectors of real elements a loop of their own, where the padding's test
        # and the index arithmetic a reshape left (x // 257, x % 257) simplify away and the loop
        # vectorizes; the rest stays scalar. The row was scalar: 31 -> 12.5 us for the 97 x 264
        # quantize before a mel spectrogram's integer matmul
        try:
            head, _ = sch.loop_partition(inner, [row // 16 * 16, None])
            _, lanes = sch.split(head, [None, 16])
            sch.vectorize(lanes)
        except Exception:  # noqa: BLE001 - the scalar loop stays
            pass


def _transposes_last_axis(sch, block) -> bool:
    """Whether ``block`` reads some input whose last axis is not its own last loop's (a
    transpose to channels last), so that its rows are not contiguous in what it reads."""
    ivs = sch.get(block).iter_vars
    last = ivs[-1].var
    return any(read.region and not read.region[-1].min.same_as(last) and any(r.min.same_as(last) for r in read.region) for read in sch.get(block).reads)


def _parallel_reduction(sch, blocks) -> bool:
    """Kernels with reductions no database covers (depthwise convs, pooling, softmax, layer norm,
    dynamic-quantization ranges): elementwise producers inlined; then per row of the output
    (all its loops but the last) in parallel, every block computed for that row, the last
    spatial loop innermost and vectorized where its extent allows. False when the kernel does
    not have that shape."""
    reductions = [b for b in blocks if not _is_spatial(sch, b)]
    if not reductions:
        return False
    for block in blocks[:-1]:
        # a producer read by two blocks (softmax's exp) stays: inlined, it would be computed twice;
        # so does what a reduction reads (a conv's padded input): inlined, its bounds checks would
        # sit in the innermost loop and keep it scalar
        if any(block.same_as(r) for r in reductions) or len(sch.get_consumers(block)) > 1:
            continue
        if any(any(c.same_as(r) for r in reductions) for c in sch.get_consumers(block)):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable: computed per row below
            pass
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    red = [b for b in blocks if not _is_spatial(sch, b)]
    if len(red) == 1 and len(blocks) == 1:
        if RANGES_ATTR in sch.get(red[0]).annotations:
            return _ranges_reduction(sch, red[0])
        spatial = [iv for iv in sch.get(red[0]).iter_vars if iv.iter_type == 0]
        if all(hasattr(iv.dom.extent, "value") and int(iv.dom.extent) == 1 for iv in spatial):
            return _vector_reduction(sch, red[0])
    out = blocks[-1]
    out_loops = sch.get_loops(out)
    n_rows = len(out_loops) - 1 if _is_spatial(sch, out) else sum(1 for iv in sch.get(out).iter_vars if iv.iter_type == 0) - 1
    if n_rows < 1:
        return False
    if _is_spatial(sch, out) and any([_row_reduction_in_lanes(sch, b) for b in blocks[:-1] if not _is_spatial(sch, b)]):
        blocks = sch.get_child_blocks(sch.get_sblock("root"))  # each such reduction now two blocks: the lanes', and theirs reduced
    last_rows = _extent(sch.get(out_loops[n_rows - 1]).extent) or 0
    row = sch.fuse(*out_loops[:n_rows]) if n_rows > 1 else out_loops[0]
    work = sum(_work(sch, b) for b in blocks) if all(_work(sch, b) for b in blocks) else 0
    group = _row_group(sch, blocks, last_rows)
    if group:
        row, _ = sch.split(row, [None, group])
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row)
    _parallel(sch, row, work)
    for block in sch.get_child_blocks(row):
        if not (group and _interleave_rows(sch, block, row)):
            _vectorize_last_spatial(sch, block, row)
    return True


#: rows of a kernel of row reductions in lanes (softmax, layer norm) computed together, each
#: step of their dependent chains (the lanes' updates, the lanes reduced to one) interleaved
ROW_GROUP = 4


def _row_group(sch, blocks, last_rows: int) -> int:
    """:data:`ROW_GROUP` where a reduction of the kernel went into lanes
    (:func:`_row_reduction_in_lanes`) and the innermost row axis (``last_rows`` long) is a
    multiple of it, so that a group's rows share their outer indices (a group across two of
    softmax's heads had loops of no constant extent); else 0."""
    lanes = [b for b in blocks if not _is_spatial(sch, b) and sch.get(b).name_hint.endswith("_rf")]
    if not ROW_GROUP or not lanes or last_rows % ROW_GROUP or last_rows < 2 * ROW_GROUP:
        return 0
    return ROW_GROUP


def _interleave_rows(sch, block, group_loop) -> bool:
    """Under a group of rows (:func:`_row_group`): the block's loop over the group's rows moved
    inside its reduction loops, unrolled, just outside the vector lanes (innermost where the
    block reduces lanes to one), so that the rows' independent chains of max/add interleave
    instead of each row waiting on its own latency (softmax: a row of 128 was 8 dependent
    vector maxes, 16 dependent scalar ones, then the same in adds). False (nothing changed)
    where the block's loops are not of that shape."""
    try:
        return _interleave_steps(sch.copy(), block, group_loop) and _interleave_steps(sch, block, group_loop)
    except Exception:  # noqa: BLE001 - the rows one after the other
        return False


def _interleave_steps(sch, block, group_loop) -> bool:
    loops = sch.get_loops(block)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(group_loop)))
    inner = loops[at + 1 :]
    if not inner:
        return False
    realize = sch.get(inner[-1]).body
    bindings = list(zip(realize.block.iter_vars, realize.iter_values))
    group_var = sch.get(group_loop).loop_var

    def kind(loop) -> str:
        var = sch.get(loop).loop_var
        used = [(iv, value) for iv, value in bindings if _reads_var_expr(value, var)]
        if any(_reads_var_expr(value, group_var) for _, value in used):
            return "row"
        return "R" if any(iv.iter_type != 0 for iv, _ in used) else "S"

    kinds = [kind(lp) for lp in inner]
    if kinds.count("row") != 1:
        return False
    rows = inner[kinds.index("row")]
    reduce_ = [lp for lp, k in zip(inner, kinds) if k == "R"]
    spatial = [lp for lp, k in zip(inner, kinds) if k == "S"]
    lanes = None
    if spatial:
        extent = _extent(sch.get(spatial[-1]).extent) or 0
        if extent % 16 or extent < 16:
            return False
        if extent > 16:
            spatial[-1], lanes = sch.split(spatial[-1], [None, 16])
        else:
            lanes = spatial.pop()
    sch.reorder(*reduce_, *spatial, rows, *([lanes] if lanes is not None else []))
    sch.unroll(rows)
    if lanes is not None:
        sch.vectorize(lanes)
    if reduce_:
        sch.decompose_reduction(block, reduce_[0])
    return True


#: at most this many 16-float vectors of a pooling kernel's row accumulate in registers
#: (:func:`_vectorize_last_spatial`): 4 zmm, or 8 of AVX2's 16 ymm registers
POOL_ACCUMULATORS = 4


def _vectorize_last_spatial(sch, block, row) -> None:
    """Move the block's last spatial loop under ``row`` innermost (inside its reduction loops) and
    vectorize it. Blocks made by TE list spatial loops first, then reduction loops."""
    try:
        loops = sch.get_loops(block)
        at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(row)))
        inner = loops[at + 1 :]
        # unit reduction axes (a depthwise conv's one input channel) have no loop of their own
        n_red = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type != 0 and not (hasattr(iv.dom.extent, "value") and int(iv.dom.extent) == 1))
        spatial, reduce_ = inner[: len(inner) - n_red], inner[len(inner) - n_red :]
        if not spatial:
            if reduce_:  # the init out of the loop, so that LLVM can vectorize the reduction
                sch.decompose_reduction(block, reduce_[0])
            return
        last = spatial[-1]
        extent = sch.get(last).extent
        if not hasattr(extent, "value") or int(extent) < 8:
            return
        acc = None
        alone = len(sch.get_child_blocks(row)) == 1
        if alone and reduce_ and len(spatial) == 1 and int(extent) % 16 == 0 and int(extent) // 16 <= POOL_ACCUMULATORS:
            # a pooling kernel (its reduction the row's only block): the row's outputs are
            # accumulated in local scope, the vectors unrolled, so that they stay in registers
            # over the window and are stored once, not read and written back at every tap
            # (ResNet-18's 3x3/2 max pool of 112 x 112 x 64: 199 -> 82 us on a 2-core Zen 5;
            # ONNX Runtime 131). Not with other blocks in the row (a depthwise convolution's
            # padded window): there it was 5-7x slower
            acc = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(acc, row)
        if reduce_:
            sch.reorder(*reduce_, last)
        # vectorized before the init is split off: a reduction block without its init is neither
        # complete nor a reduction to the schedule, and vectorize refuses it (a max pool and the
        # global average pool ran scalar: MobileNetV2's 7x7x1280 mean took 0.04 ms)
        try:
            if int(extent) % 16 == 0:
                vectors, lanes = sch.split(last, [None, 16])
                sch.vectorize(lanes)
                if acc is not None:
                    sch.unroll(vectors)
                    sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, 16])[1])
            elif int(extent) % 8 == 0 and int(extent) > 16:
                _, lanes = sch.split(last, [None, 8])
                sch.vectorize(lanes)
            elif int(extent) <= 64:
                sch.vectorize(last)
        finally:
            if reduce_:
                sch.decompose_reduction(block, reduce_[0])
    except Exception:  # noqa: BLE001 - keep the serial loop
        return


#: the lanes of a row reduction's partial results (:func:`_row_reduction_in_lanes`)
ROW_REDUCTION_LANES = 16


def _row_reduction_in_lanes(sch, block) -> bool:
    """A reduction along the last axis of what it reads (softmax's max and sum, layer norm's mean
    and variance), made :data:`ROW_REDUCTION_LANES` partial results side by side in a vector
    (``rfactor``, before the blocks move under their row), then one reduce of those. Scalar,
    each row was one chain of dependent adds: MiniLM's softmax over 12 x 128 rows of 128, six
    calls, 0.16 ms each. False (nothing changed) unless the block has one reduction loop, of a
    static extent that is a multiple of the lanes and at least two vectors, that indexes the
    last axis of every buffer it reads (else the vector would be a gather), and a combiner
    ``rfactor`` knows."""
    iters = sch.get(block).iter_vars
    reduce_ = [iv for iv in iters if iv.iter_type != 0]
    if len(reduce_) != 1:
        return False
    var, extent = reduce_[0].var, reduce_[0].dom.extent
    if not hasattr(extent, "value") or int(extent) % ROW_REDUCTION_LANES or int(extent) < 2 * ROW_REDUCTION_LANES:
        return False
    along_rows = False
    for read in sch.get(block).reads:
        *leading, last = list(read.region) or [None]
        if any(_reads_var_expr(r.min, var) for r in leading) or (last is not None and not last.min.same_as(var) and _reads_var_expr(last.min, var)):
            return False
        along_rows |= last is not None and last.min.same_as(var)
    if not along_rows:
        return False

    def apply(schedule) -> None:
        loop = schedule.get_loops(block)[-1]
        _, lanes = schedule.split(loop, [None, ROW_REDUCTION_LANES])
        schedule.rfactor(lanes, len(schedule.get(block).iter_vars) - 1)

    try:  # on a copy first: a step that fails leaves the schedule as it was
        apply(sch.copy())
    except Exception:  # noqa: BLE001 - the scalar loop stays
        return False
    apply(sch)
    return True


#: a whole-tensor reduction (:func:`_vector_reduction`) doing at least :data:`PARALLEL_WORK` runs
#: in this many chunks over the cores, each chunk's partial results in lanes, then one reduce
REDUCTION_CHUNKS = 8

#: partial results of a whole-tensor reduction side by side (:func:`_vector_reduction`): 8 ymm or
#: 4 zmm registers, independent chains that hide the latency of each max/min/add
REDUCTION_LANES = 64


def _vector_reduction(sch, red) -> bool:
    """A reduction of a whole tensor to one value (the range of a dynamically quantized
    activation): :data:`REDUCTION_LANES` partial results side by side in vectors (``rfactor``),
    then one reduce of those. The lanes are split off the last axis alone where it is a multiple
    of them, so the loads stay contiguous without a division per index (the loops fused, each
    index was divided by the last axis' extent). Serial scalar code took 0.23 ms for a
    128 x 1536 min; one vector of 16 lanes over the fused loops 15.6 us, 64 lanes over the last
    axis 8.5 us (MiniLM's 6 such mins and 18 of 128 x 384: 0.26 -> 0.10 ms a call in all, AVX2
    on a 2-core Xeon). A reduction of :data:`PARALLEL_WORK` elements or more first reduces
    :data:`REDUCTION_CHUNKS` chunks of its outer loop over the cores, each in lanes: the first
    reader of a tensor two cores just wrote then reads mostly its own core's half (MiniLM int8's
    24 maxes and 24 mins, AVX-512 VNNI on a 2-core Sapphire Rapids: 0.43 -> 0.31 ms a call; the
    max of 128 x 1536 29 -> 18 us)."""
    if not _split_lanes(sch, sch.get_loops(red), (REDUCTION_LANES, 32, 16), REDUCTION_LANES):
        return False
    work = _work(sch, red)
    outer, units = _outer_loops(sch, sch.get_loops(red)[:-1])
    if work >= PARALLEL_WORK and outer:
        outer, chunks = _chunk_loop(sch, outer)
        if chunks:
            # one partial result per chunk first (the chunks over the cores), each of them in lanes
            chunk, _ = sch.split(outer, [chunks, None])
            by_chunk = sch.rfactor(chunk, 0)
            partial = sch.rfactor(sch.get_loops(by_chunk)[-1], 1)
            sch.parallel(sch.get_loops(partial)[units])
            sch.vectorize(sch.get_loops(partial)[-1])
            return True
    inner = sch.get_loops(red)[-1]
    partial = sch.rfactor(inner, 0)
    sch.vectorize(sch.get_loops(partial)[-1])
    return True


def _split_lanes(sch, loops, choices: tuple[int, ...], at_least: int) -> bool:
    """Split a whole-tensor reduction's lanes (the first of ``choices`` that divides) off its last
    loop alone where that is a multiple of 16 and there are others, so the loads stay contiguous
    without a division per index; else off all its loops fused, if they make at least
    ``at_least`` elements in whole vectors. False (nothing changed) where they do not."""
    last = _extent(sch.get(loops[-1]).extent) or 0
    if last and last % 16 == 0 and len(loops) > 1:
        sch.split(loops[-1], [None, next(n for n in choices if last % n == 0)])
        return True
    extent = int(np.prod([_extent(sch.get(lp).extent) or 0 for lp in loops]))
    if extent < at_least or extent % 16:
        return False
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.split(fused, [None, next(n for n in choices if extent % n == 0)])
    return True


def _outer_loops(sch, outer) -> tuple[list, int]:
    """A whole-tensor reduction's loops outside its lanes without the leading ones of extent 1
    (they stay outside, serial, once), and how many of those there are."""
    units = 0
    while units < len(outer) - 1 and _extent(sch.get(outer[units]).extent) == 1:
        units += 1
    return outer[units:], units


def _chunk_loop(sch, outer) -> tuple[Any, int]:
    """The loop whose :data:`REDUCTION_CHUNKS` (or fewer) chunks a whole-tensor reduction reduces
    over the cores first -- the first outer loop alone where it has chunks (no division per
    index), else all of them fused -- and the number of chunks (0: too few iterations)."""

    def chunks_of(n: int) -> int:
        return next((c for c in (REDUCTION_CHUNKS, REDUCTION_CHUNKS // 2, 2) if n % c == 0 and n >= 2 * c), 0)

    loop = outer[0] if chunks_of(_extent(sch.get(outer[0]).extent) or 0) or len(outer) == 1 else sch.fuse(*outer)
    return loop, chunks_of(_extent(sch.get(loop).extent) or 0)


#: the block annotation of a kernel computing a tensor's maximum and minus its minimum in one read
#: (``ranges.fused_ranges``), scheduled by :func:`_ranges_reduction`
RANGES_ATTR = "graphpress.ranges"

#: partial results of each of the two reductions of a range kernel (:func:`_ranges_reduction`):
#: 2 x 32 lanes are 4 zmm or 8 ymm registers, half of AVX2's sixteen
RANGES_LANES = 32


def _ranges_reduction(sch, red) -> bool:
    """A tensor's maximum and minus its minimum, one kernel (``ranges.fused_ranges``): the
    maximum over the pair ``(x, -x)``, the pair's axis unrolled inside the loop over
    :data:`RANGES_LANES` lanes, so that each vector of ``x`` is loaded once for both. As in
    :func:`_vector_reduction`, a reduction of :data:`PARALLEL_WORK` elements or more first
    reduces :data:`REDUCTION_CHUNKS` chunks of its outer loop over the cores; the partial
    results are laid out ``[chunk, pair, lane]`` so that each chunk's lanes stay contiguous.
    False (nothing changed) unless the kernel has that shape."""
    try:  # on a copy first: a step that fails leaves the schedule as it was
        _ranges_steps(sch.copy(), red)
    except Exception:  # noqa: BLE001 - left to TVM's default (listed as unscheduled)
        return False
    return _ranges_steps(sch, red)


def _ranges_steps(sch, red) -> bool:
    pair, *reduce_ = sch.get_loops(red)
    if _extent(sch.get(pair).extent) != 2 or not reduce_:
        raise ValueError("not a range kernel")
    if not _split_lanes(sch, reduce_, (RANGES_LANES, 16), 2 * RANGES_LANES):
        raise ValueError("too small or ragged for whole vectors")
    outer, units = _outer_loops(sch, sch.get_loops(red)[1:-1])
    chunks = 0
    if _work(sch, red) >= 2 * PARALLEL_WORK and outer:  # its work counts the pair twice
        outer, chunks = _chunk_loop(sch, outer)
    if chunks:
        chunk, _ = sch.split(outer, [chunks, None])
        by_chunk = sch.rfactor(chunk, 0)  # [chunk, pair]
        partial = sch.rfactor(sch.get_loops(by_chunk)[-1], 2)  # [chunk, pair, lane]
    else:
        partial = sch.rfactor(sch.get_loops(red)[-1], 1)  # [pair, lane]
    pair, *body, lanes = sch.get_loops(partial)
    sch.reorder(*body, pair, lanes)
    if chunks:
        sch.parallel(body[units])
    sch.unroll(pair)
    sch.vectorize(lanes)
    return True


#: rank a matrix product's register tiles by the FMAs per load (see :func:`register_tile`); the
#: module switch for A/B runs
RANK_BY_LOADS = True

#: the independent accumulators a tile needs to hide the FMA latency: two FMA ports, four cycles
LATENCY_ACCUMULATORS = 8


#: a matrix product's tile may leave a shorter last tile of rows (:func:`register_tile`'s ``partial``)
PARTIAL_TILES = True


def tile_cycles(m: int, mr: int, v: int) -> int:
    """The FMA-port cycles, times two, that tiles of ``mr`` rows by ``v`` vectors take per step
    along the reduction over ``m`` rows, the last tile ``m % mr`` rows when ``mr`` does not divide
    ``m``: a tile of fewer than :data:`LATENCY_ACCUMULATORS` accumulators waits on their chains.
    (Counting 12 as the peak instead, so that fuller tiles with a short tail replace dividing
    tiles of 8 to 11 accumulators, made ResNet-18 on AVX2 1.18x slower on a 2-core Zen 5.)"""
    full, tail = divmod(m, mr)
    return full * max(mr * v, LATENCY_ACCUMULATORS) + (max(tail * v, LATENCY_ACCUMULATORS) if tail else 0)


def register_tile(m: int, n: int, lanes: int, registers: int, loads: bool = False, partial: bool = False) -> tuple[int, int] | None:
    """``(mr, v)``: the register tile of ``mr`` rows by ``v`` vectors for an ``m`` by ``n`` output.

    Its ``mr * v`` accumulators, ``v`` vectors of the right operand and one broadcast of the
    left one must fit the register file, and its sizes divide ``m`` and ``n`` (at most 14 rows
    and 4 vectors). Among those, the most accumulators, then the widest. None when ``n`` is not
    a multiple of ``lanes``. (Measured on a Zen 4, 2 cores, before Winograd: ResNet-18 ran in
    11.1 ms with these tiles for AVX-512 and 26.5 ms for AVX2, against 11.2 and 32.1 ms when
    ranking every kernel's tiles by FMAs per load.)

    With ``loads`` (a matrix product or a dense convolution, not a depthwise one), among the
    tiles of at least :data:`LATENCY_ACCUMULATORS` accumulators (where there are any), the
    most FMAs per broadcast and vector load (``mr * v / (mr + v)``), then the most
    accumulators, then the widest: ranked by accumulators alone, AVX2's 16 registers get one
    column vector and one broadcast per FMA (14 x 1). On a 2-core Zen 5, MobileNetV2's 56x56
    expansion (24 -> 144 channels) took 129 us a call with 14 x 1 and 89-94 with 4 x 3; its
    14x14 expansion to 576 channels 129 -> 101-111 with 2 x 4. Whole models on AVX2, one
    process, alternating: MobileNetV2 0.86-0.97x the time, ResNet-18 0.94-0.95x, MiniLM level;
    on AVX-512 (32 registers) all three level (0.93-1.03x).

    With ``partial``, ``mr`` need not divide ``m``: the last tile is shorter. The tiles are then
    ranked first by the cycles all of them take for the work (:func:`tile_cycles`), so a dividing
    tile of at least :data:`LATENCY_ACCUMULATORS` accumulators keeps its place, and a width whose
    divisors allow none (MobileNetV2's 49 pixels: 7 x 1 on AVX2, 7 accumulators) takes a fuller
    one with a short tail (5 x 2: nine of 5 rows and one of 4)."""
    best = None
    for v in range(1, 5):
        if n % (v * lanes):
            continue
        for mr in range(1, min(m, 14) + 1):
            if (m % mr and not partial) or mr * v + v + 1 > registers:
                continue
            key = tile_key(m, mr, v, loads, partial)
            if best is None or key > best[0]:
                best = (key, (mr, v))
    return best[1] if best else None


def tile_key(m: int, mr: int, v: int, loads: bool = False, partial: bool = False) -> tuple:
    """How :func:`register_tile` ranks the tile of ``mr`` rows by ``v`` vectors over ``m`` rows
    (greater is better)."""
    key = (mr * v >= LATENCY_ACCUMULATORS, mr * v / (mr + v), mr * v, v) if loads else (mr * v, v)
    return (-tile_cycles(m, mr, v) / (m * v), m % mr == 0, *key) if partial else key


def schedule_gemm(mod, lanes: int, registers: int) -> tuple[Any, int]:
    """Schedule every unscheduled kernel whose one reduction is a matrix product (matmul, dense,
    NHWC convolution) with a register-blocked tile (see the module's doc). Returns the module and
    how many kernels were scheduled."""
    import tvm

    vectorizable_intrinsics()
    count = 0
    constant = _constant_params(mod)
    packed = {}
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs or {}).get("tirx.is_scheduled", False):
            continue
        try:
            scheduled = _gemm_kernel(func, lanes, registers, constant.get(gv.name_hint, frozenset()))
        except Exception:  # noqa: BLE001 - not this shape: the generic schedules take it
            scheduled = None
        if scheduled is not None:
            pack = (scheduled.attrs or {}).get(PACKED_ATTR)
            if pack is not None:
                packed[gv.name_hint] = (int(pack[0]), int(pack[1]), int(pack[2]))
            mod[gv] = scheduled
            count += 1
    if packed:
        # the kernels' weight parameters changed shape: each takes a new global (the old one keeps
        # the old signature, which the calls are checked against) and its callers the packed constants
        mod = _pack_constants(packed)(mod)
    return mod, count


#: the attribute of a kernel that reads a weight packed panel-major: ``(parameter index, panel
#: width, input-channel block)``, the block 0 for panels alone (:func:`panel_major`)
PACKED_ATTR = "graphpress.packed_weight"


def packed_kernels(mod) -> int:
    """How many kernels of ``mod`` read a weight packed panel-major (:func:`panel_major`)."""
    return sum(1 for f in mod.functions.values() if (getattr(f, "attrs", None) or {}).get(PACKED_ATTR) is not None)


def _constant_params(mod) -> dict[str, frozenset[int]]:
    """For each PrimFunc of ``mod`` (by name), the parameters every ``call_tir`` of it passes a
    constant: weights whose layout the kernel may choose, the constant rewritten to match."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprVisitor, visitor

    call_tir = tvm.ir.Op.get("relax.call_tir")
    seen: dict[str, set[int]] = {}

    @visitor
    class Calls(PyExprVisitor):
        def visit_call_(self, call):
            if call.op.same_as(call_tir) and isinstance(call.args[0], tvm.ir.GlobalVar) and isinstance(call.args[1], relax.Tuple):
                name = call.args[0].name_hint
                constants = {i for i, a in enumerate(call.args[1].fields) if isinstance(a, tvm.ir.GenericConst)}
                seen[name] = seen[name] & constants if name in seen else constants
            super().visit_call_(call)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            Calls().visit_expr(func)
    return {name: frozenset(indices) for name, indices in seen.items()}


def panel_major(array: np.ndarray, width: int, block: int = 0) -> np.ndarray:
    """``(..., n)`` weights as ``(n / width, ..., width)``: each column panel of ``width`` one
    contiguous block, read front to back by the tiles of that panel. With ``block``, ``(..., c, n)``
    weights (a convolution's HWIO) as ``(n / width, c / block, ..., block, width)``: within a
    panel, each block of ``block`` input channels (all window positions) one contiguous piece."""
    if block:
        *rest, c, n = array.shape
        blocks = array.reshape(*rest, c // block, block, n // width, width)
        return np.ascontiguousarray(np.moveaxis(blocks, [-2, -4], [0, 1]))
    *rest, n = array.shape
    panels = array.reshape(*rest, n // width, width)
    return np.ascontiguousarray(np.moveaxis(panels, -2, 0))


def _pack_constants(packed: dict[str, tuple[int, int, int]]):
    """A module pass giving the kernels of ``packed`` (name -> (parameter, panel width, block)) their
    weight constants in panel-major order (:func:`panel_major`), the layout they now read. The
    kernels' signatures changed, so each is added again under a new global (calls are checked
    against the type their global was given) and its callers are pointed at it."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")
    renamed: dict[str, Any] = {}
    done: list[tuple[Any, tuple[int, int], Any]] = []  # (constant, (width, block), packed): a weight several calls share (an unrolled recurrence's) packed once

    def packed_constant(constant, width: int, block: int):
        for seen, layout, result in done:
            if layout == (width, block) and seen.same_as(constant):
                return result
        array = constant.value.numpy()
        result = relax.const(panel_major(array, width, block), str(array.dtype))
        done.append((constant, (width, block), result))
        return result

    @mutator
    class Pack(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(call_tir) and isinstance(call.args[0], tvm.ir.GlobalVar) and call.args[0].name_hint in packed:
                index, width, block = packed[call.args[0].name_hint]
                fields = list(call.args[1].fields)
                fields[index] = packed_constant(fields[index], width, block)
                return relax.Call(call.op, [renamed[call.args[0].name_hint], relax.Tuple(fields), *call.args[2:]], call.attrs, call.ty_args)
            return call

    @tvm.transform.module_pass(opt_level=0, name="PackWeights")
    def run(mod, _ctx):
        kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint not in packed}, attrs=mod.attrs, global_infos=mod.global_infos)
        pack = Pack(kept)
        renamed.update({name: pack.builder_.add_func(mod[name], name) for name in packed})
        for gv, func in kept.functions.items():
            if isinstance(func, relax.Function):
                pack.builder_.update_func(gv, pack.visit_expr(func))
        return pack.builder_.get()

    return run


def _extent(loop_or_dom) -> int | None:
    return int(loop_or_dom) if hasattr(loop_or_dom, "value") else None


def _is_gemm(sch, red) -> tuple[int, int] | None:
    """``(m, n)`` when ``red`` is ``out[..., m, n] += f(left[.., m-dependent ..]) * right[.., n]``
    with ``n`` the innermost index of the output and of every input it indexes (contiguous
    vector loads), and spatial block vars before the reduction ones; else None."""
    import tvm

    block = sch.get(red)
    ivs = block.iter_vars
    spatial = [i for i, iv in enumerate(ivs) if iv.iter_type == 0]
    if len(spatial) < 2 or spatial != list(range(len(spatial))) or len(spatial) == len(ivs):
        return None
    if len(block.writes) != 1 or len(block.reads) < 2:
        return None
    n_var = ivs[spatial[-1]].var
    m_var = ivs[spatial[-2]].var

    def uses(expr, var) -> bool:
        return any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(expr))

    write = block.writes[0]
    if not write.region or not write.region[-1].min.same_as(n_var):
        return None
    unit = [iv.var for iv in ivs if _extent(iv.dom.extent) == 1]  # a depthwise conv's one input channel

    def contiguous_in_n(lo) -> bool:  # n, or n plus a block var of extent 1
        if lo.same_as(n_var):
            return True
        if isinstance(lo, tvm.tirx.Add):
            for a, b in ((lo.a, lo.b), (lo.b, lo.a)):
                if a.same_as(n_var) and any(b.same_as(u) for u in unit):
                    return True
        return False

    for read in block.reads:
        mins = [r.min for r in read.region]
        for i, lo in enumerate(mins):
            if uses(lo, n_var) and (i != len(mins) - 1 or not contiguous_in_n(lo) or _extent(read.region[i].extent) != 1):
                return None  # n indexes this input, but not as its contiguous last axis
    if not any(any(uses(r.min, m_var) for r in read.region) for read in block.reads):
        return None
    m, n = _extent(ivs[spatial[-2]].dom.extent), _extent(ivs[spatial[-1]].dom.extent)
    return (m, n) if m and n else None


#: weights larger than this are read panel by panel (about half a core's L2 cache)
PANEL_BYTES = 512 * 1024

#: depthwise reductions of at most this many terms (a 3x3 or 5x5 window) unroll their last loop
UNROLL_REDUCTION = 32

#: the accumulators of a whole column panel (all its rows) a panel-blocked tile may keep
ROW_BLOCK_BYTES = 64 * 1024

#: a panel-blocked tile (see :func:`_gemm_kernel`) reduces over this many input channels at a
#: time, every window position of them, before the next rows' turn
IC_BLOCK = 8


def _gemm_kernel(func, lanes: int, registers: int, constant_params: frozenset[int] = frozenset()):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    if not _has_root(sch):
        return None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reds = [b for b in blocks if not _is_spatial(sch, b)]
    if len(reds) != 1:
        return None
    red = reds[0]
    shape = _is_gemm(sch, red)
    if shape is None:
        return None
    written = sch.get(red).writes[0].source
    n_spatial = sum(1 for iv in sch.get(red).iter_vars if iv.iter_type == 0)
    n_var = sch.get(red).iter_vars[n_spatial - 1].var
    vector_reads = [r for r in sch.get(red).reads if not r.source.same_as(written) and _vector_read_of(r, n_var)]
    depthwise = len(vector_reads) == len([r for r in sch.get(red).reads if not r.source.same_as(written)])
    # a depthwise convolution keeps the most accumulators: ranked by loads, MobileNetV2's took
    # 1.2-1.7x as long on AVX2 (28x28x192 79 -> 121 us, 7x7x960 34 -> 51, 2-core Zen 5)
    loads = RANK_BY_LOADS and not depthwise
    at = next(i for i, b in enumerate(blocks) if b.same_as(red))
    before, after = blocks[:at], blocks[at + 1 :]
    if depthwise and any(_converts(sch, b) for b in before):
        registers -= CONVERTED_DEPTHWISE_REGISTERS
    partial = PARTIAL_TILES and loads
    # a channel count that is no multiple of the vector (MobileNetV2's 24) takes half vectors
    width = lanes
    tile = register_tile(*shape, width, registers, loads, partial)
    while tile is None and width > 4:
        width //= 2
        tile = register_tile(*shape, width, registers, loads, partial)
    if tile is None:
        return None
    mr, v = tile
    lanes = width
    if not all(_is_spatial(sch, b) for b in after):
        return None
    # blocks after the product that do not read it (the cast and scale of a residual branch
    # another kernel computed, fused here because the addition joins them) would be recomputed
    # whole inside every tile (ResNet-18 with one integer downsample kept in fp32: 28 ms, and
    # wrong): inlined into the epilogue that reads them, or no analytic schedule
    derived = [w.source for w in sch.get(red).writes]
    tile_epilogue = []
    for block in after:
        if any(r.source.same_as(d) for r in sch.get(block).reads for d in derived):
            derived += [w.source for w in sch.get(block).writes]
            tile_epilogue.append(block)
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable: the generic schedule takes the kernel
            return None
    after = tile_epilogue
    flat = None  # (rows axis, columns, rank) once a 1x1 convolution's pixels are merged
    rows = partial and _flat_pixels(sch, red, before, after, n_spatial, vector_reads)
    if rows:
        # a 1x1 convolution's rows and columns as one run of pixels, its tiles spanning rows,
        # where that ranks a better tile: MobileNetV2's 7x7 maps are 49 pixels in 5 x 2 tiles,
        # the last of 4 rows, instead of 7 x 1; its 14x14 ones 4 x 3 tiles (12 accumulators)
        # instead of 2 x 4 (8), their kernels 13-14 % faster on AVX2 (a 2-core Zen 5)
        pixels = shape[0] * rows
        wide = register_tile(pixels, shape[1], lanes, registers, loads, partial)
        if wide is not None and tile_key(pixels, *wide, loads, partial) > tile_key(shape[0], mr, v, loads, partial):
            flat = (n_spatial - 3, shape[0], n_spatial)
            _merge_pixels(sch, [red, *after], *flat)
            (mr, v), shape, n_spatial = wide, (pixels, shape[1]), n_spatial - 1
            n_var = sch.get(red).iter_vars[n_spatial - 1].var
    loops = sch.get_loops(red)
    spatial, reduction = loops[:n_spatial], loops[n_spatial:]
    if _gemv(sch, red, spatial, reduction, after, before, shape, lanes):
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    acc = sch.cache_write(red, 0, "local")  # the tile's accumulators
    if flat:
        _merge_pixels(sch, [red, acc], *flat)
    mo, mi = sch.split(spatial[-2], [None, mr])
    no, ni = sch.split(spatial[-1], [None, v * lanes])
    # the tile order: weights (the right operand, k x n) larger than a core's share of the
    # cache are streamed once per column panel (panels outermost: each k x nr panel serves every
    # row before the next is read); smaller ones stay cached anyway, and rows outermost write the
    # output in order (MobileNetV2's 112x112 expansion wrote 3 strided passes: 0.33 -> 0.27 ms)
    extents = [_extent(iv.dom.extent) for iv in sch.get(red).iter_vars[n_spatial:]]
    k = int(np.prod([e or 1 for e in extents]))
    panels_first = k * shape[1] * 4 > PANEL_BYTES
    row_block = None
    if panels_first and not flat and len(reduction) > 1 and len(spatial) > 2 and k * v * lanes * 4 > PANEL_BYTES:
        rows_var = sch.get(red).iter_vars[n_spatial - 3].var
        rows = _extent(sch.get(spatial[-3]).extent) or 0
        tasks = (shape[1] // (v * lanes)) * int(np.prod([_extent(sch.get(lp).extent) or 1 for lp in spatial[:-3]]))
        # only an image's rows (the weights do not change along them), a panel's accumulators that
        # fit a core's L1/L2 share, and enough panels to keep the cores busy
        if not any(_reads_var(r, rows_var) for r in vector_reads) and 0 < rows * shape[0] * v * lanes * 4 <= ROW_BLOCK_BYTES and tasks >= 8:
            row_block = spatial[-3]
    ic_block = math.gcd(_extent(sch.get(reduction[-1]).extent) or 1, IC_BLOCK) if row_block is not None else 0
    if row_block is not None and BLOCK_PADDED_COPY and ic_block > 1:
        _block_padded_copy(sch, red, before, n_var, reduction[-1], ic_block)
    packed = _pack_weight(sch, func, red, n_var, v * lanes, constant_params, ic_block) if panels_first else None
    if row_block is not None:
        # the column panel itself larger than a core's share of L2 (ResNet-18's last stage: 4608 x
        # 32 floats, 590 KB): every row of tiles would stream it again from L2 or L3. Instead, as
        # ONNX Runtime's NCHWc kernels do, all the panel's rows take one block of IC_BLOCK input
        # channels after the other, every window position of it: the block's weights (8 channels
        # x 9 positions x 32 columns, 9 KB, one contiguous piece of the panel as packed) serve
        # every row from L1, the accumulators of all the panel's rows waiting in the tile's local
        # buffer between blocks. ResNet-18's last-stage 3x3 convolutions in the model 1.06-1.29 ->
        # 0.85-0.88 ms (2-core Zen 5; ONNX Runtime 0.80). Before, each panel's rows took one
        # window position after the other, its slice of 128 KB read from L2, and the tile was 7 x
        # 4 vectors: that needs 33 registers (LLVM does not fold the broadcast into the FMAs) and
        # spilled one accumulator in every step (the model 10.5 ms with 7 x 2, 11.1 with 7 x 4;
        # the stride-2 convolution, whose 7 x 2 panels of 295 KB now fit L2 and take the plain
        # panel order, 0.51 -> 0.38 ms, ONNX Runtime 0.41)
        outer = [no, *spatial[:-3]]
        ico, ici = sch.split(reduction[-1], [None, ic_block])
        sch.reorder(*outer, ico, spatial[-3], mo, *reduction[:-1], ici, mi, ni)
        reduction = [ico, *reduction[:-1], ici]
    else:
        outer = [no, *spatial[:-2], mo] if panels_first else [*spatial[:-2], mo, no]
        sch.reorder(*outer, *reduction, mi, ni)
    work = _work(sch, red)
    tiles = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.reverse_compute_at(acc, tiles)
    for block in after:  # the epilogue (bias, activation, residual add) on the hot tile
        sch.reverse_compute_at(block, tiles)
    # what the tile writes between its stages (the product, the product plus bias, ...) in local
    # scope: left global, each became a buffer allocated and freed per tile by the runtime
    # (MobileNetV2 int8's 56x56x144 depthwise kernel: two workspace calls per 8 x 48 tile,
    # 0.069 -> 0.057 ms)
    intermediates = list(sch.get(sch.get_sblock("root")).alloc_buffers)
    for block in [acc, *after]:
        if any(sch.get(block).writes[0].source.same_as(b) for b in intermediates):
            sch.set_scope(block, 0, "local")
    _parallel(sch, tiles, work)
    sch.unroll(mi)
    vectors, lane = sch.split(ni, [None, lanes])
    sch.unroll(vectors)
    sch.vectorize(lane)  # before the init is split off: vectorize needs the whole reduction block
    if reduction:
        sch.decompose_reduction(red, reduction[0])
    if reduction and depthwise and all(extents) and k <= UNROLL_REDUCTION:
        # a short reduction whose operands are all read as vectors along n (a depthwise
        # convolution's 3 x 3 taps) unrolled along its last loop: the tile's neighbouring outputs
        # read the same input vectors at neighbouring taps, and unrolled LLVM loads (and converts,
        # from uint8) each once, not once per tap (MobileNetV2 int8's 56x56x144 depthwise: 72 FMAs
        # on 30 conversions instead of 72; 0.060 -> 0.045 ms; the fp32 ones unchanged). Not a
        # GEMM's short k (a 1x1 convolution of 16 channels): unrolled, MobileNetV2 fp32's took twice as long
        sch.unroll(reduction[-1])
    for block in [acc, *after]:
        inner = sch.get_loops(block)[-1]
        extent = _extent(sch.get(inner).extent)
        if extent and extent % lanes == 0:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
    paddings = []
    for block in before:
        # padding (or a layout change) of an input the tile reads a vector at a time along n (a
        # depthwise convolution's): computed in the tile's loads, one bounds test per vector,
        # instead of a padded copy of the whole input (MobileNetV2: 3.6 -> 3.0 ms); an input
        # the tile broadcasts element by element (a dense convolution's) keeps the copy, its
        # own parallel loop nest (inlined there, the tests per element doubled ResNet-18's time)
        # A padding of zero (a 1x1 convolution's plain copy of its input) is read in place: no
        # bounds tests to pay (MobileNetV2's 112x112 projection of 32 channels to 16: 0.12 ->
        # 0.075 ms; ResNet-18's 1x1 stride-2 downsamples 0.080 -> 0.066 ms)
        if _vector_read(sch, red, block, n_var) or _is_copy(sch, block):
            try:
                sch.compute_inline(block)
                continue
            except Exception:  # noqa: BLE001 - not inlinable: the copy stays
                pass
        # the window rows and columns that read only the padding skipped (_skip_padded_rows); not
        # by a panel-blocked tile: ResNet-18's last-stage convolutions took 15% longer in the
        # model with the rows skipped (4% less alone and warm; as long with the copy blocked),
        # 40% longer with the columns
        padding = _zero_padding(sch, block) if row_block is None else None
        if padding:
            paddings.append(padding)
        parallel_rows(sch, block)
    scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    m_var = sch.get(red).iter_vars[n_spatial - 2].var
    for name, axes in paddings:
        scheduled = _skip_padded_rows(scheduled, sch.get(red).name_hint, m_var.name, name, axes)
    return scheduled if packed is None else scheduled.with_attr(PACKED_ATTR, [packed[0], v * lanes, packed[1]])


#: registers a depthwise tile leaves free when its input is converted in its loads (a quantized
#: model's uint8 map, :mod:`.int8.depthwise`): the converted vector and the padding's lane mask
#: need registers a float input, an FMA's memory operand, does not. With the whole file, AVX2's
#: 14 x 1 tile kept half its accumulators on the stack (a load and a store around every FMA);
#: with 14 it takes 4 x 2 or 2 x 4 (AVX-512: 8 x 3 or 8 x 2 instead of 14 x 2). MobileNetV2
#: int8 on a 2-core Zen 5, both in one process, alternating: AVX2 (8-bit weights) 0.976-0.981x
#: the time, quantized for AVX2 0.93-0.99x, AVX-VNNI 0.96-0.98x, AVX-512 VNNI 0.945-0.99x; its
#: 56x56x144 depthwise kernel on AVX2 110 -> 93 us. Again once the 256-bit classes read a padded
#: copy (no masks, :data:`.int8.depthwise.PADDED_COPY_ISAS`): AVX-VNNI 0.955-0.97x the time, AVX2
#: level (1.00-1.02x), AVX-512 VNNI 0.98x
CONVERTED_DEPTHWISE_REGISTERS = 2


def _converts(sch, block) -> bool:
    """Whether ``block`` writes float from an integer input (a uint8 map's dequantization)."""
    writes = sch.get(block).writes
    return bool(writes) and "float" in str(writes[0].source.dtype) and any("int" in str(r.source.dtype) for r in sch.get(block).reads)


def _merge_pixels(sch, blocks, at: int, columns: int, rank: int) -> None:
    """Give ``blocks`` (a 1x1 convolution's, :func:`_flat_pixels`) one pixel axis for their rows
    (axis ``at``) and ``columns`` columns: the iteration of each and the buffer it writes where
    the kernel allocates it (the output, a parameter, stays as it is, written at the pixel's row
    and column). Blocks and buffers of ``rank`` axes only: the others are merged already."""
    import tvm

    def merge(ndim: int):
        return tvm.tirx.IndexMap.from_func(lambda *x: (*x[:at], x[at] * columns + x[at + 1], *x[at + 2 :]), ndim=ndim)

    for block in blocks:
        local = sch.get(sch.get_sblock("root")).alloc_buffers
        written = sch.get(block).writes[0].source
        if len(written.shape) == rank and any(written.same_as(b) for b in local):
            sch.transform_layout(block, ("write", 0), merge(rank))
    for block in blocks:
        ivs = sch.get(block).iter_vars
        spatial = sum(1 for iv in ivs if iv.iter_type == 0)
        if spatial == rank:
            sch.transform_block_layout(block, merge(len(ivs)))


def _flat_pixels(sch, red, before, after, n_spatial: int, vector_reads) -> int:
    """The rows of a 1x1 convolution ``red`` whose rows and columns may be fused into one run of
    pixels (every window loop of extent 1, the weights the same for every row, no padding to
    skip before it: only copies, read in place, and an epilogue over the output's own shape),
    else 0."""
    ivs = sch.get(red).iter_vars
    window = [_extent(iv.dom.extent) for iv in ivs[n_spatial:-1]]
    if n_spatial < 3 or len(window) < 2 or any(e != 1 for e in window):
        return 0
    rows = ivs[n_spatial - 3]
    if any(_reads_var(r, rows.var) for r in vector_reads) or not all(_is_copy(sch, b) for b in before):
        return 0
    output = [_extent(iv.dom.extent) for iv in ivs[:n_spatial]]
    if any([_extent(iv.dom.extent) for iv in sch.get(b).iter_vars] != output for b in after):
        return 0
    return _extent(rows.dom.extent) or 0


#: the annotation of a loop over a convolution's window rows that read the zero padding at the
#: edges: ``[first, end]``, the rows it runs (expressions in the enclosing loops' variables); the
#: CPU pipeline clips the loop to them once its buffers are allocated (:mod:`.tir_pipeline`)
WINDOW_ROWS_ATTR = "graphpress.window_rows"

#: skip the window rows of a convolution that fall in its zero padding (see :func:`_skip_padded_rows`)
SKIP_PADDED_ROWS = True


def _zero_padding(sch, block) -> tuple[str, list[tuple[int, int, int]]] | None:
    """``(buffer name, [(axis, offset, extent), ...])`` when ``block`` is a zero padding:
    ``out[i] = if_then_else(..., in[i - offset], 0)``, each padded axis of ``out`` holding ``in``
    at ``offset <= i < offset + extent`` and zeros elsewhere; else None."""
    import tvm
    import tvm.sym

    body = sch.get(block).body
    if not isinstance(body, tvm.tirx.BufferStore) or not isinstance(body.value, tvm.ir.expr.Call):
        return None
    call = body.value
    if not str(call.op.name).endswith(".if_then_else") or not isinstance(call.args[1], tvm.ir.expr.TensorLoad):
        return None
    zero = call.args[2]
    if not isinstance(zero, (tvm.tirx.FloatImm, tvm.tirx.IntImm)) or float(zero.value) != 0.0:
        return None
    load = call.args[1]
    if len(load.indices) != len(body.indices):
        return None
    analyzer = tvm.sym.Analyzer()
    axes = []
    for axis, (out_index, in_index) in enumerate(zip(body.indices, load.indices)):
        offset = analyzer.simplify(out_index - in_index)
        if not isinstance(offset, tvm.tirx.IntImm) or not _reads_var_expr(in_index, out_index):
            return None
        extent = _extent(load.source.shape[axis])
        if extent is None:
            return None
        if int(offset) or _extent(body.buffer.shape[axis]) != extent:
            axes.append((axis, int(offset), extent))
    return (body.buffer.name, axes) if axes else None


def _reads_var_expr(expr, var) -> bool:
    """Whether ``expr`` uses the variable ``var`` (False also when ``var`` is no variable)."""
    import tvm

    return isinstance(var, tvm.tirx.Var) and any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(expr))


def _skip_padded_rows(func, update: str, m_name: str, padded: str, axes):
    """Skip, in the reduction block ``update`` of ``func``, the window rows that read only the
    zero padding of ``padded`` (see :func:`_zero_padding`), as ONNX Runtime's NCHWc kernels do:
    a 3 x 3 convolution over a 14 x 14 map reads 2 rows of zeros out of 42, over 7 x 7 2 of 21.
    For a padded axis whose index does not involve the tile's pixels (``m_name``: the rows of
    the window, not its columns, which differ between the tile's pixels), the serial reduction
    loop that picks the window row (the innermost loop the index uses, stepping it by one) is
    annotated :data:`WINDOW_ROWS_ATTR` with the rows that hold the input; the CPU pipeline clips
    it to them once the kernel's buffers are allocated (:mod:`.tir_pipeline`: a loop of variable
    extent here made TVM allocate the tile's accumulators for the whole output). Only for a sum
    of products one factor of which is the padded input, so that a skipped term is a zero."""
    import tvm
    import tvm.sym
    import tvm_ffi

    realize = []
    tvm_ffi.structural_map(func.body, [(tvm.s_tir.SBlockRealize, lambda r: (realize.append(r) if r.block.name_hint == update else None) or r)])
    if len(realize) != 1:
        return func
    block = realize[0].block
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add) or not isinstance(store.value.b, tvm.tirx.Mul):
        return func
    accumulated = store.value.a
    if not isinstance(accumulated, tvm.ir.expr.TensorLoad) or not accumulated.source.same_as(store.buffer):
        return func
    factors = [f.value if isinstance(f, tvm.tirx.Cast) else f for f in (store.value.b.a, store.value.b.b)]
    load = next((f for f in factors if isinstance(f, tvm.ir.expr.TensorLoad) and f.source.name == padded), None)
    if load is None:
        return func
    bindings = list(zip(block.iter_vars, realize[0].iter_values))
    m_vars = [iv.var for iv in block.iter_vars if iv.var.name == m_name]
    spatial_loops = [v for iv, value in bindings if iv.iter_type == 0 for v in tvm.tirx.analysis.undefined_vars(value)]
    analyzer = tvm.sym.Analyzer()

    def bound(expr):  # block variables -> the loop expressions they are bound to
        return tvm_ffi.structural_map(expr, [(tvm.tirx.Var, lambda v: next((e for iv, e in bindings if iv.var.same_as(v)), v))])

    for axis, offset, extent in axes:
        if axis >= len(load.indices):
            return func
        if any(_reads_var_expr(load.indices[axis], m) for m in m_vars):
            if SKIP_PADDED_COLUMNS:
                func = _skip_padded_columns(func, update, bound(load.indices[axis]), offset, extent, spatial_loops)
            continue  # the window's columns
        if not SKIP_PADDED_ROWS:
            continue
        index = bound(load.indices[axis])
        used = list(tvm.tirx.analysis.undefined_vars(index))

        def clip(loop, index=index, used=used, offset=offset, extent=extent):
            var = loop.loop_var
            if not any(var.same_as(v) for v in used) or any(var.same_as(v) for v in spatial_loops):
                return loop  # not the index's loop, or one over outputs (a tile, a row)
            if loop.kind != tvm.tirx.ForKind.SERIAL or loop.step is not None or WINDOW_ROWS_ATTR in (loop.annotations or {}):
                return loop
            inner, blocks = [], []
            tvm_ffi.structural_map(loop.body, [(tvm.tirx.For, lambda f: inner.append(f) or f), (tvm.s_tir.SBlockRealize, lambda r: blocks.append(r.block.name_hint) or r)])
            if blocks != [update] or any(f.loop_var.same_as(v) for f in inner for v in used):
                return loop  # other blocks inside, or not the innermost loop the index uses
            at = lambda value: analyzer.simplify(tvm_ffi.structural_map(index, [(tvm.tirx.Var, lambda v: value if v.same_as(var) else v)]))  # noqa: E731
            start, step = at(tvm.tirx.IntImm(str(var.ty), 0)), analyzer.simplify(at(var + 1) - at(var))
            if not isinstance(step, tvm.tirx.IntImm) or int(step) != 1:
                return loop  # a dilated window
            first = analyzer.simplify(tvm.tirx.Max(loop.min, tvm.tirx.IntImm(str(var.ty), offset) - start))
            end = analyzer.simplify(tvm.tirx.Min(loop.min + loop.extent, tvm.tirx.IntImm(str(var.ty), offset + extent) - start))
            annotations = {**dict(loop.annotations or {}), WINDOW_ROWS_ATTR: [first, end]}
            return tvm.tirx.For(var, loop.min, loop.extent, loop.kind, loop.body, loop.thread_binding, annotations)

        func = func.with_body(tvm_ffi.structural_map(func.body, [(tvm.tirx.For, clip)]))
    return func


#: skip a full-width tile's window columns that read only the padding (:func:`_skip_padded_columns`)
SKIP_PADDED_COLUMNS = True

#: the longest window-column loop :func:`_skip_padded_columns` unrolls
UNROLL_COLUMNS = 7


def _skip_padded_columns(func, update: str, index, offset: int, extent: int, spatial_loops):
    """Drop the products of ``update`` that read the zero padding along a window column, when the
    tile spans the whole width: ``index`` (the padded column read, in loop variables) uses only
    the tile's unrolled pixels, the serial window-column loop and loops of one iteration. That
    loop is unrolled and the block predicated on ``offset <= index < offset + extent``: once TVM
    unrolls the loops, every predicate is a constant and the products of the first pixel with
    the first window column (and the last with the last) are gone, no test left in the code."""
    import tvm
    import tvm_ffi

    loops = []
    tvm_ffi.structural_map(func.body, [(tvm.tirx.For, lambda f: loops.append(f) or f)])
    columns = []
    for var in tvm.tirx.analysis.undefined_vars(index):
        found = [f for f in loops if f.loop_var.same_as(var)]
        if len(found) != 1:
            return func
        loop = found[0]
        if _extent(loop.extent) == 1 or loop.kind == tvm.tirx.ForKind.UNROLLED:
            continue
        if loop.kind != tvm.tirx.ForKind.SERIAL or not (_extent(loop.extent) or 0) <= UNROLL_COLUMNS or loop.step is not None:
            return func
        if any(var.same_as(v) for v in spatial_loops):
            return func  # a loop over outputs
        columns.append(loop.loop_var)
    if len(columns) != 1:
        return func
    condition = tvm.tirx.all(index >= offset, index < offset + extent)

    def predicate(realize):
        if realize.block.name_hint != update:
            return realize
        return tvm.s_tir.SBlockRealize(list(realize.iter_values), tvm.tirx.all(realize.predicate, condition), realize.block)

    def unroll(loop):
        if not loop.loop_var.same_as(columns[0]):
            return loop
        return tvm.tirx.For(loop.loop_var, loop.min, loop.extent, tvm.tirx.ForKind.UNROLLED, loop.body, loop.thread_binding, loop.annotations)

    return func.with_body(tvm_ffi.structural_map(func.body, [(tvm.s_tir.SBlockRealize, predicate), (tvm.tirx.For, unroll)]))


#: a panel-blocked tile's padded copy of its input is written channel-blocked (see
#: :func:`_block_padded_copy`)
BLOCK_PADDED_COPY = True


def _block_padded_copy(sch, red, before, n_var, rc_loop, block_c: int) -> bool:
    """Write the padded copy a dense convolution makes of its input (its own loop nest: the tile
    broadcasts it element by element) channel-blocked, ``(n, c / block_c, h, w, block_c)``, for
    a tile that reduces ``block_c`` input channels (every window position) at a time. In NHWC a
    pixel of 512 channels is 2 KB long: the 27 pixels a 3 x 3 window over a row of 7 reads sit
    2 KB apart, in 2 of L1's 64 sets, more lines than those sets hold. Blocked, they are 27
    pieces of 32 bytes in a row (ResNet-18's last-stage convolutions in the model: 1498 -> 1432
    and 745 -> 715 us on a 2-core Zen 5). False when there is no such copy."""
    import tvm

    rc = sch.get(red).iter_vars[-1].var
    for block in before:
        if _vector_read(sch, red, block, n_var) or _is_copy(sch, block):
            continue
        written = sch.get(block).writes[0].source
        if len(written.shape) != 4 or int(written.shape[-1]) % block_c or int(written.shape[-1]) <= block_c:
            continue
        read = next((r for r in sch.get(red).reads if r.source.same_as(written)), None)
        if read is None or not read.region[-1].min.same_as(rc) or (_extent(sch.get(rc_loop).extent) or 0) % block_c:
            continue
        index_map = lambda n, h, w, c: [n, c // block_c, h, w, c % block_c]  # noqa: E731
        sch.transform_layout(block, ("write", 0), tvm.tirx.IndexMap.from_func(index_map, ndim=4, index_dtype=str(written.shape[-1].ty)))
        return True
    return False


def _pack_weight(sch, func, red, n_var, width: int, constant_params: frozenset[int], ic_block: int = 0) -> tuple[int, int] | None:
    """Make ``red`` read its right operand (a weight parameter every caller passes as a constant,
    indexed by ``n`` in its last axis only, read by no other block) in panel-major order
    (:func:`panel_major`, panels ``width`` wide): each tile's column panel one contiguous stream
    instead of ``width``-float pieces a whole row apart; with ``ic_block``, each block of that many
    input channels (a convolution's, the last reduction axis) one contiguous piece of its panel.
    Returns the parameter's index and the block it was packed with (0: panels alone), or None
    when there is no such weight. (ResNet-18's 3x3 convolutions of 256 and 512 channels, run
    with cold caches as inside the model: 586 -> 508 and 726 -> 647 us.)"""
    import tvm

    block = sch.get(red)
    for ri, read in enumerate(block.reads):
        index = next((i for i, p in enumerate(func.params) if i in constant_params and p.same_as(read.source)), None)
        if index is None or not read.region[-1].min.same_as(n_var) or int(read.source.shape[-1]) % width:
            continue
        if any(v.same_as(n_var) for r in read.region[:-1] for v in tvm.tirx.analysis.undefined_vars(r.min)):
            continue
        readers = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if any(r.source.same_as(read.source) for r in sch.get(b).reads)]
        if len(readers) != 1:
            continue
        ndim = len(read.source.shape)
        if ic_block and (ndim < 3 or not read.region[-2].min.same_as(block.iter_vars[-1].var) or int(read.source.shape[-2]) % ic_block):
            ic_block = 0  # not a convolution's input channels: panels alone
        if ic_block:
            index_map = lambda *i: [i[-1] // width, i[-2] // ic_block, *i[:-2], i[-2] % ic_block, i[-1] % width]  # noqa: E731
        else:
            index_map = lambda *i: [i[-1] // width, *i[:-1], i[-1] % width]  # noqa: E731
        sch.transform_layout(red, ("read", ri), tvm.tirx.IndexMap.from_func(index_map, ndim=ndim, index_dtype=str(read.source.shape[-1].ty)))
        return index, ic_block
    return None


#: a matrix-vector product's weight rows are split among this many tasks (:func:`_gemv`)
GEMV_TASKS = 8


def _gemv(sch, red, spatial, reduction, after, before, shape: tuple[int, int], lanes: int) -> bool:
    """A matrix-vector product (one row: a classifier at batch 1) with a weight larger than
    :data:`PANEL_BYTES`, scheduled split-K (``rfactor``): each of :data:`GEMV_TASKS` tasks reads
    its own contiguous block of weight rows, 4 rows at a time, into a partial row of outputs
    (in L1), and the partial rows are summed with the epilogue. Column tiles read every weight row
    in short strided pieces instead (a 1280 x 1000 classifier: 119 us, ONNX Runtime 65 us).
    False (nothing changed) when the kernel is not one."""
    m, n = shape
    if m != 1 or len(reduction) != 1 or any(_extent(sch.get(lp).extent) != 1 for lp in spatial[:-1]):
        return False
    k = _extent(sch.get(reduction[0]).extent) or 0
    if k * n * 4 <= PANEL_BYTES or k % (GEMV_TASKS * 4) or n % lanes:
        return False
    k_task, k_row = sch.split(reduction[0], [GEMV_TASKS, None])
    partial = sch.rfactor(k_task, 0)
    *ones, j, task, rows = sch.get_loops(partial)
    row_block, row = sch.split(rows, [None, 4])
    vectors, lane = sch.split(j, [None, lanes])
    sch.reorder(task, *ones, row_block, vectors, row, lane)
    sch.parallel(task)
    sch.unroll(row)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, row_block)
    *ones, j, task = sch.get_loops(red)
    vectors, lane = sch.split(j, [None, lanes])
    sch.reorder(*ones, vectors, task, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(red, task)
    for block in after:  # the epilogue (bias, activation) on each vector of sums
        sch.reverse_compute_at(block, vectors)
        sch.vectorize(sch.get_loops(block)[-1])
    for block in before:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable: its own parallel loop nest
            parallel_rows(sch, block)
    return True


def _is_copy(sch, block) -> bool:
    """Whether ``block`` stores exactly what it loads, at the same indices (a padding of zero)."""
    import tvm

    body = sch.get(block).body
    if not isinstance(body, tvm.tirx.BufferStore) or not isinstance(body.value, tvm.ir.expr.TensorLoad):
        return False
    return len(body.indices) == len(body.value.indices) and all(a.same_as(b) for a, b in zip(body.indices, body.value.indices))


def _vector_read_of(read, n_var) -> bool:
    """Whether ``read`` (a buffer region) has ``n_var`` in its last index: a vector load along n."""
    import tvm

    return bool(read.region) and any(v.same_as(n_var) for v in tvm.tirx.analysis.undefined_vars(read.region[-1].min))


def _reads_var(read, var) -> bool:
    """Whether any index of ``read`` (a buffer region) uses ``var``."""
    return any(_reads_var_expr(r.min, var) for r in read.region)


def _vector_read(sch, red, producer, n_var) -> bool:
    """True when ``red`` reads what ``producer`` writes with ``n_var`` in the last index."""
    written = [w.source for w in sch.get(producer).writes]
    for read in sch.get(red).reads:
        if any(read.source.same_as(w) for w in written) and read.region:
            return _vector_read_of(read, n_var)
    return False


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


#: a kernel the CPU pipeline lowers without TIR's common-subexpression elimination
#: (:mod:`.tir_pipeline`): a Winograd transform's unrolled positions took it 3.6 of the kernel's
#: 6.9 s to lower, and LLVM eliminates the same subexpressions anyway
NO_CSE_ATTR = "graphpress.no_tir_cse"

#: the block annotation of a Winograd transform (:mod:`.winograd`): ``m``, the tile's output size
WINOGRAD_TILE_ATTR = "graphpress.winograd_tile"


def schedule_transform(sch, block, m: int, transform=None) -> None:
    """A transform's (or its fused epilogue's) loops: the tile's positions unrolled, so every
    coefficient is a constant, the channels innermost in vectors, the tiles over the cores.
    Input transform ``(alpha^2, tiles, c)``: tiles outermost, positions, channels. Output
    ``(n, oh, ow, k)``: rows and columns split by ``m``. ``transform``: the output transform
    when ``block`` is its epilogue; it is computed into a local tile of one channel vector
    before the epilogue reads it (inlined, its whole expression -- a select among ``m^2`` sums
    -- was copied into each use: SiLU's ``x * sigmoid(x)`` and the fast exponential's range
    reduction use it several times, and YOLOv8n's build took 54 s instead of 5)."""
    loops = sch.get_loops(block)
    work = _work(sch, block)
    if len(loops) == 2:  # input transform, written out position by position
        outer, c = loops
        positions = []
    elif len(loops) == 3:  # input transform
        e, p, c = loops
        positions = [e]
        outer = p
    else:
        n, y, x, c = loops
        yo, yi = sch.split(y, [None, m])
        xo, xi = sch.split(x, [None, m])
        positions = [yi, xi]
        sch.reorder(n, yo, xo, yi, xi, c)
        outer = sch.fuse(n, yo, xo)
    extent = int(sch.get(c).extent)
    lanes = 16 if extent % 16 == 0 else (8 if extent % 8 == 0 else 1)
    co, ci = sch.split(c, [None, lanes])
    # a vector of channels at a time, all the tile's positions of it: the tile's loads are
    # shared by its positions once unrolled
    sch.reorder(outer, co, *positions, ci)
    for loop in positions:
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(ci)
    _parallel(sch, outer, work)
    if transform is not None:
        sch.compute_at(transform, co)
        sch.set_scope(transform, 0, "local")
        *tile_positions, channels = sch.get_loops(transform)[-3:]
        for loop in tile_positions:
            sch.unroll(loop)
        if lanes > 1:
            sch.vectorize(channels)


def transform_tile(sch, blocks) -> int | None:
    """``m`` when one of ``blocks`` is a Winograd transform, else None."""
    for block in blocks:
        tile = sch.get(block).annotations.get(WINOGRAD_TILE_ATTR)
        if tile is not None:
            return int(tile)
    return None

