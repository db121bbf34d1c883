"""The ``fuse`` pass side by side with onnxslim and ONNX Runtime's own offline optimizer.

One process, one run. Models, exported with torch's legacy TorchScript exporter so the fusion
work is still in the graph:

* ResNet-18 and MobileNetV2 (224², random weights, eval mode) with
  ``training=TrainingMode.PRESERVE, do_constant_folding=False``: BatchNormalization unfused;
* all-MiniLM-L6-v2 (real weights, seq 128) at opset 14: LayerNorm and GELU decomposed,
  attention as MatMul/Mul/Add/Softmax/MatMul.

Tools, each starting from the same exported bytes:

* ``graphpress``: ``gp.load`` + ``cleanup,fuse,cleanup`` + ``gp.save``;
* ``onnxslim``: ``onnxslim.slim(model)`` (its default optimizations) + save;
* ``ort-offline``: an ONNX Runtime session with ``ORT_ENABLE_EXTENDED`` and
  ``optimized_model_filepath`` (ORT's documented offline mode; its output contains
  ``com.microsoft`` contrib ops that only ORT runs).

Per tool: node count, top ops, seconds to optimize, max |diff| against the exported model on
ORT (graph optimizations off for the reference), and ORT latency (``ORT_ENABLE_ALL``, 2 intra-op
threads, spinning on, median of ``--repeat`` calls run in blocks, see :func:`_blocked`). Then the
TVM backend compiles the exported graph after ``cleanup`` only (TVM's importer needs the mask
arithmetic folded; nothing is fused) and the graphpress-fused graph, both without tuning
databases, and times them the same way (median of ``--tvm-repeat``).

Goals (issue #4): node count <= onnxslim's, outputs equivalent, ORT latency not worse than
onnxslim's output, TVM latency of the fused graph better than the unfused one.

Usage::

    python benchmarks/fusion.py [--models resnet18,mobilenetv2,minilm] [--repeat 50] [--tvm-repeat 5]
"""

from __future__ import annotations

from _machine import banner
import argparse
import collections
import contextlib
import io
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("TVM_NUM_THREADS", "2")
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch

import graphpress as gp
from _timing import blocked
from graphpress.ir.io import MAX_IR_VERSION
from graphpress.ir.numeric import run as ort_reference
from graphpress.passes import PassManager, build_passes

SPEC = "cleanup,fuse,cleanup"
THREADS = 2


def _export(module: torch.nn.Module, args: tuple, names: list[str], **kwargs) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(module, args, buf, dynamo=False, input_names=names, **kwargs)
    return buf.getvalue()


