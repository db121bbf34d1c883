"""Compile an IR model with TVM for a target: the orchestration, nothing else.

CPU (``llvm``) targets:

0. On a copy of the model, :data:`~graphpress.backends.tvm.lower.PREPARE_SPEC` (cleanup,
   BatchNorm folding) -- all targets (:mod:`.lower`).
1. Quantized models on a target with an int8 ISA: the int8 plan (:mod:`.int8`): integer form,
   the per-layer guard, the importer converters for the chosen ISA.
2. Import into Relax (:mod:`.lower`), then ``DecomposeOpsForInference`` + the zero pipeline,
   tuning when asked and the tuning databases (:mod:`.tuning`), the generic schedules for the
   rest (:mod:`.schedules`). Kernels left without a schedule are listed in the build report
   (``unscheduled_kernels``), never silently.
3. ``tvm.compile``; with two candidates (fast math or libm), the faster ships.
4. int8 builds: the ISA's instructions are counted in the assembly (tensorization failures are
   only warnings in TVM), and the whole model is timed against its all-fp32 build: the faster
   ships.

CUDA targets use TVM's default CUDA pipeline, which schedules every kernel with dlight's
GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback); ``nvcc`` compiles them
ahead of time into a fatbin for the target's architecture, on a machine with or without a GPU
(:mod:`.cuda`), so the artifact loads with TVM's runtime and the driver alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

import graphpress
from graphpress.backends.tvm import int8 as int8_path
from graphpress.backends.tvm.lower import (
    PREPARE_SPEC, bind_input_shapes, dynamic_dims, freeze_inputs, output_specs, prepare_for_lowering, shapes_of_samples, to_relax,
)  # fmt: skip
from graphpress.backends.tvm.runtime import CompiledModel, Remote, concrete_input_specs, current_remote, load_program, require_compiler, running_on, time_side_by_side
from graphpress.backends.tvm.targets import TargetSpec, _cuda_arch, resolve_target
from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline
from graphpress.backends.tvm.tuning import Tuning, quick_tvmscript, schedule_cpu
from graphpress.errors import GraphpressError, one_line
from graphpress.ir.numeric import NumericReport, as_samples, compare_outputs, lowest_float_precision, random_inputs, run_samples

__all__ = ["CHECK_SAMPLES", "check_against_onnxruntime", "compile_model", "locate_divergence", "measure_against_onnxruntime"]

log = logging.getLogger(__name__)


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
    winograd: bool = True,
    verify: bool = True,
    samples: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    dynamic: Sequence[str] | None = None,
    measure: bool = True,
    baseline: ir.Model | None = None,
    require_faster: bool = False,
    progress: Callable[[str], None] | None = None,
    rpc: str | Remote | None = None,
) -> CompiledModel:
    """Compile ``model`` with TVM.

    Args:
        model: the (optimized) model; not changed.
        target: ``x86``, ``aarch64``, ``cuda``, a TVM target dict or JSON string.
        input_shapes: static shapes for inputs with symbolic dims (default: the shapes of
            ``samples``, else 1 for each symbolic dim).
        tune_trials: MetaSchedule trials in total (CPU targets); 0 applies existing records only.
        max_trials_per_task: per-kernel cap (default ``tune_trials // kernels``).
        database: tuning database directory (default: the user cache for this target).
        shipped_databases: also apply the databases shipped with graphpress.
        prepare: the pass SPEC run on a copy before lowering ("" runs none; the benchmarks
            compile unfused graphs that way).
        int8: ``auto`` (an int8 ISA whose kernels can be timed here: x86 with AMX, AVX-512 VNNI,
            AVX-VNNI or AVX2 -- the first the target declares, e.g. ``x86:haswell`` for AVX2 --
            on a host that has it), ``on`` (also cross-compiled: aarch64 with ``+dotprod``) or
            ``off``: lower quantized layers (static QDQ MatMul/Gemm/Conv, MatMulInteger) onto
            integer kernels (:mod:`graphpress.backends.tvm.int8`).
        int8_guard: time each int8 kernel against the fp32 kernel of the same layer first and
            keep the layer in fp32 when int8 is not faster.
        fast_math: CPU targets: ``erf``/``exp``/``tanh`` (and GELU, softmax) as polynomial vector
            code instead of one libm call per element (:mod:`graphpress.backends.tvm.fastmath`;
            within a few float32 ulps), unless the tuning databases schedule more of the libm
            kernels than of the fast ones (the report's ``fast_math`` says which was used).
        winograd: CPU targets: 3x3 stride-1 float convolutions whose maps Winograd's tiles cover
            are computed with its transforms (:mod:`graphpress.backends.tvm.winograd`: 2.25-4x
            fewer multiplications, results within rounding of the direct ones, which the check
            against ONNX Runtime measures; the report's ``winograd_convolutions`` lists them);
            False keeps every convolution direct.
        verify: host targets: run the compiled code and ONNX Runtime on ``samples`` and raise a
            :class:`GraphpressError` naming the first diverging node when they differ beyond the
            backend's tolerance (:func:`check_against_onnxruntime`); the report's
            ``check_vs_onnxruntime`` has the figures. Cross-compiled targets are not run here.
        samples: inputs for that check (a dict of arrays, or a list of them; at most
            :data:`CHECK_SAMPLES` are used); default: random inputs of the artifact's shapes.
        dynamic: symbolic input dims that stay symbolic in the artifact (``["batch"]``: the
            first dim of every input whose first dim is symbolic; or dims by the names the model
            declares, e.g. ``seq``), so that one artifact serves every size of them. The code
            is then built for any size (untuned, no int8 kernels), and the check runs the
            samples at their size and at twice it.
        measure: host targets: time the artifact against ONNX Runtime in its fastest
            configuration running ``baseline`` -- and, when that model is quantized, its fp32
            counterpart too -- on the first sample, in the same run and on as many threads as
            the artifact (:func:`measure_against_onnxruntime`); the report's
            ``vs_onnxruntime`` has both latencies and the speed-ups.
        baseline: the model the user had before graphpress (default: ``model``): what the
            artifact must not be slower than.
        require_faster: raise a :class:`GraphpressError` when the artifact is slower than ONNX
            Runtime on ``baseline`` (implies ``measure``).
        progress: called with a line at each long step (the int8 guard's layers, with the time
            left at the pace so far, and its whole-model build); the CLI shows them.
        rpc: a device reached through TVM's RPC (``HOST:PORT:KEY`` through a tracker,
            ``HOST:PORT`` a server, or a :class:`~graphpress.backends.tvm.runtime.Remote`): the
            int8 guards time their kernels there and the check against ONNX Runtime runs the
            compiled code there (ONNX Runtime itself runs here), so a cross-compiled target gets
            both; the report's ``measured_on`` says where. ``measure`` does not apply (ONNX
            Runtime does not run on that device); the returned model runs there.

    Returns:
        A :class:`CompiledModel` (callable here for host targets; ``save`` it for others).

    Raises:
        GraphpressError: a bad option, a model TVM cannot lower (the op and node named), or
            compiled code that differs from ONNX Runtime.
    """
    import tvm

    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    if tune_trials < 0:
        raise GraphpressError(f"tune trials must be >= 0, got {tune_trials}")
    if tune_trials and not spec.is_cpu:
        raise GraphpressError(f"target {spec.name}: tuning trials apply to CPU targets; CUDA uses dlight schedules")
    if int8 not in ("auto", "on", "off"):
        raise GraphpressError(f"int8 must be auto, on or off, got '{int8}'")
    if dynamic and int8 == "on":
        raise GraphpressError("int8=on needs static shapes (the integer kernels are built per shape); compile without dynamic dims, or with int8=auto")
    if spec.cross_compiler:
        require_compiler(spec.cross_compiler)  # before minutes of compiling, not at save
    if require_faster and rpc is not None:
        raise GraphpressError("--require-faster compares with ONNX Runtime on this machine; with --rpc the artifact runs on another device: drop one of them")
    remote = None
    if rpc is not None:
        remote = rpc if isinstance(rpc, Remote) else Remote(rpc)
        remote.cross_compiler = remote.cross_compiler or spec.cross_compiler
        if tune_trials and spec.is_cpu and "num-cores" not in spec.config:  # MetaSchedule needs the device's
            spec = dataclasses.replace(spec, config={**spec.config, "num-cores": remote.num_threads()})
    runs = spec.is_host or remote is not None  # the compiled code can be timed and checked
    with running_on(remote):
        tuning = Tuning(tune_trials, max_trials_per_task, database, shipped_databases, fast_math, winograd=winograd)
        given = as_samples(samples) if samples else None
        if given:  # symbolic dims take the samples' sizes, never a silent 1
            input_shapes = shapes_of_samples(model, given, input_shapes, "samples", dynamic_dims(model, dynamic) if dynamic else None)
        frozen = freeze_inputs(model, given)
        shapes = bind_input_shapes(model, input_shapes, frozen, dynamic)
        isa = int8_path.select_isa(spec, int8, timed_remotely=remote is not None) if not dynamic else None  # the integer kernels are built for static shapes
        t0 = time.perf_counter()
        prepared, prep_stats = prepare_for_lowering(model, prepare, shapes, frozen)
        report: dict[str, Any] = {"prepare": prep_stats}
        if dynamic:
            report["dynamic_dims"] = {dim: [list(p) for p in places] for dim, places in dynamic_dims(model, dynamic).items()}
        isa = isa if isa is not None and int8_path.is_quantized(prepared) else None
        if isa is not None:
            report["int8"] = int8_path.plan(prepared, spec, isa, tuning, guard=int8_guard, progress=progress)
            tuning = dataclasses.replace(tuning, int8_lowering=int8_path.lower_int8_convs(isa, report["int8"]["fallback_convs"]), int8_schedule=int8_path.schedule_dot_kernels)
            with int8_path.int8_converters(isa):
                mod = to_relax(prepared, shapes, spec.name)
        else:
            mod = to_relax(prepared, shapes, spec.name)
        report["import_seconds"] = round(time.perf_counter() - t0, 3)
        try:
            executable, stats = _build(mod, spec, tuning, records_guard=runs)
        except GraphpressError:
            raise
        except Exception as e:  # TVM's lowering refused the module: say what it was built for
            bound = ", ".join(f"{n}={'x'.join(map(str, s['shape'])) or 'scalar'}" for n, s in shapes.items())
            raise GraphpressError(
                f"target {spec.name}: TVM could not lower the model ({one_line(e, 200, last=True)}); it was built for inputs {bound} "
                + ("(named dims are dynamic): compile without --dynamic, for static shapes" if dynamic else
                   "(symbolic dims are 1 unless given): give the real shapes with --input-shape or --inputs")
            ) from e
        report.update(stats)
        if stats.get("database_guard", {}).get("chosen") == "analytic":  # the other builds of this compile take none either
            tuning = dataclasses.replace(tuning, records=False, trials=0)
        if isa is not None and report["int8"]["lowered"]:
            if int8_guard and runs:
                # the whole model, too: layers that stay fp32 compile differently around integer ones
                # (MobileNetV2's depthwise convs lose their tuned fused kernels), so the all-fp32 build
                # of the same model is timed against it and the faster one ships
                if progress is not None:
                    progress("int8 guard: the whole int8 build timed against the model's all-fp32 build (one more build; two where the layer guard kept layers in fp32 by a close call)")
                executable, report = _model_guard(model, prepare, shapes, spec, isa, executable, report, tuning, frozen)
            # in the library that ships, once: each listing is a code generation of its own (3 s for
            # ResNet-18); the whole-model guard made it already when the int8 build ships
            if "instructions" not in report["int8"]:
                _record_instructions(report["int8"], isa, _asm_counts(isa, executable))
        meta = {
            "graphpress_version": graphpress.__version__,
            "tvm_version": tvm.__version__,
            "target_name": spec.name,
            "target": spec.config,
            "cross_compiler": spec.cross_compiler,
            "inputs": [{"name": n, **s} for n, s in shapes.items()],
            # inputs that decide shapes, fixed to the samples' values (the artifact refuses others)
            "frozen_inputs": [{"name": n, "dtype": v.dtype.name, "value": v.tolist()} for n, v in frozen.items()],
            "input_order": [v.name for v in model.graph.inputs if v.name not in model.graph.initializers],
            "outputs": output_specs(model, shapes),
            "build": report,
        }
        compiled = CompiledModel(executable, meta)  # on the remote device, with one
        if verify and runs:
            check = check_against_onnxruntime(compiled, model, given, dynamic_sizes=bool(dynamic))
            report["check_vs_onnxruntime"] = {
                "ran_on": remote.describe() if remote else "this host",
                "passed": check.passed, "max_abs_diff": check.max_abs_diff, "cosine": check.min_cosine, "inputs": check.inputs_source,
                "against": "the model's fp32 counterpart (the int8 guard shipped the fp32 build)"
                if (report.get("int8") or {}).get("model_guard", {}).get("chosen") == "fp32" else "the model",
            }  # fmt: skip
            if not check.passed:
                where = ""
                if not (isa is not None and report["int8"]["lowered"]):
                    first = None if dynamic else locate_divergence(prepared, shapes, spec, {n: v for n, v in given[0].items() if n not in frozen} if given else None, tuning)
                    report["check_vs_onnxruntime"]["first_divergence"] = first
                    if first:
                        where = f" from node '{first['node']}' ({first['op_type']}, value '{first['value']}': max_abs_diff={first['max_abs_diff']:.3g})"
                    else:  # every intermediate agrees: the node writing the first differing output
                        where = _output_producer(prepared, next(o.name for o in check.outputs if not o.passed))
                raise GraphpressError(f"target {spec.name}: compiled code differs from ONNX Runtime{where}: {check.describe_failure()}")
        if remote is not None:
            report["measured_on"] = remote.describe()
            if measure:
                report["vs_onnxruntime_note"] = f"not measured: the artifact runs on {remote.describe()}, ONNX Runtime here"
        elif (measure or require_faster) and spec.is_host:
            feeds = given[0] if given else random_inputs(concrete_input_specs(compiled.meta["inputs"]))
            speed = report["vs_onnxruntime"] = measure_against_onnxruntime(compiled, baseline or model, feeds)
            if require_faster and speed["slower"]:
                raise GraphpressError(f"target {spec.name}: {speed['verdict']}; nothing written (--require-faster)")
        compiled.release()  # the device is free again; a call on the model opens a session anew
        return compiled


#: seconds the measurement against ONNX Runtime spends timing, all engines together
MEASURE_SECONDS = 3.0


def measure_against_onnxruntime(compiled: CompiledModel, baseline: ir.Model, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """Latency of ``compiled`` against ONNX Runtime running ``baseline`` (the model the user gave)
    at its best (:func:`graphpress.ir.timing.onnxruntime_best`), and -- when ``baseline`` is
    quantized -- against ORT running its fp32 counterpart (the quantized layers in float), all on
    ``feeds``, in one run, in blocks (:func:`graphpress.ir.timing.blocked`), with as many threads
    as TVM's pool. Speed-ups are ORT ms / artifact ms (above 1: the artifact is faster)."""
    import tvm

    from graphpress.ir.io import clone
    from graphpress.ir.timing import blocked, onnxruntime_best, repeats_for

    threads = int(tvm.get_global_func("runtime.NumThreads")())
    engines = {"artifact": lambda: compiled(**feeds)}
    quantized = int8_path.is_quantized(baseline)
    ort = onnxruntime_best(baseline, threads, "the model as given")
    ort_feeds = {n: v for n, v in feeds.items() if n in {i.name for i in ort.session.get_inputs()}}
    ort.check_feeds(ort_feeds)
    engines["onnxruntime"] = lambda: ort.session.run(None, ort_feeds)
    out: dict[str, Any] = {"threads": threads, "onnxruntime": "ORT_ENABLE_ALL, CPU", "model_as_given": "int8 (quantized)" if quantized else "fp32"}
    if quantized:  # the same model in float: what the user had before quantizing it
        try:
            fp32 = clone(baseline)
            int8_path.to_fp32(fp32)
            engines["onnxruntime_fp32"] = (lambda s: lambda: s.session.run(None, ort_feeds))(onnxruntime_best(fp32, threads, "its fp32 counterpart"))
        except Exception as e:  # a quantized form the float rewrite does not cover: the one ratio
            out["onnxruntime_fp32"] = f"not measured: {one_line(e, 160)}"
    # as many calls as fit the time, up to 1,000 each, in 4 rounds of blocks: a small model's 40
    # calls in one round (the defaults) were 16 ms of timing, and the mel spectrogram's ratio
    # read 1.05x, 1.52x and 2.02x in three compiles of one artifact on a shared 2-core host
    ms = blocked(engines, repeats_for(engines, MEASURE_SECONDS, most=1000), rounds=4)
    out.update({f"{k}_ms": round(v, 4) for k, v in ms.items()})
    out["speedup"] = round(ms["onnxruntime"] / ms["artifact"], 3)
    if "onnxruntime_fp32" in ms:
        out["speedup_vs_fp32"] = round(ms["onnxruntime_fp32"] / ms["artifact"], 3)
    out["slower"] = out["speedup"] < 1.0
    against = f"ONNX Runtime on the model as given ({out['model_as_given']}, {threads} thread(s))"
    out["verdict"] = (f"the artifact is {'slower' if out['slower'] else 'faster'} than {against}: "
                      f"{ms['artifact']:.3f} ms vs {ms['onnxruntime']:.3f} ms ({out['speedup']:.2f}x)")  # fmt: skip
    return out


#: how many samples the check against ONNX Runtime runs at most
CHECK_SAMPLES = 8


def _output_producer(prepared: ir.Model, name: str) -> str:
    """``" at node 'N' (Op), which writes output 'name'"``, or ``""`` when it is not found."""
    for value in prepared.graph.outputs:
        node = value.producer() if value.name == name else None
        if node is not None:
            return f" at node '{node.name or '?'}' ({node.op_type}), which writes output '{name}' (every intermediate value agrees)"
    return ""


def check_against_onnxruntime(
    compiled: CompiledModel,
    model: ir.Model,
    samples: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    dynamic_sizes: bool = False,
) -> NumericReport:
    """Run ``compiled`` and ONNX Runtime on ``model`` with the same inputs and compare the outputs.

    What ships is compared with what ONNX Runtime computes for the same function: when the
    int8 path's whole-model guard shipped the fp32 build, that build computes ``model``'s fp32
    counterpart (every quantized layer in float, without the activations' Quantize/Dequantize
    pairs: :func:`graphpress.backends.tvm.int8.to_fp32`), so ONNX Runtime runs that counterpart
    and the backend's tolerance judges (on a deep network the dropped pairs move the outputs by
    far more than one quantization step, so comparing with the QDQ model would refuse correct
    code). Integer kernels round where ONNX Runtime's do not, and Quantize nodes computed in
    float can land on the other side of a rounding tie, so any other build of a quantized model
    is judged by the quantization family (one step of a quantized output); every other build
    by the backend's tolerance, in the precision the model computes in. With
    ``dynamic_sizes``, the first sample is also run with its dynamic dims doubled (the sample
    repeated along them).
    """
    import numpy as np

    int8_report = compiled.meta["build"].get("int8") or {}
    shipped_fp32 = (int8_report.get("model_guard") or {}).get("chosen") == "fp32"
    if shipped_fp32:
        from graphpress.ir.io import clone

        model = clone(model)
        int8_path.to_fp32(model)
    given = as_samples(samples)[:CHECK_SAMPLES] if samples else None
    feeds = given or [random_inputs(concrete_input_specs(compiled.meta["inputs"]))]
    if dynamic_sizes:
        feeds = [*feeds, _doubled(feeds[0], compiled.meta["inputs"])]
    ref_runs = [run_samples(model, [f]) for f in feeds] if dynamic_sizes else [run_samples(model, feeds)]
    ref = {name: np.concatenate([r[name].reshape(-1) for r in ref_runs]) for name in ref_runs[0]} if dynamic_sizes else ref_runs[0]
    runs = [compiled(**f) for f in feeds]
    if dynamic_sizes:  # outputs of different sizes: compared flat
        got = {name: np.concatenate([r[i].reshape(-1) for r in runs]) for i, name in enumerate(ref)}
    else:
        got = {name: (np.stack([r[i] for r in runs]) if len(runs) > 1 else runs[0][i]) for i, name in enumerate(ref)}
    # integer kernels, or float Quantize nodes at rounding ties: within one quantization step
    family = "backend" if shipped_fp32 or not ("int8" in compiled.meta["build"] or int8_path.is_quantized(model)) else "quantization"
    source = f"{len(given)} sample(s) given" if given else "generated from the artifact's shapes (seed 0)"
    if dynamic_sizes:
        source += ", and the first at twice its dynamic dims"
    return compare_outputs(ref, got, family, source, precision=lowest_float_precision(model))


def _doubled(feeds: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``feeds`` repeated twice along every dynamic axis of the artifact's inputs."""
    import numpy as np

    out = dict(feeds)
    for spec in inputs:
        if spec["name"] in out:
            array = np.asarray(out[spec["name"]])
            for axis, d in enumerate(spec["shape"]):
                if isinstance(d, str):
                    array = np.concatenate([array, array], axis=axis)
            out[spec["name"]] = array
    return out


def locate_divergence(
    prepared: ir.Model, shapes: Mapping[str, Mapping[str, Any]], spec: TargetSpec, feeds: Mapping[str, Any] | None, tuning: Tuning
) -> dict[str, Any] | None:
    """The first node of the prepared graph whose compiled output differs from ONNX Runtime's.

    Builds the prepared graph once more with every intermediate tensor as an extra output (so
    each is computed and kept) and compares them in graph order. Returns ``None`` when none
    differs, or when that build fails.
    """
    from graphpress.ir.external_data import rebase
    from graphpress.ir.io import to_proto
    from graphpress.ir.numeric import _diff, _ordered_value_names, _proto_with_outputs, run

    names, producers = _ordered_value_names(prepared)
    outputs = {o.name for o in prepared.graph.outputs}
    extra = [n for n in names if n not in outputs][:LOCATE_VALUES]
    feeds = dict(feeds) if feeds is not None else random_inputs([{"name": n, **s} for n, s in shapes.items()])
    try:
        exposed = rebase(ir.serde.deserialize_model(_proto_with_outputs(to_proto(prepared), extra)), prepared)
        ref = run(exposed, feeds)
        executable, _ = _build(to_relax(exposed, shapes, spec.name), spec, dataclasses.replace(tuning, trials=0))
        got = CompiledModel(executable, {"target": spec.config, "inputs": [{"name": n, **s} for n, s in shapes.items()]})(**feeds)
    except Exception:  # diagnosis only: the failing check is reported either way
        return None
    precision = lowest_float_precision(prepared)
    for name, value in zip(ref, got):
        if name in outputs or name not in producers:
            continue
        d = _diff(name, ref[name], value, "backend", precision=precision)
        if not d.passed:
            node, op = producers[name]
            return {"node": node, "op_type": op, "value": name, "max_abs_diff": d.max_abs_diff}
    return None


#: the intermediate values a divergence search exposes at most (each is one more output)
LOCATE_VALUES = 512


def compile_executable(mod, spec: TargetSpec):
    """``mod`` compiled for ``spec``. On CPUs the Relax VM's own instructions (allocations, shape
    checks, the calls between kernels) are compiled to native code too (``exec_mode="compiled"``)
    instead of interpreted bytecode: a small model's time is mostly those (openWakeWord's
    wake-word classifier 39 -> 27 us, silero 45 -> 38 us; the kernels are the same), and small
    buffers are stack allocations (:mod:`.tir_pipeline`)."""
    import tvm
    from tvm import relax

    if spec.is_cpu:
        return relax.build(mod, spec.tvm_target(), exec_mode="compiled", tir_pipeline=cpu_tir_pipeline())
    if spec.kind == "cuda":  # kernels compiled here by nvcc, not CUDA source compiled where it loads
        from graphpress.backends.tvm.cuda import ahead_of_time, relax_pipeline

        target = tvm.target.Target(spec.tvm_target())
        # dlight's fp16 tensor-core rule imports TVM's tensor intrinsics, parsed as TVMScript: 60 s
        # of inspect.stack on 2 cores without quick_tvmscript (ResNet-18 fp16: 69 -> 8 s to build)
        with ahead_of_time(str(spec.config.get("arch") or _cuda_arch())), quick_tvmscript():
            return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))
    return tvm.compile(mod, target=spec.tvm_target())


