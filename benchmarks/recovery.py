"""Recovery: what compression costs one-shot, and what ``graphpress.recover`` (distillation on
the compressed graph itself) wins back, side by side in one run, with the training time.

* Digits CNN (trained in-run on scikit-learn's ``load_digits``; top-1 on the test split, which
  neither training nor recovery sees): structured 70 % + static int8; unstructured 95 % +
  8-cluster sharing, written as ONNX and packed (``graphpress pack``), its size against the fp32
  ONNX file.
* all-MiniLM-L6-v2 (real weights; sentences of the docstrings of Python's standard library,
  the last sixth held out and never trained on): dynamic int8 (per tensor, smoothed, per-token
  and smoothed; 1 epoch), and 50 % of every FFN pruned (block by block first,
  ``--ffn-block-epochs``, each FFN on the real tokens; then ``--ffn-epochs`` end to end, each
  layer's output matched to the teacher's at the real tokens; ``--ffn-packed`` more rows of
  three training sentences joined, and ``--ffn-more`` sentences of the rest of the docstrings,
  10,000 by default: all of them); mean cosine of the held-out embeddings to fp32 and
  nearest-neighbour agreement.
* A ResNet-18 (10 classes) trained in-run on the digits upsampled to 32x32: 50 % pruned +
  static int8, recovered; its TVM int8 artifact timed against ONNX Runtime's best int8 of the
  original (2 threads, batch 1).

Usage::

    python benchmarks/recovery.py [--parts digits,minilm,resnet] [--json out.json]
"""

from __future__ import annotations

from _machine import banner
import argparse
import json
import os
import tempfile
import time

import _text
import numpy as np
import torch
from _timing import blocked

import graphpress as gp
from graphpress.compression import _disk_bytes, onnxruntime_int8
from graphpress.ir.numeric import run_samples
from graphpress.models.cnn import accuracy, digits_data, fit, train_digits_cnn
from graphpress.passes import PassManager, build_passes
from graphpress.pipelines import copy_model

THREADS = 2
LOSSLESS = "cleanup,fuse,cleanup,dedup"


def _compressed(model, spec, x_calibration=None):
    """``spec`` on a copy of ``model``; static quantization calibrated on ``x_calibration`` rows."""
    from graphpress.passes.context import PassContext

    out = copy_model(model)
    rows = [{model.graph.inputs[0].name: x_calibration[i : i + 1]} for i in range(len(x_calibration))] if x_calibration is not None else None
    PassManager(build_passes(spec), context=PassContext(samples=rows, samples_source="training rows") if rows else None).run(out)
    return out


def _staged(model, steps: list[str], x_train, epochs: int, lr: float):
    """Deep Compression's order: each lossy step, then recovery, before the next step (so a
    quantizer calibrates on the recovered model). Returns the model and the training seconds."""
    seconds = 0.0
    for spec in steps:
        model = _compressed(model, spec, x_train[:64])
        if spec.startswith(("prune", "quantize", "share")):
            result = gp.recover(model, _staged.teacher, {"x": x_train}, epochs=epochs, lr=lr, seed=0)
            model, seconds = result.model, seconds + result.seconds
    return model, round(seconds, 2)


def _top1(model, x, y) -> float:
    out = run_samples(model, [{model.graph.inputs[0].name: x}])[model.graph.outputs[0].name]
    return accuracy(np.asarray(out).reshape(len(x), -1), y)


def _row(rows, **row):
    rows.append(row)
    print(json.dumps(row), flush=True)


