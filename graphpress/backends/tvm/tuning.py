"""MetaSchedule for CPU builds: tuning databases and their keys, tuning, and applying the records.

A database is a folder of MetaSchedule JSON records keyed by :func:`target_key` (kind, mcpu or
arch, core count and a digest of the whole target dict): records only transfer between
identical targets. :func:`database_dirs` lists the ones a build consults, first match wins:
the user's cache (``$GRAPHPRESS_CACHE`` or ``~/.cache/graphpress``) or a folder the user names,
then the ones shipped with graphpress. :func:`schedule_cpu` lowers a Relax module, tunes it
when asked, applies the records and gives the rest the generic schedules
(:mod:`graphpress.backends.tvm.schedules`); with fast math it may return two candidates for the
build to time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import linecache
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from graphpress.backends.tvm.fastmath import exact_legalization, fast_math_legalization
from graphpress.backends.tvm.layout import (
    conv1d_as_conv2d,
    conv_transpose_as_conv,
    convs_to_nhwc,
    fold_constants,
    pad_output_channels,
    pad_output_width,
    positive_squeeze_axes,
    scalar_constants,
    sink_permutes,
    softmax_on_last_axis,
    unit_width_convs_along_width,
)
from graphpress.backends.tvm.ranges import fused_ranges
from graphpress.backends.tvm.runtime import Remote, current_remote
from graphpress.backends.tvm.schedules import packed_kernels, schedule_gemm, schedule_injective
from graphpress.backends.tvm.targets import TargetSpec, vector_facts
from graphpress.backends.tvm.winograd import winograd_convs

log = logging.getLogger(__name__)

__all__ = ["SHIPPED_DATABASES", "Tuning", "database_dirs", "kernel_names", "open_database", "schedule_cpu", "target_key", "user_database_dir"]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How a CPU build is scheduled.

    Attributes:
        trials: MetaSchedule trials in total; 0 applies existing records only.
        max_trials_per_task: per-kernel cap (default ``trials // kernels``).
        database: the tuning database folder (default: the user cache for the target).
        shipped: also apply the databases shipped with graphpress.
        fast_math: ``erf``/``exp``/``tanh`` as polynomial vector code where it does not cost
            tuned schedules (:mod:`graphpress.backends.tvm.fastmath`).
        analytic: matrix products and convolutions no record covers get the register-blocked
            schedule computed from the target's vector unit
            (:func:`~graphpress.backends.tvm.schedules.schedule_gemm`).
        nhwc: convert convolutions to NHWC for it (the build retries without when TVM cannot
            build the converted model).
        winograd: 3x3 stride-1 NHWC float convolutions that Winograd's tiles cover run as
            its transforms and a batched matmul (:mod:`graphpress.backends.tvm.winograd`).
        int8_lowering: the Relax pass that puts integer convolutions on the int8 ISA's kernels
            (:func:`~graphpress.backends.tvm.int8.emit.lower_int8_convs`), run after the layout
            conversion; None for a build without an int8 ISA.
        int8_schedule: schedules the int8 kernels Relax fused with their write-back
            (:func:`~graphpress.backends.tvm.int8.dot.schedule_dot_kernels`), before any other
            schedule sees them; None for a build without an int8 ISA.
        records: consult tuning databases at all; False: the analytic and generic schedules
            only (the build a database's records are timed against, ``build._build``).
    """

    trials: int = 0
    max_trials_per_task: int | None = None
    database: str | os.PathLike | None = None
    shipped: bool = True
    fast_math: bool = True
    analytic: bool = True
    nhwc: bool = True
    int8_lowering: Any = None
    int8_schedule: Any = None
    winograd: bool = True
    records: bool = True


