"""Structured pruning: size, MACs and latency before/after, and accuracy on real data.

One process, one run.

Part 1, per coverage model (ResNet-18, ResNet-50, MobileNetV2, VGG-11, a DenseNet-style and a
UNet-style net at 96x96, random weights; all-MiniLM-L6-v2 with its real weights at seq 64) and
ratio (30/50/70%, l1 importance, per-group ratio): parameters, MACs, ONNX Runtime latency
(``ORT_ENABLE_ALL``, 2 threads, median of ``--repeat``, blocked runs; spinning off because
several sessions are alive at once) and TVM
latency (graphpress compile without tuning: the shipped databases hold schedules for the
unpruned shapes only, so both sides run TVM's default loop nests; median of ``--tvm-repeat``),
and the latency gain next to the MAC gain. Goal (issue #5): latency gain >= 0.6x the MAC gain.

Part 2: the digits CNN trained in-run on scikit-learn's ``load_digits``: test accuracy after
pruning at each ratio without fine-tuning, and after applying the same plan to the torch module
and fine-tuning it for ``--finetune-epochs`` epochs.

Usage::

    python benchmarks/pruning.py [--models resnet18,...] [--ratios 0.3,0.5,0.7] [--repeat 30] [--tvm-repeat 3] [--no-tvm]
"""

from __future__ import annotations

from _machine import banner
import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("TVM_NUM_THREADS", "2")
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

import graphpress as gp
from _timing import blocked
from graphpress.ir.io import to_proto
from graphpress.passes import PassManager, build_passes
from graphpress.passes.pruning import apply_plan, apply_plan_to_module, plan_pruning

THREADS = 2


def _models() -> dict:
    from graphpress.models import TinyDenseNet, TinyUNet, mobilenet_v2, resnet18, resnet50, vgg11
    from graphpress.models.minilm import load_minilm, tokenize

    def cnn(factory, size=96):
        torch.manual_seed(0)
        return factory().eval(), (torch.randn(1, 3, size, size),)

    def minilm():
        toks = tokenize(["structured pruning keeps whole heads and neurons"], seq_len=64)
        return load_minilm().eval(), tuple(toks.values())

    return {
        "resnet18": lambda: cnn(resnet18),
        "resnet50": lambda: cnn(resnet50),
        "mobilenetv2": lambda: cnn(mobilenet_v2),
        "vgg11": lambda: cnn(lambda: vgg11(width=64, image=96)),
        "densenet": lambda: cnn(TinyDenseNet),
        "unet": lambda: cnn(lambda: TinyUNet(width=32)),
        "minilm": minilm,
    }