def digits(rows, epochs: int) -> None:
    module, data = train_digits_cnn(epochs=8)
    module.eval()
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    fp32 = _top1(model, data.x_test, data.y_test)
    onnx_bytes, _ = _disk_bytes(model, False)
    _row(rows, part="digits", variant="fp32", top1=round(fp32, 4), onnx_bytes=onnx_bytes)
    _staged.teacher = model
    for name, steps, packed in [
        ("structured 70% + int8", [LOSSLESS, "prune:ratio=0.7", "quantize:mode=static"], False),
        ("unstructured 95% + share 8, packed", [LOSSLESS, "prune:mode=unstructured;scope=global;ratio=0.95", "share:clusters=8"], True),
    ]:
        one_shot = _compressed(model, ",".join(steps), data.x_train[:64])
        recovered, seconds = _staged(model, steps, data.x_train, epochs, 3e-3)
        for label, m, train_s in (("one-shot", one_shot, None), ("recovered after each step", recovered, seconds)):
            size, packed_size = _disk_bytes(m, packed)
            top1 = _top1(m, data.x_test, data.y_test)
            _row(rows, part="digits", variant=f"{name}, {label}", top1=round(top1, 4), drop_pt=round(100 * (fp32 - top1), 2),
                 onnx_bytes=size, packed_bytes=packed_size, smaller=round(onnx_bytes / (packed_size or size), 1), train_s=train_s)  # fmt: skip


def minilm(rows, sentences: int, ffn_epochs: int, only: tuple[str, ...] = (), packed: int = 3000, more: int = 0, block_epochs: int = 5, ffn_lr: float = 3e-4, ffn_prune: str = "prune:ratio=0.5;include=intermediate", save: str | None = None) -> None:
    from graphpress.models.minilm import load_minilm, tokenize
    from graphpress.passes.context import PassContext

    enc = load_minilm().eval()
    seq = 64
    everything = _text.corpus(sentences + more)
    texts = everything[:sentences]
    cut = len(texts) * 5 // 6
    # the FFN cut may also train on `more` sentences found after the benchmark's own (other
    # modules' docstrings: disjoint from the held-out sixth, which stays the same)
    beyond = everything[sentences:]
    example = tuple(tokenize(texts[:2], seq_len=seq).values())
    model = gp.load(enc, example, dynamic_batch=True)
    names = [v.name for v in model.graph.inputs]
    train = {n: v.numpy() for n, v in zip(names, tokenize(texts[:cut], seq_len=seq).values())}
    calibration = [{n: a[i : i + 1] for n, a in train.items()} for i in range(32)]

    def embeddings(m):
        return _text.embed(lambda feeds: np.asarray(run_samples(m, [feeds])[m.graph.outputs[0].name]), names, texts[cut:], seq_len=seq)

    ref = embeddings(model)
    # (static QDQ int8 of MiniLM is not here: that graph is fragile -- one flipped rounding of one
    # element of 24,576 in a quantized tensor moves the output to cosine 0.92 on some sentences,
    # one-shot cosine 0.83 -- so the trained student and its write-back in ONNX Runtime differ
    # (cosine 0.987) and recover refuses it)
    # the FFN cut trains longer, at a higher rate, with each layer's output matched to the
    # teacher's (the LayerNorm closing each of the 6 layers: the cut leaves their width alone) at
    # the real tokens (feature_mask), that term weighted 100x, the word embeddings frozen, and
    # `packed` more rows of three training sentences joined (new contexts for the same words)
    layer_outputs = [n.outputs[0].name for n in model.graph if n.op_type == "LayerNormalization"][2::2]
    judge = 150  # recover's own held-out rows (choosing the epoch kept): the last single sentences
    rng = np.random.default_rng(0)
    joined = [" ".join(texts[j] for j in rng.choice(cut - judge, 3, replace=False)) for _ in range(packed)]
    extra = {n: v.numpy() for n, v in zip(names, tokenize(joined, seq_len=seq).values())} if packed else {n: a[:0] for n, a in train.items()}
    further = {n: v.numpy() for n, v in zip(names, tokenize(beyond, seq_len=seq).values())} if beyond else {n: a[:0] for n, a in train.items()}
    ffn_train = {n: np.concatenate([extra[n], further[n], a]) for n, a in train.items()}
    ffn = {"features": {v: v for v in layer_outputs}, "feature_mask": "attention_mask", "feature_weight": 100.0, "freeze": ["embeddings"], "schedule": "cosine"}
    variants = [("int8 dynamic", f"{LOSSLESS},quantize:mode=dynamic", 2e-6, 1, train, {}),
                ("int8 dynamic, SmoothQuant 0.75", f"{LOSSLESS},quantize:mode=dynamic;smooth=0.75", 2e-6, 1, train, {}),
                ("int8 dynamic per-token, SmoothQuant 0.4", f"{LOSSLESS},quantize:mode=dynamic;activations=token;smooth=0.4", 1e-5, 1, train, {"schedule": "cosine"}),
                ("FFN 50% pruned", f"{LOSSLESS},{ffn_prune}", ffn_lr, ffn_epochs, ffn_train, ffn)]  # fmt: skip
    for name, spec, lr, epochs, data, extra_options in variants:
        if only and not any(o in name for o in only):
            continue
        one_shot = copy_model(model)
        PassManager(build_passes(spec), context=PassContext(samples=calibration, samples_source="training sentences")).run(one_shot)
        rows_n = len(next(iter(data.values())))
        stages = [("one-shot", one_shot, None)]
        start = one_shot
        if "features" in extra_options and block_epochs:
            # block-wise first: each layer's pruned FFN (LayerNorm to LayerNorm) trained alone on
            # the teacher's own inputs, one row per real token; then the whole model end to end
            # blocks="auto": the LayerNorm-to-LayerNorm spans the cut changed (the FFNs)
            staged = gp.recover_blocks(one_shot, model, data, "auto", mask="attention_mask", epochs=block_epochs, progress=print)
            start = staged.model
            stages.append(("block-wise", start, staged.seconds))
        result = gp.recover(start, model, data, epochs=epochs, lr=lr, batch_size=16, seed=0, held_out=judge / rows_n if "features" in extra_options else 0.1, progress=print, **extra_options)
        stages.append(("recovered" if len(stages) == 1 else "block-wise, then end to end", result.model, result.seconds + sum(s for _, _, s in stages[1:])))
        for label, m, seconds in stages:
            if save:  # each stage's model, to go on from (e.g. more epochs end to end)
                gp.save(m, os.path.join(save, f"minilm-{name}-{label}.onnx".replace(" ", "_").replace(",", "").replace("%", "pct")))
            score = _text.agreement(embeddings(m), ref)
            params = sum(v.const_value.size for v in m.graph.initializers.values() if v.const_value is not None)
            _row(rows, part="minilm", variant=f"{name}, {label}", **{k: round(v, 5) for k, v in score.items()}, train_s=seconds, params=params,
                 epochs=epochs if seconds is not None and label != "block-wise" else None, block_epochs=block_epochs if label.startswith("block") else None, train_sentences=cut, train_rows=rows_n, held_out_sentences=len(texts) - cut)  # fmt: skip


