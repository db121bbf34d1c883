"""Compression: file size and accuracy of dedup, share, prune and pack, in one run.

Digits CNN (trained in-run on scikit-learn's ``load_digits``; top-1 on the held-out quarter),
no retraining after any pass. Rows: the fp32 ONNX file, ``dedup``, ``share`` (local/global,
16/32/256 clusters, linear/density/random init), unstructured and structured ``prune`` followed
by ``share``; each written as ONNX (what every runtime runs) and packed with ``graphpress pack``.
Peers in the same run: ORT's ``quantize_dynamic`` (int8 weights) and plain ``lzma -9`` of the
fp32 file. The Huffman column is what an order-0 Huffman code of every weight tensor would take
(Deep Compression's coder), beside what ``pack`` chose.

all-MiniLM-L6-v2 (real weights, ``--sentences`` real sentences): ``dedup`` and ``share`` with
256 clusters; mean cosine of the embeddings to fp32 and nearest-neighbour agreement.

Speed of the shared form: ORT runs the codebook lookup inside the graph; TVM folds it back to
dense weights at compile time (``unshared_lookups`` in its build report). Latency is measured
for both against the dense model (2 threads, median of ``--repeat``).

Usage::

    python benchmarks/compression.py [--sentences 300] [--repeat 30] [--no-minilm]
"""

from __future__ import annotations

from _machine import banner
import argparse
import json
import lzma
import tempfile
from pathlib import Path

import _text
import onnxruntime as ort
import torch
from _timing import blocked
from onnxruntime.quantization import quantize_dynamic

import graphpress as gp
from graphpress.ir.io import to_proto
from graphpress.ir.numeric import run
from graphpress.ir.pack import pack_bytes
from graphpress.passes import PassManager, build_passes

THREADS = 2

DIGITS_SPECS = [
    ("dedup", "dedup"),
    ("share local 16 (linear)", "share:clusters=16"),
    ("share local 16 (density)", "share:clusters=16;init=density"),
    ("share local 16 (random)", "share:clusters=16;init=random"),
    ("share local 32", "share:clusters=32"),
    ("share local 256", "share:clusters=256"),
    ("share global 16", "share:clusters=16;scope=global"),
    ("share global 32", "share:clusters=32;scope=global"),
    ("share global 256", "share:clusters=256;scope=global"),
    ("share local 8", "share:clusters=8"),
    ("share local 4", "share:clusters=4"),
    ("prune unstructured 50% + share 16", "prune:mode=unstructured;ratio=0.5,share:clusters=16"),
    ("prune unstructured 70% + share 16", "prune:mode=unstructured;ratio=0.7,share:clusters=16"),
    ("prune unstructured 50% + share 8", "prune:mode=unstructured;ratio=0.5,share:clusters=8"),
    ("prune structured 30% + share 16", "prune:ratio=0.3,share:clusters=16"),
]


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _sizes(path: Path) -> dict:
    data = path.read_bytes()
    _, report = pack_bytes(data, str(path))
    return {"onnx_bytes": len(data), "packed_bytes": report.packed_bytes, "huffman_tensor_bytes": report.huffman_bytes, "codecs": report.by_codec}