#: what a build's report keeps of the tuning run whichever build ships
_TUNING_STATS = ("databases", "tune_trials", "max_trials_per_task", "tuning_seconds", "tuning_records_added", "tuned_on")


def _build(mod, spec: TargetSpec, tuning: Tuning, records_guard: bool = False):
    """Schedule and build ``mod``; ``(executable, stats)``. With ``records_guard`` (the code can
    be timed), a build whose kernels took tuning records is timed against the build without any
    record (the analytic and generic schedules) and the faster ships: records measured on
    another machine, under other load or by too few trials can be slower than the analytic
    schedules (the Sapphire Rapids records graphpress once shipped made ResNet-18 46.6 ms
    against 11.9 there) -- the report's ``database_guard`` says what was timed."""
    executable, stats = _build_once(mod, spec, tuning)
    if not (records_guard and stats.get("database_kernels")):
        return executable, stats
    plain, plain_stats = _build_once(mod, spec, dataclasses.replace(tuning, records=False, trials=0))
    ms = _side_by_side({"records": executable, "analytic": plain}, _signature_inputs(mod))
    chosen = min(ms, key=ms.get)
    guard = {"records_ms": round(ms["records"], 4), "analytic_ms": round(ms["analytic"], 4), "chosen": chosen,
             "reason": f"{stats['database_kernels']} kernel(s) from tuning records: {ms['records']:.3f} ms; the analytic schedules: {ms['analytic']:.3f} ms"}  # fmt: skip
    if chosen == "records":
        return executable, {**stats, "database_guard": guard}
    log.warning("the tuning records for %s were slower than the analytic schedules (%.3f against %.3f ms): shipping the build without them", spec.name, ms["records"], ms["analytic"])
    return plain, {**plain_stats, **{k: stats[k] for k in _TUNING_STATS if k in stats}, "database_guard": guard}


