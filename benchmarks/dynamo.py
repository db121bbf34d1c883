"""``torch.compile(backend="graphpress")`` side by side with torch eager, ``torch.compile``'s
default inductor backend and the graphpress artifact compiled from the same model, fp32 and int8
(``options={"recipe": "int8", "budget": "cos:0.99"}``, and the artifact of ``graphpress.compress``
with the same recipe; inductor has no int8 of its own: its row is fp32), fp32 and int8 once more with
``guard_filter_fn=torch.compiler.skip_guard_on_all_nn_modules_unsafe`` (torch's opt-in: Dynamo
stops checking module attributes before every call; tensor guards stay), and the fp32 backend's
compiled graph called directly, without Dynamo (what is left is Dynamo's own cost per call), on
ResNet-18 (224², batch 1) and MiniLM (128 tokens). One run, 2 threads, timed in blocks in the
same process; prints the machine first.

    .venv/bin/python benchmarks/dynamo.py [--models resnet18,minilm] [--repeat 30]
"""

from __future__ import annotations

from _machine import banner
from _models import speed_model
import argparse
import json
import time

import torch
from _timing import blocked

THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,minilm")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json")
    opts = parser.parse_args()
    print(banner())
    torch.set_num_threads(THREADS)
    import graphpress
    from graphpress.backends.tvm import compile_model
    from graphpress.models import resnet18
    from graphpress.models.minilm import docstring_sentences, load_minilm, tokenize

    rows = []
    for name in opts.models.split(","):
        if name == "minilm":
            module = load_minilm().eval()
            args = tuple(tokenize(["graphpress quantizes the matmuls of this sentence transformer"], seq_len=128).values())
            samples = [tuple(tokenize([s], seq_len=128).values()) for s in docstring_sentences(16)]
        else:
            torch.manual_seed(0)
            module = resnet18().eval()
            args = (torch.randn(1, 3, 224, 224),)
            samples = [(torch.randn(1, 3, 224, 224),) for _ in range(16)]
        model, _ = speed_model(name)
        with torch.no_grad():
            want = module(*args)
        engines, compile_s = {"torch eager": lambda: module(*args)}, {}
        skip_module_guards = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        variants = [("torch.compile inductor (fp32)", {"backend": "inductor"}), ("torch.compile graphpress fp32", {"backend": "graphpress"}),
                    ("torch.compile graphpress fp32, module guards skipped", {"backend": "graphpress", "options": skip_module_guards}),
                    ("torch.compile graphpress int8", {"backend": "graphpress", "options": {"recipe": "int8", "samples": samples, "budget": "cos:0.99"}}),
                    # the user's opt-in (torch's own helper): no guards on module attributes, tensors still guarded
                    ("torch.compile graphpress int8, module guards skipped", {"backend": "graphpress", "options": {
                        "recipe": "int8", "samples": samples, "budget": "cos:0.99", **skip_module_guards}})]  # fmt: skip
        # the fp32 backend once more through a wrapper that keeps what it returns: that callable,
        # called without Dynamo, separates the backend's own time from Dynamo's per-call cost
        graphs = []

        def keeping(gm, example_inputs, **kw):
            fn = torch._dynamo.lookup_backend("graphpress")(gm, example_inputs, **kw)
            graphs.append((fn, list(example_inputs)))
            return fn

        variants.insert(3, ("torch.compile graphpress fp32 (kept)", {"backend": keeping}))
        for label, kw in variants:
            torch._dynamo.reset()
            fn = torch.compile(module, **kw)
            t0 = time.perf_counter()
            with torch.no_grad():
                got = fn(*args)
            compile_s[label] = round(time.perf_counter() - t0, 1)
            cos = float(torch.nn.functional.cosine_similarity(got.flatten().float(), want.flatten().float(), dim=0))
            compile_s[label + " cosine"] = round(cos, 5)
            engines[label] = lambda fn=fn: fn(*args)
        del engines["torch.compile graphpress fp32 (kept)"]
        if len(graphs) == 1:  # one graph, no break: the whole model
            graph_fn, graph_args = graphs[0]
            engines["graphpress backend fp32, called without Dynamo"] = lambda: graph_fn(*graph_args)
        t0 = time.perf_counter()
        artifact = compile_model(model, "x86")
        compile_s["graphpress artifact fp32"] = round(time.perf_counter() - t0, 1)
        feeds = {i.name: a.numpy() for i, a in zip(model.graph.inputs, args)}
        engines["graphpress artifact fp32"] = lambda: artifact(**feeds)
        t0 = time.perf_counter()
        names = [i.name for i in model.graph.inputs]
        quantized = graphpress.compress(model, "x86", samples=[{n: a.numpy() for n, a in zip(names, call)} for call in samples], recipe="int8",
                                        budget="cos:0.99", measure=False).compiled  # fmt: skip
        compile_s["graphpress artifact int8"] = round(time.perf_counter() - t0, 1)
        engines["graphpress artifact int8"] = lambda: quantized(**feeds)
        with torch.no_grad():
            ms = blocked(engines, opts.repeat)
        for label, value in ms.items():
            row = {"model": name, "engine": label, "ms": round(value, 3), "vs_eager": round(ms["torch eager"] / value, 2),
                   "compile_s": compile_s.get(label), "cosine_to_eager": compile_s.get(label + " cosine")}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | engine | ms | vs eager | compile s | cosine to eager |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['engine']} | {r['ms']:.2f} | {r['vs_eager']:.2f}x | {r['compile_s'] or ''} | {r['cosine_to_eager'] or ''} |")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