def digits(workdir: Path, repeat: int) -> list[dict]:
    from graphpress.backends.tvm import compile_model
    from graphpress.models.cnn import accuracy, train_digits_cnn

    module, data = train_digits_cnn(epochs=8)
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    name = model.graph.inputs[0].name
    src = gp.save(model, workdir / "digits.onnx")

    def top1(m) -> float:
        return accuracy(next(iter(run(m, {name: data.x_test}).values())), data.y_test)

    base = top1(model)
    dense = _sizes(src)
    rows = [{"variant": "fp32 (cleanup,fuse)", "accuracy": base, **dense}]
    rows.append({"variant": "peer: lzma -9 of the fp32 file", "accuracy": base, "onnx_bytes": dense["onnx_bytes"], "packed_bytes": len(lzma.compress(src.read_bytes(), preset=9))})
    ort_q = workdir / "digits-ort-int8.onnx"
    quantize_dynamic(str(src), str(ort_q))
    acc = accuracy(_session(ort_q).run(None, {name: data.x_test})[0], data.y_test)
    rows.append({"variant": "peer: ORT quantize_dynamic (int8 weights)", "accuracy": acc, **_sizes(ort_q)})
    shared_path = None
    for label, spec in DIGITS_SPECS:
        m = gp.load(to_proto(model))
        records = PassManager(build_passes(spec)).run(m).records
        path = gp.save(m, workdir / f"digits-{len(rows)}.onnx")
        stats = records[-1].stats
        row = {"variant": label, "accuracy": top1(m), **_sizes(path)}
        if "r_w" in stats:
            row.update({"r_w": stats["r_w"], "bits_per_weight": stats["bits_per_weight"], "weight_mse": stats["mse"]})
        row["weight_bytes_after_each_pass"] = {rec.name: rec.weight_bytes for rec in records}
        rows.append(row)
        if spec == "share:clusters=16":
            shared_path = path
    for r in rows:
        r["delta_pt"] = 100 * (r["accuracy"] - base)
        r["ratio_onnx"] = dense["onnx_bytes"] / r["onnx_bytes"]
        r["ratio_packed"] = dense["onnx_bytes"] / r["packed_bytes"]
        print(json.dumps(r), flush=True)

    # speed of the shared form (batch 1): ORT with the lookup in the graph; TVM folds it to dense
    feeds = {name: data.x_test[:1]}
    shared = gp.load(shared_path)
    sessions = {"ORT dense": _session(src), "ORT shared (lookup in graph)": _session(shared_path)}
    tvm_dense = compile_model(model, "x86", input_shapes={name: [1, 1, 8, 8]})
    tvm_shared = compile_model(shared, "x86", input_shapes={name: [1, 1, 8, 8]})
    fns = {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
    fns["TVM dense"] = lambda: tvm_dense.run_named(**feeds)
    fns["TVM shared (folded to dense)"] = lambda: tvm_shared.run_named(**feeds)
    ms = blocked(fns, repeat)
    speed = {"ms": ms, "tvm_unshared_lookups": tvm_shared.meta["build"]["prepare"]["unshared_lookups"]}
    print(json.dumps({"digits_speed": speed}), flush=True)
    return rows, speed


def minilm(workdir: Path, n: int, repeat: int) -> dict:
    from graphpress.models.minilm import load_minilm, tokenize

    texts = _text.sentences(n)
    module = load_minilm().eval()
    toks = tokenize(texts[:2], seq_len=64)
    model = gp.load(module, tuple(toks.values()), dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(model)
    names = [i.name for i in model.graph.inputs]
    src = gp.save(model, workdir / "minilm.onnx")
    ref = _text.embed(lambda feeds: next(iter(run(model, feeds).values())), names, texts)
    out = {"sentences": len(texts), "rows": []}
    variants = {"fp32": (src, {})}
    for label, spec in (
        ("dedup", "dedup"),
        ("dedup + share 256 (linear)", "dedup,share:clusters=256"),
        ("dedup + share 256 (density)", "dedup,share:clusters=256;init=density"),
        ("dedup + share 16", "dedup,share:clusters=16"),
    ):
        m = gp.load(to_proto(model))
        records = PassManager(build_passes(spec)).run(m).records
        path = gp.save(m, workdir / f"minilm-{len(variants)}.onnx")
        variants[label] = (path, {rec.name: {k: v for k, v in rec.stats.items() if k not in ("layers", "merges")} for rec in records})
    for label, (path, stats) in variants.items():
        sess = _session(path)
        e = _text.embed(lambda feeds, s=sess: s.run(None, feeds)[0], names, texts)
        row = {"variant": label, **_text.agreement(e, ref), **_sizes(path), "stats": stats}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    one = tokenize(texts[:1], seq_len=64)  # the export has a static sequence length of 64
    feeds = dict(zip(names, [v.numpy() for v in one.values()]))
    shared = variants["dedup + share 256 (linear)"][0]
    sessions = {"ORT dense": _session(src), "ORT shared 256 (lookup in graph)": _session(shared)}
    out["ms"] = blocked({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, repeat)
    print(json.dumps({"minilm_speed": out["ms"]}), flush=True)
    return out


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(banner(), flush=True)
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows, speed = digits(work, args.repeat)
        text = None if args.no_minilm else minilm(work, args.sentences, args.repeat)
    print("\n| digits CNN (no retraining) | top-1 | Δ pt | ONNX KiB | × | packed KiB | × | r_w | bits/w (ONNX) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rw = f"{r['r_w']:.2f}" if "r_w" in r else ""
        bits = f"{r['bits_per_weight']:.2f}" if "bits_per_weight" in r else ""
        print(
            f"| {r['variant']} | {r['accuracy']:.4f} | {r['delta_pt']:+.1f} | {_kb(r['onnx_bytes'])} | {r['ratio_onnx']:.2f} | "
            f"{_kb(r['packed_bytes'])} | {r['ratio_packed']:.2f} | {rw} | {bits} |"
        )
    print("\n| packed with | KiB (tensors: chosen codec vs order-0 Huffman) |\n| --- | --- |")
    for r in rows:
        if "huffman_tensor_bytes" in r:
            print(f"| {r['variant']} | {', '.join(f'{k} {_kb(v)}' for k, v in r['codecs'].items())} / Huffman {_kb(r['huffman_tensor_bytes'])} |")
    print("\n| digits CNN, batch 1 | ms |\n| --- | ---: |")
    for k, v in speed["ms"].items():
        print(f"| {k} | {v:.4f} |")
    if text:
        print(f"\n| MiniLM, {text['sentences']} sentences | mean cosine | min cosine | NN agreement | ONNX MB | packed MB | × packed |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = text["rows"][0]["onnx_bytes"]
        for r in text["rows"]:
            print(
                f"| {r['variant']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {r['nn_agreement']:.3f} | "
                f"{r['onnx_bytes'] / 1e6:.1f} | {r['packed_bytes'] / 1e6:.1f} | {base / r['packed_bytes']:.2f} |"
            )
        print("\n| MiniLM seq 64, batch 1 | ms |\n| --- | ---: |")
        for k, v in text["ms"].items():
            print(f"| {k} | {v:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"digits": rows, "digits_speed": speed, "minilm": text}, indent=2, default=str))


if __name__ == "__main__":
    main()