def _build_once(mod, spec: TargetSpec, tuning: Tuning):
    stats: dict[str, Any] = {}
    candidates = {"": (mod, {})}
    if spec.is_cpu:
        candidates, stats = schedule_cpu(mod, spec, tuning)
    t1 = time.perf_counter()
    built = {}
    for name, (scheduled, kernel_stats) in candidates.items():
        try:
            built[name] = (compile_executable(scheduled, spec), kernel_stats)
        except Exception as e:
            if stats.get("conv_layout") == "NHWC":  # an op TVM cannot lower in NHWC: the model's own layout
                executable, retried = _build_once(mod, spec, dataclasses.replace(tuning, nhwc=False))
                retried["conv_layout"] = f"NCHW (the NHWC build failed: {one_line(e, 120, last=True)})"
                return executable, retried
            raise GraphpressError(f"target {spec.name}: TVM build failed ({one_line(e, 300, last=True)})") from e
    if len(built) > 1:  # fast math against libm, both built here: the faster ships
        (first, (exe_a, _)), (second, (exe_b, _)) = built.items()
        timings = _side_by_side({first: exe_a, second: exe_b}, _signature_inputs(candidates[first][0]))
        choice = min(timings, key=timings.get)
        stats["fast_math"] = choice == "fast"
        stats["fast_math_ms"] = {name: round(ms_, 4) for name, ms_ in timings.items()}
        built = {choice: built[choice]}
    executable, kernel_stats = next(iter(built.values()))
    stats.update(kernel_stats)
    stats["build_seconds"] = round(time.perf_counter() - t1, 3)
    return executable, stats


