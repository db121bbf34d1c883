"""`graphpress.compress` on the built-in models, against the goals of the recipes: the digits CNN
(trained in-run, labels of scikit-learn's held-out split) with ``smallest`` (size on disk) and
``prune-int8`` for x86 (latency against ONNX Runtime's best int8 of the original), and
all-MiniLM-L6-v2 (real weights, sentences from Python's docstrings) with ``int8`` for x86.

Every row is measured in one run by ``compress`` itself: ONNX Runtime fp32 on the original,
ONNX Runtime's own best int8 of the original (``quant_pre_process`` + static U8S8 per-channel
MinMax for the CNN, dynamic MatMul-only for MiniLM, calibrated on the same samples), the
compressed ONNX on ONNX Runtime and the compiled artifact, all on the same threads.

    python benchmarks/recipes.py [--cases cnn-smallest,cnn-prune-int8,minilm-int8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import banner  # noqa: E402

CASES = ("cnn-smallest", "cnn-prune-int8", "minilm-int8")


def _cnn():
    import torch

    import graphpress as gp
    from graphpress.models.cnn import train_digits_cnn

    module, data = train_digits_cnn(epochs=8)
    model = gp.load(module.eval(), torch.from_numpy(data.x_test[:1]), dynamic_batch=True)
    return model, {model.graph.inputs[0].name: data.x_test}, data.y_test


def _minilm():
    import _text

    import graphpress as gp
    from graphpress.models.minilm import load_minilm, tokenize

    texts = _text.sentences(12)
    toks = tokenize(texts[:1], seq_len=128)
    model = gp.load(load_minilm().eval(), tuple(toks.values()))
    samples = [{k: v.numpy() for k, v in tokenize([t], seq_len=128).items()} for t in texts]
    return model, samples, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json")
    args = ap.parse_args()

    import graphpress as gp

    print(banner())
    results = {}
    for case in args.cases.split(","):
        model, samples, labels = _cnn() if case.startswith("cnn") else _minilm()
        recipe = case.split("-", 1)[1]
        target = "onnxruntime" if recipe == "smallest" else "x86"
        result = gp.compress(model, target, samples=samples, labels=labels, recipe=recipe, progress=lambda line: print("  " + time.strftime("%H:%M:%S") + f" {case}: {line}", flush=True))
        results[case] = result.to_dict()
        print(f"\n### {case}: {result.recipe} for {target}, budget {result.budget_text()} ({result.seconds:.0f} s)\n")
        print("| variant | .onnx bytes | packed bytes | size vs original | params | ms (p10-p90) | vs ORT fp32 | held-out |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        first = result.rows[0]
        for row in result.rows:
            size = row.get("packed_bytes") or row.get("onnx_bytes")
            ratio = f"{first['onnx_bytes'] / size:.1f}x smaller" if size else "-"
            ms = f"{row['median_ms']:.3f} ({row['p10_ms']:.3f}-{row['p90_ms']:.3f})" if "median_ms" in row else "-"
            print(f"| {row['variant']} | {row.get('onnx_bytes', '-')} | {row.get('packed_bytes', '-')} | {ratio} | {row.get('params', '-')} | {ms} | "
                  f"{row.get('speedup', '-')} | {row.get('held_out', row.get('note', '-'))} |")  # fmt: skip
        for step in result.steps:
            print(f"- {step['stage']}: {step['chosen'] or step.get('skipped')}")
        for note in result.notes:
            print(f"- note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    raise SystemExit(main())
