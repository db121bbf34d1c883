"""Latency of the TVM backend side by side with torch eager and ONNX Runtime (fp32, batch 1).

One process, one run: for each model (ResNet-18 224², MobileNetV2 224², all-MiniLM-L6-v2 with
its real weights at seq 128) the engines run in blocks (``_timing.blocked``: A B C D, then
D C B A, after a warm-up and a pause each), and the table gives medians, ratios to ORT, achieved GFLOP/s (2 FLOP per
multiply-accumulate, MACs from ``graphpress inspect``) against the machine's nominal fp32
peak (measured on this machine for the target's vector path: ``_machine.measured_peak_gflops``),
and compile/tuning time. The MACs are a direct convolution's: a 3x3 convolution graphpress
computes with Winograd's transforms (:mod:`graphpress.backends.tvm.winograd`) multiplies
2.25-4x less, so a build with them shows *effective* GFLOP/s, which may exceed the peak.

Engines:

* ``torch``: eager, ``torch.no_grad()``, ``torch.set_num_threads(threads)``;
* ``ort``: ONNX Runtime CPU, ``ORT_ENABLE_ALL``, ``intra_op_num_threads=threads``, on the
  same cleaned ONNX graph graphpress compiles;
* ``tvm-untuned``: graphpress compile with an empty tuning database (the analytic schedules of
  ``schedules.py``; TVM's default loop nests before them);
* ``tvm``: graphpress compile with the tuning databases graphpress ships / the user cache
  (the trial budget behind them is printed from the database; 0 records = untuned).

Goals (issue #3): untuned <= 3x ORT, tuned <= 1.0x ORT.

Usage::

    python benchmarks/backends.py [--models resnet18,mobilenetv2,minilm] [--repeat 50] [--threads 2]
"""

from __future__ import annotations

from _machine import banner, measured_peak_gflops
from _timing import blocked_samples
import argparse
import json
import os

# TVM's pool size comes from the environment: runtime.config_threadpool breaks later
# MetaSchedule database lookups in the same process (TVM 0.27), so it is not called here. Every
# engine keeps its default (best) thread-pool spinning; they are timed in blocks with a pause
# between them (_timing.blocked). One call each in turn with spinning switched off (what this
# benchmark did before) charged TVM a thread wake-up per kernel: ResNet-18 22.1 ms, 11.4 in blocks.
os.environ.setdefault("TVM_NUM_THREADS", "2")
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

import graphpress as gp
from graphpress.backends import tvm as gtvm
from graphpress.backends.tvm.tuning import database_dirs
from graphpress.backends.tvm.targets import resolve_target, vector_facts
from graphpress.passes import PassManager, build_passes



def _models():
    from graphpress.models import load_minilm, mobilenet_v2, resnet18
    from graphpress.models.minilm import tokenize

    def cnn(factory):
        torch.manual_seed(0)
        module = factory().eval()
        x = torch.randn(1, 3, 224, 224)
        return module, (x,), {"x": x.numpy()}

    def minilm():
        toks = tokenize(["graphpress compiles the whole pipeline for the target"] * 1, seq_len=128)
        args = (toks["input_ids"], toks["attention_mask"])
        return load_minilm(), args, {"input_ids": args[0].numpy(), "attention_mask": args[1].numpy()}

    return {"resnet18": lambda: cnn(resnet18), "mobilenetv2": lambda: cnn(mobilenet_v2), "minilm": minilm}


def _records(directory: Path) -> int:
    path = directory / "database_tuning_record.json"
    return sum(1 for _ in path.open()) if path.exists() else 0


def bench_model(name: str, factory, repeat: int, threads: int, workdir: Path, console: Console) -> dict:
    module, args, feeds = factory()
    model = gp.load(module, args)
    PassManager(build_passes("cleanup")).run(model)
    macs = gp.summarize(model).macs
    onnx_path = gp.save(model, workdir / f"{name}.onnx")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)[0]

    spec = resolve_target("x86")
    t0 = time.perf_counter()
    tuned = gtvm.compile_model(model, spec)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    untuned = gtvm.compile_model(model, spec, database=workdir / f"empty-{name}", shipped_databases=False)
    untuned_compile_s = time.perf_counter() - t0

    ordered = [feeds[i["name"]] for i in tuned.meta["inputs"]]
    engines = {
        "torch": lambda: module(*args),
        "ort": lambda: sess.run(None, feeds),
        "tvm-untuned": lambda: untuned(*ordered),
        "tvm": lambda: tuned(*ordered),
    }
    diffs = {k: float(np.abs(c(*ordered)[0] - ref).max()) for k, c in (("tvm", tuned), ("tvm-untuned", untuned))}
    torch.set_num_threads(threads)
    with torch.no_grad():
        samples = blocked_samples(engines, repeat)
    med = {k: statistics.median(v) for k, v in samples.items()}
    build = tuned.meta["build"]
    row = {
        "model": name,
        "gmacs": macs / 1e9,
        "median_ms": med,
        "runs": {k: len(v) for k, v in samples.items()},
        "ratio_vs_ort": {k: med[k] / med["ort"] for k in med},
        "gflops": {k: 2 * macs / (med[k] / 1e3) / 1e9 for k in med},
        "max_abs_diff_vs_ort": diffs,
        "compile_s": {"tvm": compile_s, "tvm-untuned": untuned_compile_s},
        "scheduled_kernels": f"{build['scheduled_kernels']}/{build['kernels']}",
        "tuning_records": sum(_records(d) for d in database_dirs(spec)),
    }
    console.log(json.dumps({"model": name, "median_ms": {k: round(v, 3) for k, v in med.items()}, "scheduled": row["scheduled_kernels"]}))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=int(os.environ["TVM_NUM_THREADS"]), help="threads for torch/ORT (TVM: set TVM_NUM_THREADS)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    print(banner(), flush=True)
    console = Console()
    factories = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name, factories[name], args.repeat, args.threads, Path(tmp), console))
    engines = ["torch", "ort", "tvm-untuned", "tvm"]
    path = vector_facts(resolve_target("x86")).name
    peak = measured_peak_gflops(path, args.threads) or float("nan")
    table = Table(title=f"fp32 latency, batch 1, {args.threads} threads, median (ms) and ratio to ORT; measured {path} peak {peak:.0f} GFLOP/s")
    for col in ["model", "GMAC", *engines, "tvm GFLOP/s", "untuned/ORT", "tvm/ORT", "tvm kernels scheduled", "tvm max|diff| vs ORT"]:
        table.add_column(col, justify="right")
    md = ["| model | GMAC | " + " | ".join(f"{e} ms" for e in engines) + " | tvm GFLOP/s (% peak) | untuned / ORT | tvm / ORT | kernels scheduled (analytic or database) | max abs diff vs ORT |", "|" + " --- |" * 11]
    for r in rows:
        m = r["median_ms"]
        cells = [
            r["model"],
            f"{r['gmacs']:.2f}",
            *[f"{m[e]:.2f}" for e in engines],
            f"{r['gflops']['tvm']:.1f} ({100 * r['gflops']['tvm'] / peak:.0f}%)",
            f"{r['ratio_vs_ort']['tvm-untuned']:.1f}x",
            f"{r['ratio_vs_ort']['tvm']:.2f}x",
            r["scheduled_kernels"],
            f"{r['max_abs_diff_vs_ort']['tvm']:.1e}",
        ]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    print("\n".join(md))
    print("ORT GFLOP/s: " + ", ".join(f"{r['model']} {r['gflops']['ort']:.0f}" for r in rows))
    print("compile seconds: " + ", ".join(f"{r['model']} {r['compile_s']['tvm']:.1f}" for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