def resnet(rows, epochs: int, repeat: int) -> None:
    from graphpress.backends.tvm import compile_model
    from graphpress.models import resnet18

    data = digits_data(0)
    up = lambda x: torch.nn.functional.interpolate(torch.from_numpy(x).repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear").numpy()  # noqa: E731
    x_train, x_test = up(data.x_train), up(data.x_test)
    torch.manual_seed(0)
    net = resnet18(num_classes=10)
    t0 = time.perf_counter()
    fit(net, type(data)(x_train, data.y_train, x_test, data.y_test), epochs=12, lr=1e-3)
    net.eval()
    train_fp32_s = round(time.perf_counter() - t0, 1)
    model = gp.load(net, torch.from_numpy(x_test[:2]), dynamic_batch=True)
    fp32 = _top1(model, x_test, data.y_test)
    _row(rows, part="resnet18-digits32", variant="fp32", top1=round(fp32, 4), train_s=train_fp32_s)
    steps = [LOSSLESS, "prune:ratio=0.5", "quantize:mode=static"]
    _staged.teacher = model
    one_shot = _compressed(model, ",".join(steps), x_train[:64])
    recovered, seconds = _staged(model, steps, x_train, epochs, 1e-3)
    for label, m, train_s in (("one-shot", one_shot, None), ("recovered after each step", recovered, seconds)):
        top1 = _top1(m, x_test, data.y_test)
        _row(rows, part="resnet18-digits32", variant=f"prune 50% + int8, {label}", top1=round(top1, 4), drop_pt=round(100 * (fp32 - top1), 2), train_s=train_s)
    # speed: the recovered int8 artifact (batch 1) against ONNX Runtime's best int8 of the original
    import onnxruntime as ort

    single = gp.load(net, torch.from_numpy(x_test[:1]))
    artifact = compile_model(recovered, "x86", samples=[{"x": x_test[i : i + 1]} for i in range(8)])  # batch 1
    x1 = x_test[:1]
    art_top1 = accuracy(np.concatenate([artifact(x=x_test[i : i + 1])[0] for i in range(len(x_test))]), data.y_test)
    with tempfile.TemporaryDirectory() as tmp:
        path = onnxruntime_int8(single, [{"x": x_train[i : i + 1]} for i in range(32)], tmp)
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ort_top1 = accuracy(np.concatenate([sess.run(None, {"x": x_test[i : i + 1]})[0] for i in range(len(x_test))]), data.y_test)
        ms = blocked({"ORT best int8 (original)": lambda: sess.run(None, {"x": x1}), "graphpress TVM int8 (recovered)": lambda: artifact(x=x1)}, repeat)
    _row(rows, part="resnet18-digits32", variant="speed, batch 1", ort_int8_ms=round(ms["ORT best int8 (original)"], 3),
         tvm_int8_ms=round(ms["graphpress TVM int8 (recovered)"], 3), speedup=round(ms["ORT best int8 (original)"] / ms["graphpress TVM int8 (recovered)"], 2),
         ort_int8_top1=round(ort_top1, 4), tvm_int8_top1=round(art_top1, 4))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="digits,minilm,resnet")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=1800)
    parser.add_argument("--ffn-epochs", type=int, default=12, help="MiniLM FFN cut: epochs of recovery end to end (12 reach mean cosine 0.980; about 230 s each on 2 cores)")
    parser.add_argument("--ffn-packed", type=int, default=3000, help="MiniLM FFN cut: extra training rows of three training sentences joined")
    parser.add_argument("--ffn-more", type=int, default=10000, help="MiniLM FFN cut: extra training sentences from the docstrings after the benchmark's own (the held-out sentences stay the same)")
    parser.add_argument("--ffn-block-epochs", type=int, default=5, help="MiniLM FFN cut: epochs of block-wise distillation before end to end (0: none)")
    parser.add_argument("--ffn-lr", type=float, default=2e-4, help="MiniLM FFN cut: learning rate end to end")
    parser.add_argument("--ffn-prune", default="prune:ratio=0.5;include=intermediate", help="MiniLM FFN cut: the pruning step(s)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--minilm-variants", default="", help="comma-separated substrings: only the MiniLM variants naming one (default: all)")
    parser.add_argument("--save", help="a folder: each MiniLM stage's model is written there")
    parser.add_argument("--json")
    opts = parser.parse_args()
    print(banner())
    torch.set_num_threads(THREADS)
    rows: list[dict] = []
    parts = opts.parts.split(",")
    if "digits" in parts:
        digits(rows, opts.epochs)
    if "minilm" in parts:
        minilm(rows, opts.sentences, opts.ffn_epochs, tuple(v for v in opts.minilm_variants.split(",") if v), opts.ffn_packed, opts.ffn_more, opts.ffn_block_epochs, opts.ffn_lr, opts.ffn_prune, opts.save)
    if "resnet" in parts:
        resnet(rows, opts.epochs, opts.repeat)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