def _asm_counts(isa, executable) -> dict[str, int]:
    """The ISA's instructions in the library's assembly, by report key (a code generation of its
    own: 2-6 s for a model)."""
    return isa.count(executable.mod.imports[0].inspect_source("asm"))


def _record_instructions(report: dict[str, Any], isa, counts: dict[str, int]) -> None:
    """The ISA's instructions in the library's assembly (:func:`_asm_counts`; tensorization
    failures are only warnings in TVM) into the report: by report key, and by name under
    ``instructions``."""
    report.update(counts)
    report["instructions"] = {c.label: counts[c.key] for c in isa.counters}


def _signature_inputs(mod) -> list:
    """Random inputs of the shapes and dtypes in the signature of ``main``."""
    import tvm

    params = mod["main"].params
    # a dynamic dim is timed at 1
    specs = [{"name": f"input{i}", "shape": [int(d) if isinstance(d, tvm.tirx.IntImm) else 1 for d in p.ty.shape], "dtype": str(p.ty.dtype.dtype)}
             for i, p in enumerate(params)]  # fmt: skip
    return list(random_inputs(specs).values())


def _side_by_side(executables: dict[str, Any], inputs) -> dict[str, float]:
    """ms of ``main`` of each executable (or its VM, from :class:`_Loader`), by key, timed in
    blocks in one run (A B C, then C B A, twice): one after the other, the first was often timed
    cold -- the digits CNN's int8 build measured 1.2 ms first and 0.6 ms second, and the guard's
    verdict followed the order. Each executable's best block median
    (:func:`~graphpress.ir.timing.best_block`): a slow spell of a shared host lands on one block,
    not on the build."""
    import tvm
    from tvm import relax

    from graphpress.ir.timing import best_block, repeats_for

    if current_remote() is not None:  # on the device: TVM's time evaluator there, alternating
        ms = time_side_by_side([(exe, inputs) for exe in executables.values()], number=5, rounds=3)
        return dict(zip(executables, ms))
    device = tvm.cpu()
    args = [tvm.runtime.tensor(x, device) for x in inputs]
    fns = {}
    for key, exe in executables.items():
        vm = exe if isinstance(exe, relax.VirtualMachine) else relax.VirtualMachine(exe, device)
        fns[key] = lambda vm=vm: vm["main"](*args)
    return best_block(fns, repeats_for(fns, 1.0, least=12, most=60), rounds=2)


