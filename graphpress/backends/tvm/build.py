"""Compile an IR model with TVM for a target: lowering, scheduling, tuning, building.

CPU (``llvm``) targets:

0. On a copy of the model, :data:`PREPARE_SPEC` (cleanup, BatchNorm folding) — all targets.
1. ``DecomposeOpsForInference`` + the zero pipeline (legalize to TIR, fuse, fold).
2. If ``tune_trials > 0``: MetaSchedule tunes every kernel (``max_trials_per_task``
   defaults to ``tune_trials / number of tasks``, so no task is skipped) and appends the
   records to the tuning database.
3. Schedules from the tuning databases are applied (:func:`database_dirs`: the user's
   cache, then the ones shipped with graphpress). A second compile of the same model thus
   takes seconds.
4. ``tvm.compile``. Kernels left without a schedule are listed in the build report
   (``unscheduled_kernels``), never silently.

CUDA targets use TVM's default CUDA pipeline, which schedules every kernel with dlight's
GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback); ``nvcc`` compiles them
ahead of time.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import graphpress
from graphpress.backends.tvm.lower import bind_input_shapes, to_relax
from graphpress.backends.tvm.runtime import CompiledModel, require_compiler
from graphpress.backends.tvm.schedules import schedule_injective
from graphpress.backends.tvm.targets import TargetSpec, resolve_target
from graphpress.errors import GraphpressError, one_line

__all__ = ["compile_model", "database_dirs", "user_database_dir"]

SHIPPED_DATABASES = Path(__file__).parent / "databases"
#: Seconds a tuning candidate may take to build / to run before it is discarded.
BUILD_TIMEOUT_S = 120
RUN_TIMEOUT_S = 60


def _target_key(spec: TargetSpec) -> str:
    """A folder name for tuning records: records only transfer between identical targets."""
    digest = hashlib.sha1(spec.to_json().encode()).hexdigest()[:10]
    parts = [spec.config.get("kind"), spec.config.get("mcpu") or spec.config.get("arch") or "generic", f"{spec.config.get('num-cores', 'any')}c", digest]
    return "-".join(str(p) for p in parts)


def user_database_dir(spec: TargetSpec) -> Path:
    """Where tuning records for ``spec`` are written (``$GRAPHPRESS_CACHE`` or ``~/.cache/graphpress``)."""
    root = Path(os.environ.get("GRAPHPRESS_CACHE", Path.home() / ".cache" / "graphpress"))
    return root / "tvm-tuning" / _target_key(spec)


def database_dirs(spec: TargetSpec, database: str | os.PathLike | None = None, *, shipped: bool = True) -> list[Path]:
    """Tuning databases consulted for ``spec``, first match wins: ``database`` (or the user's
    cache), then the one shipped with graphpress unless ``shipped=False``."""
    dirs = [Path(database) if database else user_database_dir(spec)]
    packaged = SHIPPED_DATABASES / _target_key(spec)
    if shipped and packaged.is_dir() and packaged.resolve() != dirs[0].resolve():
        dirs.append(packaged)
    return dirs


def _open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(directory / "database_workload.json"),
        path_tuning_record=str(directory / "database_tuning_record.json"),
        allow_missing=True,
    )


def _kernels(mod) -> tuple[list[str], list[str]]:
    """(scheduled, unscheduled) PrimFunc names of a module."""
    import tvm

    scheduled, unscheduled = [], []
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            attrs = func.attrs or {}
            (scheduled if attrs.get("tirx.is_scheduled", False) else unscheduled).append(gv.name_hint)
    return scheduled, unscheduled


def _schedule_cpu(mod, spec: TargetSpec, tune_trials: int, max_trials_per_task: int | None, database: str | os.PathLike | None, shipped: bool,
                  fast_math: bool = True):  # fmt: skip
    """Lower ``mod`` and apply the tuning databases (after tuning, with ``tune_trials``) and the
    generic schedules. Returns ``(candidates, stats)``: one scheduled module, or two (fast math,
    libm) when fast math would cost tuned schedules while it speeds up untuned libm kernels —
    :func:`_build` then times both."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    target = spec.tvm_target()
    stats: dict[str, Any] = {}
    dirs = database_dirs(spec, database, shipped=shipped)

    def union():
        databases = [_open_database(d) for d in dirs]
        return databases[0] if len(databases) == 1 else ms.database.OrderedUnionDatabase(*databases)

    def lower(fast: bool):
        steps = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
        if fast:
            from graphpress.backends.tvm.fastmath import fast_math_legalization

            steps.append(relax.transform.LegalizeOps(customize_legalize_map=fast_math_legalization()))
        return tvm.transform.Sequential([*steps, relax.get_pipeline("zero")])(mod)

    db = union()

    def apply_database(lowered):
        with target, db:
            return relax.transform.MetaScheduleApplyDatabase()(lowered)

    with target:
        variants = {"libm": lower(False)}
        if fast_math:
            if not any(isinstance(f, tvm.tirx.PrimFunc) and _calls_libm(f) for f in variants["libm"].functions.values()):
                stats["fast_math"] = "no libm math in this model"
            elif tune_trials > 0:
                variants = {"fast": lower(True)}  # tuned below, fast math included
            else:
                # the polynomial forms change the kernels, so tuning records of libm kernels no
                # longer apply to them: decide by the records, and by timing when they disagree
                fast = lower(True)
                plain_db, fast_db = _kernels(apply_database(variants["libm"])), _kernels(apply_database(fast))
                lost = len(plain_db[0]) - len(fast_db[0])
                untuned_libm = sum(1 for name in plain_db[1] if _calls_libm(_func_named(variants["libm"], name)))
                if lost <= 0 or (untuned_libm and not spec.is_host):
                    variants = {"fast": fast}
                elif untuned_libm:
                    variants["fast"] = fast
                stats["fast_math_records"] = {"tuned_kernels_lost": lost, "untuned_libm_kernels": untuned_libm}
        _, tasks = _kernels(next(iter(variants.values())))
        stats["kernels"] = len(tasks)
        if tune_trials > 0:
            from graphpress.backends.tvm.int8 import drop_unnamed_tuning_log_handlers

            drop_unnamed_tuning_log_handlers()
            per_task = max_trials_per_task or max(1, tune_trials // max(1, len(tasks)))
            start = time.perf_counter()
            ms.relax_integration.tune_relax(
                next(iter(variants.values())),
                params={},
                target=target,
                work_dir=str(dirs[0]),
                max_trials_global=tune_trials,
                max_trials_per_task=per_task,
                num_trials_per_iter=min(64, per_task),
                # LLVM builds of AVX-512 candidates can exceed MetaSchedule's default 30 s on 2 cores
                builder=ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S),
                runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S),
                database=_open_database(dirs[0]),
            )
            stats.update({"tune_trials": tune_trials, "max_trials_per_task": per_task, "tuning_seconds": round(time.perf_counter() - start, 1)})
            db = union()  # with the new records
    candidates = {}
    for name, lowered in variants.items():
        scheduled_mod = apply_database(lowered)
        # listed before the generic schedules below: those make untuned kernels less slow, not tuned
        scheduled, unscheduled = _kernels(scheduled_mod)
        scheduled_mod, generic = schedule_injective(scheduled_mod)
        candidates[name] = (scheduled_mod, {
            "generic_scheduled_kernels": generic,
            "scheduled_kernels": len(scheduled),
            "unscheduled_kernels": unscheduled,
            "kernel_names": sorted(scheduled + unscheduled),
        })  # fmt: skip
    stats["databases"] = [str(d) for d in dirs]
    if "fast_math" not in stats:
        stats["fast_math"] = "fast" in candidates if len(candidates) == 1 else "timed"
    return candidates, stats


