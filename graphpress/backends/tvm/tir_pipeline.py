"""The TIR lowering pipeline of CPU builds: TVM's own, with small buffers on the stack and the
window rows of zeros a convolution reads skipped.

TVM's ``LowerTVMBuiltin`` serves every buffer of 1 KB or more through
``TVMBackendAllocWorkspace``: a call into the runtime's workspace pool, made wherever the buffer
is allocated. A register tile's accumulators (14 x 2 vectors of 16 floats: 1,792 bytes) are
allocated once per tile, inside the loop over the cores, so every tile paid an allocation, a
``memset`` of its initial zeros and a free; and since the buffer's address escaped into those
calls, LLVM kept it in memory: the depthwise tiles stored every accumulator back after each FMA.
On the stack (an ``alloca`` at the entry of the function or of the parallel loop's body) LLVM
promotes the tile to registers. :func:`cpu_tir_pipeline` marks every buffer of a constant size up
to :data:`STACK_BYTES` ``disable_lower_builtin`` (TVM's own switch for keeping an allocation a
stack one) before the host's finalizing passes. Measured side by side, both builds in one process
(2-core Xeon, AVX-512, 2 threads): MobileNetV2 6.15 -> 4.96 ms (ONNX Runtime 5.64), ResNet-18
15.66 -> 14.38 ms (ONNX Runtime 13.94), MiniLM 20.8 -> 19.6 ms; on the AVX2 path ResNet-18 38.2 ->
34.8 ms and MobileNetV2 7.07 -> 5.96 ms.

It also clips the window-row loops of padded convolutions to the rows that read input
(:func:`_clip_loops`, first of the host's passes): ``schedules.py`` annotates each such loop with
its bounds (:data:`~.schedules.WINDOW_ROWS_ATTR`) instead of clipping it, because TVM's buffer
compaction cannot bound a tile's accumulators inside a loop of variable extent and allocated them
for the whole output (ResNet-18's 7x7 input convolution 40% slower).
"""

from __future__ import annotations

import numpy as np

__all__ = ["STACK_BYTES", "cpu_tir_pipeline"]

#: buffers of a constant size up to this many bytes are stack allocations (TVM's own limit: 1 KB).
#: A thread's stack is megabytes (8 MB by default on Linux); the largest tile buffer is a few KB
STACK_BYTES = 8192

#: the name the pipeline is registered under (TVM's ``tirx.build`` takes a pipeline by name)
NAME = "graphpress_cpu"


def _nbytes(buffer) -> int | None:
    import tvm

    try:
        elements = int(np.prod([int(s) for s in buffer.shape]))
    except (TypeError, ValueError):  # a symbolic extent
        return None
    dtype = tvm.DataType(str(buffer.dtype))
    return elements * max(1, dtype.bits * dtype.lanes // 8)


def _on_stack(stmt):
    from tvm import tirx

    size = _nbytes(stmt.buffer)
    if size is None or size > STACK_BYTES or stmt.buffer.scope() not in ("global", "local"):
        return stmt
    annotations = dict(stmt.annotations)
    annotations["disable_lower_builtin"] = tirx.IntImm("bool", 1)
    return tirx.AllocBuffer(stmt.buffer, annotations=annotations)


def _keep_small_buffers_on_stack():
    import tvm_ffi

    from tvm import tirx

    @tirx.transform.prim_func_pass(opt_level=0, name="graphpress.KeepSmallBuffersOnStack")
    def keep(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(tirx.AllocBuffer, _on_stack)])

    return keep