SHIPPED_DATABASES = Path(__file__).parent / "databases"
#: ops ConvertLayout would otherwise move to NHWC with their input, but TVM cannot lower there
#: (a DBNet's ConvTranspose upsampling, PP-OCRv4 det): they keep NCHW, transposed around
KEEP_NCHW = {"relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}
#: Seconds a tuning candidate may take to build / to run before it is discarded.
BUILD_TIMEOUT_S = 120
RUN_TIMEOUT_S = 60
#: A candidate for a remote device is compiled and then linked by the cross compiler: on a busy
#: 2-core host two such builds took over 120 s (every candidate was lost, nothing was measured).
CROSS_BUILD_TIMEOUT_S = 600


def target_key(spec: TargetSpec) -> str:
    """The folder name for tuning records: records only transfer between identical targets."""
    digest = hashlib.sha1(spec.to_json().encode()).hexdigest()[:10]
    parts = [spec.config.get("kind"), spec.config.get("mcpu") or spec.config.get("arch") or "generic", f"{spec.config.get('num-cores', 'any')}c", digest]
    return "-".join(str(p) for p in parts)


def user_database_dir(spec: TargetSpec) -> Path:
    """Where tuning records for ``spec`` are written (``$GRAPHPRESS_CACHE`` or ``~/.cache/graphpress``)."""
    root = Path(os.environ.get("GRAPHPRESS_CACHE", Path.home() / ".cache" / "graphpress"))
    return root / "tvm-tuning" / target_key(spec)


def database_dirs(spec: TargetSpec, database: str | os.PathLike | None = None, *, shipped: bool = True) -> list[Path]:
    """Tuning databases consulted for ``spec``, first match wins: ``database`` (or the user's
    cache), then the one shipped with graphpress unless ``shipped=False``."""
    dirs = [Path(database) if database else user_database_dir(spec)]
    packaged = SHIPPED_DATABASES / target_key(spec)
    if shipped and packaged.is_dir() and packaged.resolve() != dirs[0].resolve():
        dirs.append(packaged)
    return dirs


def export_shared_library(cross_compiler: str | None, mod) -> str:
    """MetaSchedule's export for a candidate measured over RPC: a shared library linked here
    (with the target's cross compiler), which the device loads as it is; MetaSchedule's default
    tar would need a C++ compiler on the device."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="graphpress-ms-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler) if cross_compiler else None)
    return path


def _quick_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without the module search: TVMScript's parser takes the caller's stack
    for every ``@T.prim_func``, and ``inspect`` looks each frame's module up among all loaded
    modules. Importing MetaSchedule's tensor intrinsics (every target's, parsed on first use by
    the tuning process and by each of its builder and runner workers) took 33 s that way, 2.4 s
    this way. Frames, names, line numbers and the calling line are the same."""
    if context != 1:
        return inspect.getouterframes(sys._getframe(1), context)
    frame, out = sys._getframe(1), []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)
        out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return out


def quick_tvmscript_worker() -> None:
    """Initializer of MetaSchedule's worker processes (they only build or time candidates)."""
    inspect.stack = _quick_stack


@contextlib.contextmanager
def quick_tvmscript():
    """:func:`_quick_stack` in place of ``inspect.stack`` while MetaSchedule tunes here."""
    saved, inspect.stack = inspect.stack, _quick_stack
    try:
        yield
    finally:
        inspect.stack = saved


def measuring_tools(remote: Remote | None):
    """MetaSchedule's builder and runner: local, or candidates linked here and timed on the
    device of ``remote`` through its RPC tracker (MetaSchedule's RPC runner)."""
    from tvm.s_tir import meta_schedule as ms

    if remote is None:
        # LLVM builds of AVX-512 candidates can exceed MetaSchedule's default 30 s on 2 cores
        return (ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, initializer=quick_tvmscript_worker),
                ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, initializer=quick_tvmscript_worker))
    if not remote.key:
        from graphpress.errors import GraphpressError

        raise GraphpressError(f"--rpc {remote.address}: tuning over RPC goes through a tracker; give HOST:PORT:KEY (MetaSchedule's RPC runner asks the tracker for a device)")
    remote.close()  # the runner asks the tracker for sessions of its own: ours would keep the device busy
    config = ms.runner.RPCConfig(tracker_host=remote.host, tracker_port=remote.port, tracker_key=remote.key, session_timeout_sec=int(remote.timeout_s))
    builder = ms.builder.LocalBuilder(timeout_sec=CROSS_BUILD_TIMEOUT_S, f_export=functools.partial(export_shared_library, remote.cross_compiler),
                                      initializer=quick_tvmscript_worker)  # fmt: skip
    return builder, ms.runner.RPCRunner(config, ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0), initializer=quick_tvmscript_worker)


