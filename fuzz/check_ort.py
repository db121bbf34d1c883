#!/usr/bin/env python3
"""Check that onnxruntime loads and runs every graph made by fuzz/generate.py.

Runs in the PROJECT venv (not the fuzz venv):

    .venv/bin/python fuzz/check_ort.py DIR [--json report.json]

For each DIR/g*.onnx it loads the model with onnxruntime (CPU, default optimisations),
feeds DIR/g*.npz and runs it. Prints counts, the ONNX op histogram, the dtypes seen, and
every failure (load or run) with its error. Exit status 1 if any model failed.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="write a machine-readable report")
    ap.add_argument("--opt", choices=["disable", "basic", "extended", "all"], default="all")
    args = ap.parse_args(argv)

    level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[args.opt]

    models = sorted(args.dir.glob("g*.onnx"))
    ops = collections.Counter()
    graphs_with_op = collections.Counter()
    dtypes = collections.Counter()
    ir_versions = collections.Counter()
    opsets = collections.Counter()
    ok, failures, nonfinite = [], [], []
    for path in models:
        model = onnx.load(path)
        ir_versions[model.ir_version] += 1
        opsets[tuple(sorted((o.domain or "ai.onnx", o.version) for o in model.opset_import))] += 1
        kinds = collections.Counter(n.op_type for n in model.graph.node)
        ops.update(kinds)
        graphs_with_op.update(kinds.keys())
        for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            dtypes[onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name] += 1
        for init in model.graph.initializer:
            dtypes[onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name] += 1
        stage = "load"
        try:
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(path.as_posix(), so, providers=["CPUExecutionProvider"])
            stage = "inputs"
            with np.load(path.with_suffix(".npz")) as z:
                feeds = {k: z[k] for k in z.files}
            want = {i.name for i in sess.get_inputs()}
            if set(feeds) != want:
                raise RuntimeError(f"npz keys {sorted(feeds)} != graph inputs {sorted(want)}")
            stage = "run"
            outs = sess.run(None, feeds)
            ok.append(path.name)
            if any(np.issubdtype(o.dtype, np.floating) and not np.all(np.isfinite(o)) for o in outs):
                nonfinite.append(path.name)
        except Exception as e:  # noqa: BLE001
            failures.append({"model": path.name, "stage": stage,
                             "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"})

    print(f"models: {len(models)}  ORT-runnable: {len(ok)}  failed: {len(failures)}  "
          f"(onnxruntime {ort.__version__}, opt={args.opt})")
    print(f"outputs with NaN/Inf under ORT: {len(nonfinite)} {nonfinite}")
    print(f"IR versions: {dict(ir_versions)}  opsets: {dict(opsets)}")
    print("dtypes (inputs/outputs/value_info/initializers):",
          ", ".join(f"{k}:{v}" for k, v in dtypes.most_common()))
    print("op histogram (nodes, graphs):")
    for op, n in ops.most_common():
        print(f"  {op:<16} {n:5d} {graphs_with_op[op]:5d}")
    for f in failures:
        print(f"FAIL {f['model']} [{f['stage']}] {f['error']}")
    if args.json:
        args.json.write_text(json.dumps({
            "n_models": len(models), "n_ok": len(ok), "failures": failures,
            "nonfinite_outputs": nonfinite, "ops": dict(ops), "dtypes": dict(dtypes),
            "ir_versions": {str(k): v for k, v in ir_versions.items()},
        }, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