class _Loader:
    """Executables loaded (their VMs made) in one worker thread while this one builds the next:
    on a CPU, making the VM is LLVM's machine-code generation of the whole library (3-5 s for a
    model, TVM releases the GIL), which overlapped the whole-model guard's other builds instead
    of following them (three loads, 14 s of PP-OCR's classifier's compile). Where the code runs
    on an RPC device the executables stay as they are (uploaded when timed)."""

    def __init__(self, stack: contextlib.ExitStack):
        self.pool = None if current_remote() is not None else stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphpress-load"))
        self.loading: dict[str, Any] = {}
        self.counting: dict[str, concurrent.futures.Future] = {}

    def count(self, key: str, isa, executable) -> None:
        """The ISA's instructions in ``executable``'s assembly, in the worker too (the int8 build's,
        which usually ships, while the fp32 build is made)."""
        if self.pool is not None:
            self.counting[key] = self.pool.submit(_asm_counts, isa, executable)

    def counts(self, key: str) -> dict[str, int] | None:
        return self.counting[key].result() if key in self.counting else None

    def add(self, key: str, executable) -> None:
        self.loading[key] = executable if self.pool is None else self.pool.submit(load_program, executable)

    def loaded(self) -> dict[str, Any]:
        return {key: f.result() if isinstance(f, concurrent.futures.Future) else f for key, f in self.loading.items()}