def _ort(model, path: Path):
    gp.save(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # several sessions live side by side here: spinning pools of idle sessions would steal the
    # cores of the one being timed (measured: it hid a 3.7x ResNet-18 gain completely)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_model(name, factory, ratios, repeat, tvm_repeat, use_tvm, workdir: Path, round_to: int = 1) -> list[dict]:
    module, args = factory()
    base = gp.load(module, args)
    PassManager(build_passes("cleanup")).run(base)
    feeds = {i.name: a.numpy() for i, a in zip(base.graph.inputs, args)}
    variants = {"0%": base}
    plans = {}
    for ratio in ratios:
        model = ir_copy(base)
        plan = plan_pruning(model, ratio=ratio, round_to=round_to)
        apply_plan(model, plan)
        variants[f"{int(ratio * 100)}%"] = model
        plans[f"{int(ratio * 100)}%"] = plan
    sessions = {k: _ort(m, workdir / f"{name}-{k[:-1]}.onnx") for k, m in variants.items()}
    ort_ms = blocked({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, repeat)
    tvm_ms = {}
    if use_tvm:
        from graphpress.backends import tvm as gtvm

        compiled = {k: gtvm.compile_model(m, "x86", shipped_databases=False, database=workdir / "empty-db") for k, m in variants.items()}
        ordered = [feeds[i["name"]] for i in compiled["0%"].meta["inputs"]]
        tvm_ms = blocked({k: (lambda c=c: c(*ordered)) for k, c in compiled.items()}, tvm_repeat)
    rows = []
    base_summary = gp.summarize(base)
    for key, model in variants.items():
        s = gp.summarize(model)
        row = {
            "model": name,
            "ratio": key,
            "params": s.params,
            "macs": s.macs,
            "mac_gain": base_summary.macs / s.macs,
            "ort_ms": ort_ms[key],
            "ort_gain": ort_ms["0%"] / ort_ms[key],
        }
        if tvm_ms:
            row.update({"tvm_ms": tvm_ms[key], "tvm_gain": tvm_ms["0%"] / tvm_ms[key]})
        if key in plans:
            g = plans[key].groups
            row["groups"] = f"{sum(1 for x in g if x['pruned'])}/{len(g)}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ir_copy(model):
    import onnx_ir as ir

    return ir.serde.deserialize_model(to_proto(model))


def digits_part(ratios, finetune_epochs: int) -> list[dict]:
    from graphpress.ir.numeric import run
    from graphpress.models.cnn import accuracy, fit, train_digits_cnn

    module, data = train_digits_cnn(epochs=8)
    x_test = torch.from_numpy(data.x_test)
    base = gp.load(module, x_test[:2], dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(base)
    name = base.graph.inputs[0].name
    rows = [{"ratio": "0%", "params": gp.summarize(base).params, "accuracy": accuracy(next(iter(run(base, {name: data.x_test}).values())), data.y_test)}]
    for ratio in ratios:
        model = ir_copy(base)
        plan = plan_pruning(model, ratio=ratio)
        apply_plan(model, plan)
        acc = accuracy(next(iter(run(model, {name: data.x_test}).values())), data.y_test)
        # the same plan on the torch module, then a short fine-tune
        pruned_module, _ = train_digits_cnn(epochs=8)
        apply_plan_to_module(pruned_module, plan)
        fit(pruned_module, data, finetune_epochs, lr=1e-3, seed=1)
        with torch.no_grad():
            tuned = accuracy(pruned_module(x_test).numpy(), data.y_test)
        row = {"ratio": f"{int(ratio * 100)}%", "params": gp.summarize(model).params, "accuracy": acc, "finetuned_accuracy": tuned}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50,mobilenetv2,vgg11,densenet,unet,minilm")
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--tvm-repeat", type=int, default=3)
    parser.add_argument("--no-tvm", action="store_true")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=1, help="keep multiples of this many channels (prune's round_to)")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(banner(), flush=True)
    ratios = [float(r) for r in args.ratios.split(",")]
    torch.set_num_threads(THREADS)
    factories = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, factories[name], ratios, args.repeat, args.tvm_repeat, not args.no_tvm, Path(tmp), args.round_to)
    digits = [] if args.no_digits else digits_part(ratios, args.finetune_epochs)
    tvm = not args.no_tvm
    print("\n| model | pruned | groups pruned | params (M) | GMAC | MAC gain | ORT ms | ORT gain | ORT gain / MAC gain |" + (" TVM ms (untuned) | TVM gain | TVM gain / MAC gain |" if tvm else ""))
    print("|" + " --- |" * (12 if tvm else 9))
    for r in rows:
        line = (
            f"| {r['model']} | {r['ratio']} | {r.get('groups', '-')} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.3f} | {r['mac_gain']:.2f}x"
            f" | {r['ort_ms']:.2f} | {r['ort_gain']:.2f}x | {r['ort_gain'] / r['mac_gain']:.2f} |"
        )
        if tvm:
            line += f" {r['tvm_ms']:.1f} | {r['tvm_gain']:.2f}x | {r['tvm_gain'] / r['mac_gain']:.2f} |"
        print(line)
    print("\n| digits CNN pruned | params | test accuracy, no fine-tune | after plan on torch module + fine-tune |")
    print("| --- | --- | --- | --- |")
    for r in digits:
        print(f"| {r['ratio']} | {r['params']} | {r['accuracy']:.3f} | {r.get('finetuned_accuracy', r['accuracy']):.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": rows, "digits": digits}, indent=2))


if __name__ == "__main__":
    main()
