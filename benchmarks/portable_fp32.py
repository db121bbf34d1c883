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

GFLOP/s = 2 x the model's MACs (``graphpress.summarize``) / latency. The peak printed is
``cores x MHz (from /proc/cpuinfo: the current clock, so boost can put a kernel above 100%)
x 2 FMA pipes x 2 FLOP x float32 lanes of the FMA unit``, where a Zen 4 core's (AMD family 25)
FMA unit is 256 bits wide for AVX-512 code too (it runs 512-bit instructions as two halves),
so its AVX-512 and AVX2 peaks are the same; Zen 5 (family 26) and Intel's AVX-512 parts have
512-bit FMA units.

    python benchmarks/portable_fp32.py [--models resnet18,minilm] [--sse] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import banner  # noqa: E402
from _models import SPEED_MODELS, speed_model  # noqa: E402
from _timing import blocked  # noqa: E402


def _cpu() -> tuple[str, float, set[str]]:
    vendor, mhz, flags = "", 0.0, set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and vendor == "AuthenticAMD" and "-" not in vendor:
            vendor = f"{vendor}-{value.strip()}"
        elif key == "cpu MHz" and not mhz:
            mhz = float(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, mhz, flags


def peak_gflops(path: str, cores: int) -> float | None:
    vendor, mhz, flags = _cpu()
    if not mhz:
        return None
    lanes = {"avx512": 16, "avx2": 8, "sse": 4}[path]
    if vendor == "AuthenticAMD-25" and "avx512f" in flags:  # Zen 4 (family 25): 256-bit FMA units; Zen 5 (26): 512
        lanes = min(lanes, 8)
    return cores * mhz / 1e3 * 2 * 2 * lanes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(SPEED_MODELS))
    ap.add_argument("--sse", action="store_true", help="also the SSE path (x86-64)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    import onnxruntime as ort

    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.targets import resolve_target, vector_facts
    from graphpress.ir.io import to_proto

    print(banner())
    cores = len(os.sched_getaffinity(0))
    _, _, flags = _cpu()
    targets = ["x86"] + (["x86:haswell"] if "avx2" in flags and resolve_target("x86").config.get("mcpu") != "haswell" else [])
    targets += ["x86:x86-64"] if args.sse else []
    print(f"paths: {', '.join(f'{t} ({vector_facts(resolve_target(t)).name})' for t in targets)}; ORT {ort.__version__} ORT_ENABLE_ALL, {cores} threads")
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
                compiled = compile_model(model, target, shipped_databases=False, database=empty, samples=[feeds])
                builds[target] = compiled
                engines[target] = lambda c=compiled: c(**feeds)
        ms = blocked(engines, args.repeat)
        for target, compiled in builds.items():
            path = vector_facts(resolve_target(target)).name
            peak = peak_gflops(path, cores)
            gflops = flops / ms[target] / 1e6
            build = compiled.meta["build"]
            rows.append((name, ms["ort"], target, path, ms[target], ms[target] / ms["ort"], gflops, 100 * gflops / peak if peak else float("nan"),
                         build.get("analytic_scheduled_kernels", 0), len(build.get("unscheduled_kernels", []))))  # fmt: skip
        print(f"{name}: done", flush=True)
    print()
    print("| model | ORT fp32 ms | graphpress path | graphpress ms | graphpress / ORT | GFLOP/s | % of the path's peak | analytic kernels | other kernels |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, ort_ms, target, path, tvm_ms, ratio, gflops, pct, analytic, other in rows:
        print(f"| {name} | {ort_ms:.2f} | {target} ({path}) | {tvm_ms:.2f} | {ratio:.2f}x | {gflops:.0f} | {pct:.0f}% | {analytic} | {other} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