#: a layer the layer guard kept in fp32 whose integer kernel timed less than this many times its
#: fp32 kernel's (alone) is a close call, which the whole-model guard decides (:func:`_model_guard`)
CLOSE_CALL = 1.5


def _model_guard(model, prepare, shapes, spec, isa, int8_exe, report, tuning: Tuning, frozen):
    """Time the int8 build against the all-fp32 build of the same model and ship the faster. Where
    the layer guard kept layers in fp32 by a close call (:data:`CLOSE_CALL`; each layer timed
    alone, warm), a build with those layers on their integer kernels too is timed beside them,
    and ships if it is the fastest: inside the model a layer kept in fp32 costs more than alone
    (the data around it changes type, its weights come from memory), and on a shared host two
    kernels' timings can be noise apart -- ResNet-18 on the AVX2 path kept 7 of 21 layers in fp32
    (int8 1.12-1.30x slower alone) and measured 15.3 ms, its fp32 build 13.8, every layer in int8
    10.7. Where layers a tile ISA (AMX) takes run on its fallback (timed faster alone), the build
    with every one of them on the tiles is timed too: alone, each layer reads warm data
    (ResNet-18's three 1x1 downsampling convolutions timed faster on VNNI, the model 2-5 %
    slower with them there)."""
    with contextlib.ExitStack() as stack:
        loader = _Loader(stack)
        loader.add("int8", int8_exe)
        loader.count("int8", isa, int8_exe)
        fp32_copy, _ = prepare_for_lowering(model, prepare, shapes, frozen)
        int8_path.to_fp32(fp32_copy)
        fp32_exe, fp32_stats = _build(to_relax(fp32_copy, shapes, spec.name), spec, tuning)
        loader.add("fp32", fp32_exe)
        every = None
        # the layers the layer guard kept in fp32 by less than CLOSE_CALL, lowered too
        close = frozenset(n["node"] for n in report["int8"]["nodes"]
                          if n["lowered"] or (n["int8_ms"] is not None and n["fp32_ms"] is not None and n["int8_ms"] < CLOSE_CALL * n["fp32_ms"]))  # fmt: skip

        def candidate(name, only, fallback, candidate_tuning, count=False):
            """Build the int8 model with the layers in ``only`` lowered (those in ``fallback`` on
            the ISA's fallback) for the side-by-side timing below; ``count``: list its
            instructions in the worker too, as it may ship."""
            copy, _ = prepare_for_lowering(model, prepare, shapes, frozen)
            plan = int8_path.plan(copy, spec, isa, candidate_tuning, guard=False, only=only, fallback=fallback)
            with int8_path.int8_converters(isa):
                exe, stats = _build(to_relax(copy, shapes, spec.name), spec, candidate_tuning)
            loader.add(name, exe)
            if count:
                loader.count(name, isa, exe)
            return plan, exe, stats

        on_fallback = frozenset(n["node"] for n in report["int8"]["nodes"] if n["lowered"] and isa.fallback is not None and n.get("isa") == isa.fallback.name)
        if len(close) > report["int8"]["lowered"]:
            every = candidate("close_calls_int8", close, on_fallback, tuning)
        tiles = None
        if on_fallback and isa.tiles is not None:
            lowered = frozenset(n["node"] for n in report["int8"]["nodes"] if n["lowered"])
            tiles = candidate("tiles_int8", lowered, frozenset(), dataclasses.replace(tuning, int8_lowering=int8_path.lower_int8_convs(isa)), count=True)
        builds = loader.loaded()
        inputs = list(random_inputs([{"name": n, **v} for n, v in shapes.items()]).values())
        ms = _side_by_side(builds, inputs)
        chosen = min(ms, key=ms.get)
        if (counts := loader.counts(chosen)) is not None:
            _record_instructions(report["int8"], isa, counts)
    guard = report["int8"]["model_guard"] = {f"{key}_ms": round(value, 4) for key, value in ms.items()} | {"chosen": chosen}
    if chosen == "int8":
        return int8_exe, report
    if chosen == "tiles_int8":
        tiles_report, tiles_exe, tiles_stats = tiles
        guard["reason"] = (f"every integer layer on {isa.label}'s tiles ({ms[chosen]:.3f} ms) was faster than the layer guard's mix with {isa.fallback.label} "
                           f"({ms['int8']:.3f} ms) and than fp32 ({ms['fp32']:.3f} ms): shipping it")  # fmt: skip
        kernels = {n["node"]: n for n in tiles_report["nodes"]}
        for node in report["int8"]["nodes"]:
            if node["lowered"] and node.get("isa") == isa.fallback.name:
                node.update(kernel=kernels[node["node"]]["kernel"], isa=isa.name, reason=node["reason"] + f"; on {isa.label} all the same: the whole model was faster so")
        report["int8"]["fallback_convs"] = []
        report.update(tiles_stats)
        return tiles_exe, report
    if chosen == "close_calls_int8":
        every_report, every_exe, every_stats = every
        guard["reason"] = (f"the layer guard's close calls in int8 too ({ms[chosen]:.3f} ms) were faster than its choice ({ms['int8']:.3f} ms) "
                           f"and than fp32 ({ms['fp32']:.3f} ms): shipping them in int8")  # fmt: skip
        kernels = {n["node"]: n for n in every_report["nodes"]}
        for node in report["int8"]["nodes"]:
            if not node["lowered"] and kernels.get(node["node"], {}).get("lowered"):
                node.update(lowered=True, kernel=kernels[node["node"]]["kernel"], reason=node["reason"] + f" (a close call: under {CLOSE_CALL}x); lowered all the same: the whole model was faster so")
        report["int8"].update(lowered=every_report["lowered"], kept_fp32=every_report["kept_fp32"])
        report.update(every_stats)
        return every_exe, report
    guard["reason"] = "the int8 build of the whole model was not faster than its fp32 build: shipping fp32"
    report["int8"].update(lowered=0, kept_fp32=len(report["int8"]["nodes"]))
    report.update(fp32_stats)
    return fp32_exe, report