def open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(directory / "database_workload.json"),
        path_tuning_record=str(directory / "database_tuning_record.json"),
        allow_missing=True,
    )


def kernel_names(mod) -> tuple[list[str], list[str]]:
    """(scheduled, unscheduled) PrimFunc names of a module."""
    import tvm

    scheduled, unscheduled = [], []
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            attrs = func.attrs or {}
            (scheduled if attrs.get("tirx.is_scheduled", False) else unscheduled).append(gv.name_hint)
    return scheduled, unscheduled


def schedule_cpu(mod, spec: TargetSpec, tuning: Tuning):
    """Lower ``mod`` and apply the tuning databases (after tuning, with ``tuning.trials``) and the
    generic schedules. Returns ``(candidates, stats)``: one scheduled module, or two (fast math,
    libm) when fast math would cost tuned schedules while it speeds up untuned libm kernels --
    the build then times both."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tune_trials, max_trials_per_task, fast_math = tuning.trials, tuning.max_trials_per_task, tuning.fast_math
    analytic = tuning.analytic and spec.is_cpu

    target = spec.tvm_target()
    stats: dict[str, Any] = {}
    dirs = database_dirs(spec, tuning.database, shipped=tuning.shipped) if tuning.records else []
    if tune_trials > 0 and not dirs:
        raise ValueError("tuning writes its records to a database: Tuning(records=False) cannot tune")

    def union():
        databases = [open_database(d) for d in dirs]
        return None if not databases else databases[0] if len(databases) == 1 else ms.database.OrderedUnionDatabase(*databases)

    layout: dict[str, bool | str] = {"nhwc": False}  # the layout every variant is lowered in, once decided

    def lower(fast: bool, nhwc: bool | str | None = None):  # nhwc: True (the whole model), "local" (each convolution alone)
        nhwc = layout["nhwc"] if nhwc is None else nhwc
        steps = [relax.transform.ConvertToDataflow(), relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
        winograd: list[str] = []  # the convolutions computed by Winograd's transforms
        if nhwc:  # output channels innermost: the analytic GEMM schedule vectorizes over them
            convert = convs_to_nhwc() if nhwc == "local" else relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"], **KEEP_NCHW})
            steps += [conv1d_as_conv2d(), conv_transpose_as_conv(), unit_width_convs_along_width(), scalar_constants(), positive_squeeze_axes(), convert, sink_permutes(), fold_constants(), relax.transform.DeadCodeElimination()]
        if analytic:  # output channels in whole vectors for the register tile; softmax rows contiguous; a range read once
            facts = vector_facts(spec)
            steps += [*([winograd_convs(winograd)] if nhwc and tuning.winograd else []), pad_output_channels(facts.lanes), pad_output_width(facts.lanes, facts.registers), softmax_on_last_axis(), fused_ranges()]
        if tuning.int8_lowering is not None:  # integer convolutions onto the ISA's kernels, in the layout they now have
            # the lowered call bound straight to the conv's variable: FuseOps fuses nothing across a
            # variable bound to a variable (the requantization stayed a kernel of its own); then
            # one padded copy of an input that several convolutions pad alike (a spectrogram's
            # cosine and sine filters: the mel spectrogram on AVX-512 VNNI 0.1205 -> 0.1140 ms)
            steps += [tuning.int8_lowering, relax.transform.CanonicalizeBindings(), relax.transform.EliminateCommonSubexpr()]
        steps.append(fold_constants())  # constants reshaped or transposed by the steps above, in numpy
        # quantize's division exactly as a multiply and FMAs on every build; libm math as polynomials if fast
        steps.append(relax.transform.LegalizeOps(customize_legalize_map={**exact_legalization(), **(fast_math_legalization() if fast else {})}))
        lowered = tvm.transform.Sequential([*steps, relax.get_pipeline("zero")])(mod)
        if winograd:
            stats["winograd_convolutions"] = winograd
        if tuning.int8_schedule is not None:  # scheduled before tuning or databases see them
            lowered, stats["int8_fused_kernels"], apart = tuning.int8_schedule(lowered)
            if apart:  # the kernels whose write-back runs after the product, as loop nests of its own
                stats["int8_write_back_apart"] = apart
        return lowered

    db = union()

    def apply_database(lowered):
        if db is None:
            return lowered
        with target, db:
            return relax.transform.MetaScheduleApplyDatabase()(lowered)

    def in_nhwc(names) -> dict | None:
        """The variants ``names`` lowered in NHWC: the whole model, else each convolution alone
        (transposed in and out); ``None`` when TVM could convert neither (``conv_layout`` says why)."""
        try:
            out = {name: lower(name == "fast", nhwc=True) for name in names}
            layout["nhwc"], stats["conv_layout"] = True, "NHWC"
            return out
        except Exception as e:  # noqa: BLE001 - TVM could not convert this model as a whole
            failed = str(e).splitlines()[0][:120]
            try:
                out = {name: lower(name == "fast", nhwc="local") for name in names}
                layout["nhwc"], stats["conv_layout"] = "local", f"NHWC per convolution (the model's layout could not move: {failed})"
                return out
            except Exception as e2:  # noqa: BLE001 - NCHW stays
                stats["conv_layout"] = f"NCHW (NHWC failed: {failed}; per convolution: {str(e2).splitlines()[0][:120]})"
                return None

    nhwc = tune_trials == 0 and analytic and tuning.nhwc and _has_conv2d(mod)
    # integer convolutions take NHWC whatever the databases hold, so a model with them is lowered
    # in it from the start: the NCHW lowering only asked the databases (ResNet-18: 0.8-1.3 s a
    # build, up to three builds in a compile, and the layer guard's)
    nhwc_first = nhwc and tuning.int8_lowering is not None
    with target:
        variants = (in_nhwc(["libm"]) if nhwc_first else None) or {"libm": lower(False)}
        if fast_math:
            if not any(isinstance(f, tvm.tirx.PrimFunc) and _calls_libm(f) for f in variants["libm"].functions.values()):
                stats["fast_math"] = "no libm math in this model"
            elif tune_trials > 0:
                variants = {"fast": lower(True)}  # tuned below, fast math included
            else:
                # the polynomial forms change the kernels, so tuning records of libm kernels no
                # longer apply to them: decide by the records, and by timing when they disagree
                fast = lower(True)
                plain_db, fast_db = kernel_names(apply_database(variants["libm"])), kernel_names(apply_database(fast))
                lost = len(plain_db[0]) - len(fast_db[0])
                untuned_libm = sum(1 for name in plain_db[1] if _calls_libm(_func_named(variants["libm"], name)))
                if lost <= 0 or (untuned_libm and not spec.is_host):
                    variants = {"fast": fast}
                elif untuned_libm:
                    variants["fast"] = fast
                stats["fast_math_records"] = {"tuned_kernels_lost": lost, "untuned_libm_kernels": untuned_libm}
        if nhwc and not nhwc_first:
            # convolutions no tuning record covers get the analytic schedule, which needs
            # NHWC; a database that schedules the NCHW convolutions keeps them
            tuned_convs = {name: sum(1 for k in kernel_names(apply_database(lowered))[0] if "conv" in k) for name, lowered in variants.items()}
            if not any(tuned_convs.values()):
                variants = in_nhwc(list(variants)) or variants
        _, tasks = kernel_names(next(iter(variants.values())))
        stats["kernels"] = len(tasks)
        if tune_trials > 0:
            drop_unnamed_tuning_log_handlers()
            per_task = max_trials_per_task or max(1, tune_trials // max(1, len(tasks)))
            builder, runner = measuring_tools(current_remote())
            start = time.perf_counter()
            before = len(open_database(dirs[0]).get_all_tuning_records())
            with quick_tvmscript():
                ms.relax_integration.tune_relax(
                    next(iter(variants.values())),
                    params={},
                    target=target,
                    work_dir=str(dirs[0]),
                    max_trials_global=tune_trials,
                    max_trials_per_task=per_task,
                    num_trials_per_iter=min(64, per_task),
                    builder=builder,
                    runner=runner,
                    database=open_database(dirs[0]),
                )
            measured = len(open_database(dirs[0]).get_all_tuning_records()) - before  # candidates that built and ran
            if measured <= 0:
                log.warning("tuning measured no candidate (every build or run failed): the build uses the databases it had, see %s/logs", dirs[0])
            stats.update({"tune_trials": tune_trials, "max_trials_per_task": per_task, "tuning_seconds": round(time.perf_counter() - start, 1),
                          "tuning_records_added": measured,
                          "tuned_on": current_remote().describe() if current_remote() is not None else "this host"})
            db = union()  # with the new records
    candidates = {}
    for name, lowered in variants.items():
        scheduled_before = len(kernel_names(lowered)[0])  # the int8 kernels, scheduled as they were lowered
        scheduled_mod = apply_database(lowered)
        scheduled, _ = kernel_names(scheduled_mod)
        gemm = 0
        if analytic:  # matrix products and convolutions: register-blocked for the target's vectors
            facts = vector_facts(spec)
            scheduled_mod, gemm = schedule_gemm(scheduled_mod, facts.lanes, facts.registers)
        # listed before the generic schedules below: those make other kernels less slow, not fast
        now_scheduled, unscheduled = kernel_names(scheduled_mod)
        scheduled_mod, generic = schedule_injective(scheduled_mod)
        candidates[name] = (scheduled_mod, {
            "generic_scheduled_kernels": generic,
            "analytic_scheduled_kernels": gemm,
            "packed_weights": packed_kernels(scheduled_mod),
            "scheduled_kernels": len(scheduled) + gemm,
            "database_kernels": len(scheduled) - scheduled_before,
            "unscheduled_kernels": unscheduled,
            "kernel_names": sorted(now_scheduled + unscheduled),
        })  # fmt: skip
    stats["databases"] = [str(d) for d in dirs]
    if "fast_math" not in stats:
        stats["fast_math"] = "fast" in candidates if len(candidates) == 1 else "timed"
    return candidates, stats


def _has_conv2d(mod) -> bool:
    """Whether a Relax function of ``mod`` calls ``relax.nn.conv2d`` (or ``conv1d``, which
    :func:`~graphpress.backends.tvm.layout.conv1d_as_conv2d` makes one)."""
    import tvm
    from tvm.relax.expr_functor import PyExprVisitor, visitor

    convs = [tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.nn.conv1d")]
    found = []

    @visitor
    class Finder(PyExprVisitor):
        def visit_call_(self, call):
            if any(call.op.same_as(c) for c in convs):
                found.append(call)
            super().visit_call_(call)

    for func in mod.functions.values():
        if isinstance(func, tvm.relax.Function) and not found:
            Finder().visit_expr(func)
    return bool(found)


def _func_named(mod, name: str):
    return next(f for gv, f in mod.functions.items() if gv.name_hint == name)


#: float math TVM lowers to one libm call per element on CPUs
_LIBM_CALLS = ("T.erf(", "T.exp(", "T.tanh(")


def _calls_libm(func) -> bool:
    text = func.script()
    return any(call in text for call in _LIBM_CALLS)


def drop_unnamed_tuning_log_handlers() -> None:
    """MetaSchedule (TVM 0.27) re-lists the handlers of its global logger by name when it sets up
    a tuning run; a handler without a name (left by an earlier run in the same process) makes
    that crash with ``'NoneType' object has no attribute 'format'``."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)