def _models() -> dict:
    from graphpress.models import mobilenet_v2, resnet18
    from graphpress.models.minilm import load_minilm, tokenize

    def cnn(factory):
        torch.manual_seed(0)
        x = torch.randn(1, 3, 224, 224)
        data = _export(factory().eval(), (x,), ["x"], opset_version=14, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
        return data, {"x": x.numpy()}

    def minilm():
        toks = tokenize(["graphpress fuses the attention of this sentence"], seq_len=128)
        args = (toks["input_ids"], toks["attention_mask"])
        data = _export(load_minilm(), args, ["input_ids", "attention_mask"], opset_version=14)
        return data, {"input_ids": args[0].numpy(), "attention_mask": args[1].numpy()}

    return {"resnet18": lambda: cnn(resnet18), "mobilenetv2": lambda: cnn(mobilenet_v2), "minilm": minilm}


def _graphpress(data: bytes, out: Path) -> None:
    model = gp.load(data)
    PassManager(build_passes(SPEC)).run(model)
    gp.save(model, out)


def _onnxslim(data: bytes, out: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(onnx.load_from_string(data))
    slim.ir_version = min(slim.ir_version, MAX_IR_VERSION)
    onnx.save(slim, out)


def _ort_offline(data: bytes, out: Path) -> None:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_model(name: str, factory, repeat: int, tvm_repeat: int, workdir: Path) -> dict:
    from graphpress.backends import tvm as gtvm

    data, feeds = factory()
    exported = workdir / f"{name}.onnx"
    exported.write_bytes(data)
    reference = ort_reference(onnx.load_from_string(data), feeds)
    outputs = list(reference)
    tools = {"graphpress": _graphpress, "onnxslim": _onnxslim, "ort-offline": _ort_offline}
    row: dict = {"model": name, "nodes": {"exported": len(onnx.load_from_string(data).graph.node)}, "seconds": {}, "max_abs_diff": {}, "ops": {}}
    paths = {"exported": exported}
    for tool, fn in tools.items():
        out = workdir / f"{name}.{tool}.onnx"
        start = time.perf_counter()
        fn(data, out)
        row["seconds"][tool] = time.perf_counter() - start
        proto = onnx.load(out)
        row["nodes"][tool] = len(proto.graph.node)
        row["ops"][tool] = dict(collections.Counter(n.op_type for n in proto.graph.node).most_common())
        got = _session(out).run(outputs, feeds)
        row["max_abs_diff"][tool] = max(float(np.abs(g - r).max()) for g, r in zip(got, reference.values()))
        paths[tool] = out
    sessions = {tool: _session(path) for tool, path in paths.items()}
    row["ort_ms"] = blocked({tool: (lambda s=s: s.run(outputs, feeds)) for tool, s in sessions.items()}, repeat)

    # TVM: the exported graph after `cleanup` (what TVM needs to import it; nothing fused) vs the
    # fused graph, no tuning databases on either side
    unfused = gtvm.compile_model(gp.load(data), "x86", prepare="cleanup", shipped_databases=False, database=workdir / "empty-db")
    fused = gtvm.compile_model(gp.load(paths["graphpress"]), "x86", prepare="cleanup", shipped_databases=False, database=workdir / "empty-db")
    # ... and both with the shipped tuning databases (tuned on graphs prepared with BN folded:
    # kernels only the unfused graph has find no schedule there)
    unfused_db = gtvm.compile_model(gp.load(data), "x86", prepare="cleanup")
    fused_db = gtvm.compile_model(gp.load(paths["graphpress"]), "x86", prepare="cleanup")
    ordered = [feeds[i["name"]] for i in fused.meta["inputs"]]
    row["tvm_kernels"] = {"exported": unfused.meta["build"]["kernels"], "graphpress": fused.meta["build"]["kernels"]}
    row["tvm_scheduled_with_db"] = {
        "exported": f"{unfused_db.meta['build']['scheduled_kernels']}/{unfused_db.meta['build']['kernels']}",
        "graphpress": f"{fused_db.meta['build']['scheduled_kernels']}/{fused_db.meta['build']['kernels']}",
    }
    row["tvm_max_abs_diff"] = float(np.abs(fused(*ordered)[0] - next(iter(reference.values()))).max())
    row["tvm_ms"] = blocked({"exported": lambda: unfused(*ordered), "graphpress": lambda: fused(*ordered)}, tvm_repeat)
    row["tvm_db_ms"] = blocked({"exported": lambda: unfused_db(*ordered), "graphpress": lambda: fused_db(*ordered)}, repeat)
    print(json.dumps({k: row[k] for k in ("model", "nodes", "ort_ms", "tvm_ms", "max_abs_diff")}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tvm-repeat", type=int, default=5)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    print(banner(), flush=True)
    factories = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name, factories[name], args.repeat, args.tvm_repeat, Path(tmp)))
    tools = ["exported", "graphpress", "onnxslim", "ort-offline"]
    print("\n| model | " + " | ".join(f"nodes {t}" for t in tools) + " | " + " | ".join(f"ORT ms {t}" for t in tools)
          + " | graphpress / onnxslim ORT | max abs diff gp / slim / ort | optimize s gp / slim / ort |")
    print("|" + " --- |" * 12)
    for r in rows:
        n, ms, d, s = r["nodes"], r["ort_ms"], r["max_abs_diff"], r["seconds"]
        print(
            f"| {r['model']} | " + " | ".join(str(n[t]) for t in tools) + " | " + " | ".join(f"{ms[t]:.2f}" for t in tools)
            + f" | {ms['graphpress'] / ms['onnxslim']:.2f}x | {d['graphpress']:.1e} / {d['onnxslim']:.1e} / {d['ort-offline']:.1e}"
            + f" | {s['graphpress']:.2f} / {s['onnxslim']:.2f} / {s['ort-offline']:.2f} |"
        )
    print(
        "\n| model | TVM kernels exported / fused | untuned ms exported | untuned ms fused | fused / exported"
        " | shipped-DB kernels scheduled exported / fused | DB ms exported | DB ms fused | fused / exported | max abs diff vs ORT |"
    )
    print("|" + " --- |" * 10)
    for r in rows:
        t, d = r["tvm_ms"], r["tvm_db_ms"]
        print(
            f"| {r['model']} | {r['tvm_kernels']['exported']} / {r['tvm_kernels']['graphpress']} | {t['exported']:.1f} | {t['graphpress']:.1f}"
            f" | {t['graphpress'] / t['exported']:.2f}x | {r['tvm_scheduled_with_db']['exported']} / {r['tvm_scheduled_with_db']['graphpress']}"
            f" | {d['exported']:.1f} | {d['graphpress']:.1f} | {d['graphpress'] / d['exported']:.2f}x | {r['tvm_max_abs_diff']:.1e} |"
        )
    print("\nops after graphpress:")
    for r in rows:
        print(f"  {r['model']}: {r['ops']['graphpress']}")
        print(f"  {r['model']} onnxslim: {r['ops']['onnxslim']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