def _func_named(mod, name: str):
    return next(f for gv, f in mod.functions.items() if gv.name_hint == name)


#: float math TVM lowers to one libm call per element on CPUs
_LIBM_CALLS = ("T.erf(", "T.exp(", "T.tanh(")


def _calls_libm(func) -> bool:
    text = func.script()
    return any(call in text for call in _LIBM_CALLS)


#: Graph passes run (on a copy) before lowering: TVM folds neither constants through shape ops
#: nor BatchNorm into conv weights.
PREPARE_SPEC = "cleanup,fold_batchnorm,cleanup"


def prepare_for_lowering(model: ir.Model, spec: str = PREPARE_SPEC) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with model-local functions inlined (TVM's importer has no functions; the
    ``fuse`` pass writes attention as one) and ``spec`` applied (invariants checked); the input is
    not changed."""
    import onnx_ir.passes.common as common_passes

    from graphpress.ir.io import to_proto
    from graphpress.passes import InvariantInstrument, PassManager, build_passes
    from graphpress.passes.share import TAG, Unshare

    copy = ir.serde.deserialize_model(to_proto(model))
    inlined = len(copy.functions)
    if inlined:
        common_passes.InlinePass()(copy)
        common_passes.RemoveUnusedFunctionsPass()(copy)
    # weight-sharing lookups (codebook[indices]) become dense weights again: the dense kernels
    # are what TVM schedules, and a lookup per inference only adds work (benchmarks/compression.py)
    unshared = Unshare()(copy).stats["folded_lookups"] if any(TAG in n.metadata_props for n in copy.graph) else 0
    result = PassManager(build_passes(spec), [InvariantInstrument()]).run(copy) if spec else None
    stats = result.stats() if result is not None else {}
    return copy, {"spec": spec, "folded_bn": stats.get("folded_bn", 0), "inlined_functions": inlined, "unshared_lookups": unshared}


def compile_model(
    model: ir.Model,
    target: str | dict[str, Any] | TargetSpec = "x86",
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tune_trials: int = 0,
    max_trials_per_task: int | None = None,
    database: str | os.PathLike | None = None,
    shipped_databases: bool = True,
    prepare: str = PREPARE_SPEC,
    int8: str = "auto",
    int8_guard: bool = True,
    fast_math: bool = True,
) -> CompiledModel:
    """Compile ``model`` with TVM.

    Args:
        model: the (optimized) model; not changed.
        target: ``x86``, ``aarch64``, ``cuda``, a TVM target dict or JSON string.
        input_shapes: static shapes for inputs with symbolic dims (others default to 1).
        tune_trials: MetaSchedule trials in total (CPU targets); 0 applies existing records only.
        max_trials_per_task: per-kernel cap (default ``tune_trials // kernels``).
        database: tuning database directory (default: the user cache for this target).
        shipped_databases: also apply the databases shipped with graphpress.
        prepare: the pass SPEC run on a copy before lowering ("" runs none; the benchmarks
            compile unfused graphs that way).
        int8: ``auto`` (x86 targets with AVX-512 VNNI on a host that has it), ``on`` or ``off``:
            lower quantized dense layers (static QDQ MatMul/Gemm, MatMulInteger) onto VNNI
            kernels (:mod:`graphpress.backends.tvm.quantized`).
        int8_guard: time each int8 kernel against the fp32 kernel of the same layer first and
            keep the layer in fp32 when int8 is not faster.
        fast_math: CPU targets: ``erf``/``exp``/``tanh`` (and GELU, softmax) as polynomial vector
            code instead of one libm call per element (:mod:`graphpress.backends.tvm.fastmath`;
            within a few float32 ulps), unless the tuning databases schedule more of the libm
            kernels than of the fast ones (the report's ``fast_math`` says which was used).

    Returns:
        A :class:`CompiledModel` (callable here for host targets; ``save`` it for others).
    """
    import tvm

    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    if tune_trials < 0:
        raise GraphpressError(f"tune trials must be >= 0, got {tune_trials}")
    if tune_trials and not spec.is_cpu:
        raise GraphpressError(f"target {spec.name}: tuning trials apply to CPU targets; CUDA uses dlight schedules")
    if int8 not in ("auto", "on", "off"):
        raise GraphpressError(f"int8 must be auto, on or off, got '{int8}'")
    if spec.cross_compiler:
        require_compiler(spec.cross_compiler)  # before minutes of compiling, not at save
    shapes = bind_input_shapes(model, input_shapes)
    t0 = time.perf_counter()
    prepared, prep_stats = prepare_for_lowering(model, prepare)
    report: dict[str, Any] = {"prepare": prep_stats}
    vnni = _wants_int8(prepared, spec, int8)
    if vnni:
        from graphpress.backends.tvm.quantized import (
            bypass_float_qdq,
            fold_weight_dequantize,
            plan_int8,
            qdq_to_integer,
            vnni_converters,
        )

        t_int8 = time.perf_counter()
        bound_shapes = bind_input_shapes(prepared, input_shapes)
        _set_input_shapes(prepared, bound_shapes)
        rewrite = qdq_to_integer(prepared)

        def schedule_fp32(mod):
            candidates, stats = _schedule_cpu(mod, spec, 0, None, database, shipped_databases, fast_math)
            return next(iter(candidates.values()))[0], stats

        from graphpress.backends.tvm.targets import has_amx, has_dotprod

        isa = "sdot" if has_dotprod(spec) else "amx" if has_amx(spec) else "vnni"
        # a cross-compiled target cannot be timed here: no guard, int8 only when asked for (int8=on)
        plan = plan_int8(prepared, spec, schedule_fp32, guard=int8_guard and spec.is_host, isa=isa)
        plan.update({"isa": isa, "amx": isa == "amx"})
        if int8_guard and not spec.is_host:
            plan["guard"] = "not run: a cross-compiled target cannot be timed on this host"
        plan["qdq_rewritten"] = len(rewrite["rewritten"])
        # QDQ layers without an integer kernel here (convolutions) get fp32 kernels on their
        # dequantized weights
        plan["fp32_layers"] = fold_weight_dequantize(prepared)["fp32_layers"]
        plan["fp32_bypassed_qdq"] = bypass_float_qdq(prepared)
        plan["fp32_reason"] = (
            "no integer kernel for these ops on this target yet: fp32 kernels on the dequantized weights, "
            "without the activation quantize/dequantize between them"
        )
        plan["seconds"] = round(time.perf_counter() - t_int8, 2)
        report["int8"] = plan
        with vnni_converters(isa):
            mod = to_relax(prepared, shapes, spec.name)
    else:
        mod = to_relax(prepared, shapes, spec.name)
    report["import_seconds"] = round(time.perf_counter() - t0, 3)
    build_args = (tune_trials, max_trials_per_task, database, shipped_databases, fast_math)
    executable, stats = _build(mod, spec, *build_args)
    report.update(stats)
    if vnni and report["int8"]["lowered"]:
        from graphpress.backends.tvm.int8 import amx_dot_product_count, sdot_count, zmm_vpdpbusd_count

        # tensorization failures are only warnings in TVM: count the instructions instead
        asm = executable.mod.imports[0].inspect_source("asm")
        if report["int8"]["isa"] == "sdot":
            report["int8"]["sdot"] = sdot_count(asm)
        else:
            report["int8"]["zmm_vpdpbusd"] = zmm_vpdpbusd_count(asm)
            report["int8"]["amx_tile_products"] = amx_dot_product_count(asm)
        if int8_guard and spec.is_host:
            # the whole model, too: layers that stay fp32 compile differently around integer ones
            # (MobileNetV2's depthwise convs lose their tuned fused kernels), so the all-fp32 build
            # of the same model is timed against it and the faster one ships
            executable, report = _model_guard(model, prepare, shapes, spec, executable, report, build_args)
    meta = {
        "graphpress_version": graphpress.__version__,
        "tvm_version": tvm.__version__,
        "target_name": spec.name,
        "target": spec.config,
        "cross_compiler": spec.cross_compiler,
        "inputs": [{"name": n, **s} for n, s in shapes.items()],
        "outputs": _outputs(model, shapes),
        "build": report,
    }
    return CompiledModel(executable, meta)


def _build(mod, spec: TargetSpec, tune_trials, max_trials_per_task, database, shipped_databases, fast_math: bool = True):
    import tvm

    stats: dict[str, Any] = {}
    candidates = {"": (mod, {})}
    if spec.is_cpu:
        candidates, stats = _schedule_cpu(mod, spec, tune_trials, max_trials_per_task, database, shipped_databases, fast_math)
    t1 = time.perf_counter()
    built = {}
    for name, (scheduled, kernel_stats) in candidates.items():
        try:
            built[name] = (tvm.compile(scheduled, target=spec.tvm_target()), kernel_stats)
        except Exception as e:
            raise GraphpressError(f"target {spec.name}: TVM build failed ({one_line(e, 300, last=True)})") from e
    if len(built) > 1:  # fast math against libm, both built here: the faster ships
        timings = {name: _vm_ms(exe, candidates[name][0]) for name, (exe, _) in built.items()}
        choice = min(timings, key=timings.get)
        stats["fast_math"] = choice == "fast"
        stats["fast_math_ms"] = {name: round(ms_, 4) for name, ms_ in timings.items()}
        built = {choice: built[choice]}
    executable, kernel_stats = next(iter(built.values()))
    stats.update(kernel_stats)
    stats["build_seconds"] = round(time.perf_counter() - t1, 3)
    return executable, stats


def _vm_ms(executable, mod, repeat: int = 10) -> float:
    """Median ms of ``main`` on random inputs of the shapes in its signature."""
    from graphpress.ir.numeric import random_inputs

    params = mod["main"].params
    specs = [{"name": f"input{i}", "shape": [int(d) for d in p.ty.shape], "dtype": str(p.ty.dtype.dtype)} for i, p in enumerate(params)]
    return _run_ms(executable, list(random_inputs(specs).values()), repeat)


def _model_ms(executable, shapes, repeat: int = 10) -> float:
    from graphpress.ir.numeric import random_inputs

    return _run_ms(executable, list(random_inputs([{"name": n, **v} for n, v in shapes.items()]).values()), repeat)


def _run_ms(executable, arrays, repeat: int) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    vm["main"](*args)
    timer = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)
    return float(np.median(timer(*args).results)) * 1e3


def _model_guard(model, prepare, shapes, spec, int8_exe, report, build_args):
    """Time the int8 build against the all-fp32 build of the same model; keep the faster."""
    from graphpress.backends.tvm.quantized import (
        bypass_float_qdq,
        fold_weight_dequantize,
        plan_int8,
    )

    fp32_copy, _ = prepare_for_lowering(model, prepare)
    plan_int8(fp32_copy, spec, None, guard=False, force_fp32=True)
    fold_weight_dequantize(fp32_copy)
    bypass_float_qdq(fp32_copy)
    fp32_exe, fp32_stats = _build(to_relax(fp32_copy, shapes, spec.name), spec, *build_args)
    int8_ms, fp32_ms = _model_ms(int8_exe, shapes), _model_ms(fp32_exe, shapes)
    report["int8"]["model_guard"] = {"int8_ms": round(int8_ms, 4), "fp32_ms": round(fp32_ms, 4), "chosen": "int8" if int8_ms < fp32_ms else "fp32"}
    if int8_ms < fp32_ms:
        return int8_exe, report
    report["int8"]["model_guard"]["reason"] = "the int8 build of the whole model was not faster than its fp32 build: shipping fp32"
    report["int8"]["lowered"] = 0
    report.update(fp32_stats)
    return fp32_exe, report


def _wants_int8(model: ir.Model, spec: TargetSpec, mode: str) -> bool:
    """int8 kernels for ``auto`` on x86 hosts with VNNI (where the guard can time them); ``on`` also
    for aarch64 targets with the dot-product extension (cross-compiled: not timed)."""
    from graphpress.backends.tvm.targets import has_dotprod, has_vnni

    if mode == "off":
        return False
    quantized = any(n.op_type in ("MatMulInteger", "ConvInteger", "DequantizeLinear") for n in model.graph)
    if mode == "on" and not (has_vnni(spec) or has_dotprod(spec)):
        raise GraphpressError(
            f"target {spec.name}: int8=on needs an x86 target with AVX-512 VNNI on a host that has it, or an aarch64 target with +dotprod; use int8=off"
        )
    return quantized and (has_vnni(spec) or (mode == "on" and has_dotprod(spec)))


def _set_input_shapes(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]]) -> None:
    """Give the inputs their static shapes and infer the rest (the int8 plan needs M of every layer)."""
    import onnx_ir.passes.common as common_passes

    for value in model.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(shapes[value.name]["shape"])
    for node in model.graph:  # forget symbolic shapes: inference re-derives them from the inputs
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
    common_passes.ShapeInferencePass()(model)


def _outputs(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    outs = []
    for value in model.graph.outputs:
        shape = None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
        outs.append({"name": value.name, "dtype": value.dtype.numpy().name if value.dtype else None, "shape": shape})
    return outs