def _clip_loops(func):
    """Clip every loop annotated :data:`~.schedules.WINDOW_ROWS_ATTR` to the rows it names. The
    bounds were written in the scheduled kernel's loop variables, which ``NarrowDataType`` has
    since replaced by 32-bit ones of the same names: each is mapped back to the one loop of its
    name around the annotated loop (a loop whose bounds cannot be is left whole: the rows it
    would skip only read zeros)."""
    import tvm_ffi

    from tvm import tirx

    from graphpress.backends.tvm.schedules import WINDOW_ROWS_ATTR

    loops = []
    tvm_ffi.structural_map(func.body, [(tirx.For, lambda f: loops.append(f) or f)])
    if not any(f.annotations and WINDOW_ROWS_ATTR in f.annotations for f in loops):
        return func

    def inside(outer, var) -> bool:  # whether the loop of ``var`` is in ``outer``'s body
        found = []
        tvm_ffi.structural_map(outer.body, [(tirx.For, lambda f: found.append(f.loop_var.same_as(var)) or f)])
        return any(found)

    def clip(loop):
        if not loop.annotations or WINDOW_ROWS_ATTR not in loop.annotations:
            return loop
        annotations = {k: v for k, v in loop.annotations.items() if k != WINDOW_ROWS_ATTR}
        around = [f for f in loops if inside(f, loop.loop_var)]
        bounds = []
        for bound in loop.annotations[WINDOW_ROWS_ATTR]:
            unknown = []

            def remap(v):
                if any(v.same_as(f.loop_var) for f in around):
                    return v
                found = [f.loop_var for f in around if f.loop_var.name == v.name]
                if len(found) != 1:
                    unknown.append(v)
                    return v
                return tirx.Cast(str(v.ty), found[0]) if str(found[0].ty) != str(v.ty) else found[0]

            bound = tvm_ffi.structural_map(bound, [(tirx.Var, remap)])
            if unknown:
                return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, loop.body, loop.thread_binding, annotations or None)
            bounds.append(bound if str(bound.ty) == str(loop.loop_var.ty) else tirx.Cast(str(loop.loop_var.ty), bound))
        first, end = bounds
        extent = tirx.Max(end - first, tirx.IntImm(str(loop.loop_var.ty), 0))
        return tirx.For(loop.loop_var, first, extent, loop.kind, loop.body, loop.thread_binding, annotations or None)

    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.For, clip)]))


def _clip_window_rows():
    from tvm import tirx

    @tirx.transform.prim_func_pass(opt_level=0, name="graphpress.ClipWindowRows")
    def clip(func, _mod, _ctx):
        return _clip_loops(func)

    return clip


def _without_cse_for(attr: str, lower):
    """``lower``, with the functions that carry ``attr`` lowered in a pass context that
    disables ``CommonSubexprElim``."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="graphpress.LowerWithoutCSE")
    def run(mod, ctx):
        marked = {gv for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and (f.attrs or {}).get(attr, False)}
        if not marked:
            return lower(mod)
        rest = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in marked}, attrs=mod.attrs)
        alone = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv in marked}, attrs=mod.attrs)
        out = lower(rest) if len(rest.functions) else rest
        with tvm.transform.PassContext(opt_level=ctx.opt_level, config={**dict(ctx.config), "tirx.disable_cse_tir": True},
                                       required_pass=list(ctx.required_pass), disabled_pass=list(ctx.disabled_pass)):  # fmt: skip
            done = lower(alone)
        out.update(done)
        return out

    return run


def _factory():
    import tvm

    from tvm.s_tir import pipeline

    default_lower, finalize_host, finalize_device = pipeline.default_s_tir_pipeline()

    from graphpress.backends.tvm.schedules import NO_CSE_ATTR

    lower = _without_cse_for(NO_CSE_ATTR, default_lower)

    def host():
        return tvm.ir.transform.Sequential([_clip_window_rows(), _keep_small_buffers_on_stack(), finalize_host()])

    return lower, host, finalize_device


def cpu_tir_pipeline() -> str:
    """The name of the pipeline (registered with TVM on first use) to pass as ``tir_pipeline``."""
    from tvm.tirx import compilation_pipeline

    if NAME not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(NAME, _factory)
    return NAME
