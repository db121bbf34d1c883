"""fp32 without per-machine tuning, on every x86 ISA path this machine can run, side by side with
ONNX Runtime's best fp32 configuration in the same run.

graphpress compiles ResNet-18, MobileNetV2 and MiniLM (batch 1) with no tuning database at all
(``shipped_databases=False`` and an empty database folder: nothing tuned on any machine
applies) and no tuning at compile time: what runs is the analytic register-blocked schedule
(:func:`graphpress.backends.tvm.schedules.schedule_gemm`) for the target's vector unit and the
generic schedules for the rest. One target per ISA path: ``x86`` (the host's ``mcpu``: AVX-512
here when it has it), ``x86:haswell`` (AVX2 + FMA), ``x86:x86-64`` (SSE, with ``--sse``).
ONNX Runtime: ``ORT_ENABLE_ALL``, one intra-op thread per usable core, on the same cleaned
model. Latency: median over blocks of runs (``_timing.blocked``), both engines on the same
threads.

GFLOP/s = 2 x the model's MACs (``graphpress.summarize``: a direct convolution's) / latency,
for ORT too. A convolution graphpress computes with Winograd's transforms
(:mod:`graphpress.backends.tvm.winograd`, column "Winograd convs") multiplies 2.25-4x less, so
its GFLOP/s are *effective* (the direct work over the time) and may exceed the peak. The peak is
measured, per path, on this machine (``_machine.measured_peak_gflops``: independent vector FMA
chains, one process per core at once): ``/proc/cpuinfo``'s MHz is not the clock vector code
runs at (an earlier version of this benchmark computed peaks from it, 2.6 GHz on a part that
runs FMAs at 4.1 GHz, and overstated every percentage by 1.6x), nor does it say how wide the
FMA units are (a Zen 4 runs 512-bit FMAs as two halves).

On a host with AVX-512, ONNX Runtime runs its AVX-512 kernels, so the AVX2 row compares 256-bit
code with 512-bit code. ``--ort-isa avx2`` times ORT's own AVX2 kernels instead (a cached copy of
ONNX Runtime that picks them as on a CPU without AVX-512, see ``_ort_isa``) beside graphpress's
AVX2 path (and SSE with ``--sse``): what a user of an AVX2 machine gets from each.

    python benchmarks/portable_fp32.py [--models resnet18,minilm] [--sse] [--repeat 80]
    python benchmarks/portable_fp32.py --ort-isa avx2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _ort_isa  # noqa: E402

# before onnxruntime is imported: --ort-isa runs ORT's kernels for a CPU without AVX-512
ORT_ISA = _ort_isa.install_from_argv()

from _machine import banner, measured_peak_gflops  # noqa: E402
from _models import SPEED_MODELS, speed_model  # noqa: E402
from _timing import blocked  # noqa: E402


def _flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(SPEED_MODELS))
    ap.add_argument("--sse", action="store_true", help="also the SSE path (x86-64)")
    ap.add_argument("--repeat", type=int, default=80)
    ap.add_argument("--ort-isa", choices=["host", *_ort_isa.EMULATIONS], default="host",
                    help="ONNX Runtime's kernels: the host's choice (default), or those of a CPU without AVX-512 (then only graphpress's AVX2 and SSE paths run)")  # fmt: skip
    args = ap.parse_args()

    import onnxruntime as ort

    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.targets import resolve_target, vector_facts
    from graphpress.ir.io import to_proto

    print(banner())
    print(_ort_isa.describe(ORT_ISA))
    cores = len(os.sched_getaffinity(0))
    flags = _flags()
    targets = ["x86"] + (["x86:haswell"] if "avx2" in flags and resolve_target("x86").config.get("mcpu") != "haswell" else [])
    if ORT_ISA:  # the paths of a CPU without AVX-512
        targets = [t for t in targets if vector_facts(resolve_target(t)).name == "avx2"] or ["x86:haswell"]
    targets += ["x86:x86-64"] if args.sse else []
    print(f"paths: {', '.join(f'{t} ({vector_facts(resolve_target(t)).name})' for t in targets)}; ORT {ort.__version__} ORT_ENABLE_ALL, {cores} threads")
    peaks = {path: measured_peak_gflops(path, cores) for path in {vector_facts(resolve_target(t)).name for t in targets}}
    print("measured fp32 peak, all cores: " + ", ".join(f"{p} {g:.0f} GFLOP/s" if g else f"{p} not measured (no C compiler)" for p, g in sorted(peaks.items())))
    rows = []
    for name in args.models.split(","):
        model, torch_args = speed_model(name)
        feeds = {v.name: a.numpy() for v, a in zip(model.graph.inputs, torch_args)}
        flops = 2 * gp.summarize(model).macs
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cores
        session = ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        engines = {"ort": lambda: session.run(None, feeds)}
        builds = {}
        with tempfile.TemporaryDirectory() as empty:
            for target in targets:
                compiled = compile_model(model, target, shipped_databases=False, database=empty, samples=[feeds], measure=False)
                builds[target] = compiled
                engines[target] = lambda c=compiled: c(**feeds)
        ms = blocked(engines, args.repeat, rounds=4)
        for target, compiled in builds.items():
            path = vector_facts(resolve_target(target)).name
            peak = peaks[path]
            gflops = flops / ms[target] / 1e6
            build = compiled.meta["build"]
            rows.append((name, ms["ort"], flops / ms["ort"] / 1e6, target, path, ms[target], ms[target] / ms["ort"], gflops, 100 * gflops / peak if peak else float("nan"),
                         build.get("analytic_scheduled_kernels", 0), len(build.get("unscheduled_kernels", [])), len(build.get("winograd_convolutions", []))))  # fmt: skip
        print(f"{name}: done", flush=True)
    print()
    print("| model | ORT fp32 ms | ORT GFLOP/s | graphpress path | graphpress ms | graphpress / ORT | GFLOP/s | % of the path's measured peak | analytic kernels | other kernels | Winograd convs |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, ort_ms, ort_gflops, target, path, tvm_ms, ratio, gflops, pct, analytic, other, winograd in rows:
        print(f"| {name} | {ort_ms:.2f} | {ort_gflops:.0f} | {target} ({path}) | {tvm_ms:.2f} | {ratio:.2f}x | {gflops:.0f} | {pct:.0f}% | {analytic} | {other} | {winograd} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
