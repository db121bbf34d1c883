"""Quantization: accuracy and ONNX Runtime speed of graphpress's ``quantize`` against ONNX
Runtime's own quantization recipes, in one run.

Accuracy:

* the digits CNN trained in-run on scikit-learn's ``load_digits``: top-1 of fp32, graphpress
  static QDQ (calibrated on 256 training images), ORT ``quantize_static`` default (S8S8) and
  ORT ``quantize_static`` U8S8 per-channel;
* all-MiniLM-L6-v2 (real weights) on ``--sentences`` real sentences (first lines of docstrings of
  Python's standard library): mean cosine of the embeddings to fp32 and nearest-neighbour
  agreement (each sentence's most similar other sentence is the same), for graphpress
  ``dynamic`` on MatMuls, the same with the accuracy control (its metric: the lowest cosine on 64
  other sentences), ORT ``quantize_dynamic`` default (all supported ops) and MatMul-only.

Speed (2 threads, batch 1, ``ORT_ENABLE_ALL``, median of ``--repeat``; every engine keeps its
default thread spinning and runs in blocks with a pause between them): ResNet-18 and
MobileNetV2 at 224² (random weights, calibrated on 8 random images: speed only) and MiniLM at
seq 128; ORT fp32, ORT's default and best int8 recipes, ORT running graphpress's model, and
graphpress-tvm fp32 and int8 (``--no-tvm`` skips those) on every x86 ISA path this host runs,
and graphpress-tvm on ONNX Runtime's best int8 file itself (the same work as that row)
(``--paths``; default: the int8 paths ``amx``, ``avx512_vnni``, ``avx2_vnni``, ``avx2`` and the
fp32 paths ``avx512``, ``avx2`` the host has; and the model quantized for the AVX2 target, with
7-bit weights, on its ``vpmaddubsw`` kernel); MiniLM's accurate recipe (per-token activations +
SmoothQuant 0.4) on the best path, and where that path has no int8 dot product (``--ort-isa
avx2``) quantized for it too. ONNX Runtime picks its own kernels from the
host's CPUID (no switch selects them): its rows are the best code it has here, so an AVX2
row is the AVX2 code against ORT's best, not against ORT on an AVX2 machine. ``--ort-isa avx2``
(or ``avx2_vnni``, ``avx512_vnni``) runs every ORT row on a copy of ONNX Runtime that picks its
kernels as on a CPU without AVX-512 (and without AVX-VNNI; or, ``avx512_vnni``, only without
AMX), see ``_ort_isa``; the TVM rows then default to the paths that CPU has, so that each row is
measured against the ORT that CPU's user runs.

Every int8 row with a kernel of its own (graphpress-tvm int8, ORT's best int8) also shows its
GOP/s (two per product of the fp32 model's convolutions and matrix products, over its time) and
their share of the measured peak of the instruction mix its kernels step with
(``_machine.measured_int8_peak_gops``, printed first): ``avx2_pairs`` for ORT's AVX2 u8s8
kernels and graphpress's pairs and int16 kernels, ``avx2_quads`` for the model quantized for the
AVX2 target, ``zmm_vnni``/``ymm_vnni`` for ``vpdpbusd``. The ratio of two mixes' peaks is the
most one kernel can be ahead of another at equal efficiency. On the AVX2 paths the 3x3 stride-1
convolutions run as an integer Winograd F(2,3), 2.25x fewer products than counted: those rows'
GOP/s are effective and their share can pass 100 %.

Usage::

    python benchmarks/quantization.py [--repeat 30] [--sentences 300] [--paths avx512_vnni,avx2]
    python benchmarks/quantization.py --speed-only --ort-isa avx2
"""

from __future__ import annotations

from _machine import banner, measured_int8_peak_gops
from _models import SPEED_MODELS, speed_model
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# before TVM loads: the same two threads as ORT and torch. Every engine keeps its default (best)
# thread-pool spinning; the engines are timed in blocks with a pause between them (_timing.blocked)
os.environ.setdefault("TVM_NUM_THREADS", "2")

import _ort_isa

# before onnxruntime is imported: --ort-isa runs ORT's kernels for a CPU without AVX-512
ORT_ISA = _ort_isa.install_from_argv()

import _text
import numpy as np
import onnxruntime as ort
import torch
from _timing import blocked
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import graphpress as gp
from graphpress.ir.io import to_proto
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext

THREADS = 2


class _Reader:
    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _graphpress(model, spec: str, calibration=None, target=None):
    copy = gp.load(to_proto(model))
    stats = PassManager(build_passes(spec), context=PassContext(samples=calibration, target=target)).run(copy).records[0].stats
    return copy, stats


def _ort_static(src: Path, dst: Path, calibration, scheme: str) -> None:
    if scheme == "default":  # ORT's defaults: QDQ, S8S8, per-tensor
        quantize_static(str(src), str(dst), _Reader(calibration))
    else:  # ORT's best x86 recipe: U8S8, per-channel weights
        quantize_static(
            str(src), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip


def digits(workdir: Path) -> dict:
    from graphpress.ir.numeric import run
    from graphpress.models.cnn import accuracy, train_digits_cnn

    module, data = train_digits_cnn(epochs=8)
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    name = model.graph.inputs[0].name
    calibration = [{name: data.x_train[i : i + 32]} for i in range(0, 256, 32)]
    src = gp.save(model, workdir / "digits.onnx")
    results = {"fp32": accuracy(next(iter(run(model, {name: data.x_test}).values())), data.y_test)}
    q, stats = _graphpress(model, "quantize:mode=static", calibration)
    results["graphpress static"] = accuracy(next(iter(run(q, {name: data.x_test}).values())), data.y_test)
    for scheme in ("default", "u8s8"):
        dst = workdir / f"digits-ort-{scheme}.onnx"
        _ort_static(src, dst, calibration, scheme)
        results[f"ORT static {scheme}"] = accuracy(_session(dst).run(None, {name: data.x_test})[0], data.y_test)
    print(json.dumps({"digits": results}), flush=True)
    return results


def minilm_accuracy(workdir: Path, n: int) -> dict:
    from graphpress.models.minilm import load_minilm, tokenize

    sentences = _text.sentences(n + 64)
    sentences, held_out = sentences[:n], sentences[n:]  # the accuracy control's metric never sees the evaluation set
    module = load_minilm().eval()
    toks = tokenize(sentences[:2], seq_len=64)
    model = gp.load(module, tuple(toks.values()), dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(model)
    src = gp.save(model, workdir / "minilm.onnx")
    names = [i.name for i in model.graph.inputs]

    def embed_with(m, texts):
        sess = ort.InferenceSession(to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
        return _text.embed(lambda feeds: sess.run(None, feeds)[0], names, texts)

    reference = embed_with(model, held_out)

    def min_cosine(m) -> float:  # the accuracy control's metric: lowest cosine on held-out sentences
        return float((embed_with(m, held_out) * reference).sum(1).min())

    q, _ = _graphpress(model, "quantize:mode=dynamic;ops=MatMul")
    paths = {"fp32": src, "graphpress dynamic (MatMul)": gp.save(q, workdir / "minilm-gp-dynamic.onnx")}
    spec = "quantize:mode=dynamic;ops=MatMul;tolerance=0.004;max_fallback=16"
    controlled = gp.load(src)
    stats = PassManager(build_passes(spec), context=PassContext(metric=min_cosine)).run(controlled).records[0].stats
    paths[f"graphpress dynamic (MatMul), accuracy control ({stats['fallback_layers']} layers fp32)"] = gp.save(controlled, workdir / "minilm-gp-controlled.onnx")
    # SmoothQuant: activation ranges from the 64 held-out sentences (never the evaluation set)
    calibration = []
    for i in range(0, len(held_out), 8):
        t = tokenize(held_out[i : i + 8], seq_len=64)
        calibration.append(dict(zip(names, [v.numpy() for v in t.values()])))
    for alpha in (0.5, 0.75):
        smoothed = gp.load(src)
        PassManager(build_passes(f"quantize:mode=dynamic;ops=MatMul;smooth={alpha}"), context=PassContext(samples=calibration)).run(smoothed)
        paths[f"graphpress dynamic (MatMul), SmoothQuant alpha {alpha}"] = gp.save(smoothed, workdir / f"minilm-gp-smooth{alpha}.onnx")
    for alpha in (0, 0.4, 0.5):
        tok = gp.load(src)
        PassManager(build_passes(PER_TOKEN + (f";smooth={alpha}" if alpha else "")), context=PassContext(samples=calibration)).run(tok)
        paths["graphpress dynamic per-token (MatMul)" + (f", SmoothQuant alpha {alpha}" if alpha else "")] = gp.save(tok, workdir / f"minilm-gp-token{alpha}.onnx")
    both = gp.load(src)
    stats = PassManager(build_passes(spec + ";smooth=0.75"), context=PassContext(samples=calibration, metric=min_cosine)).run(both).records[0].stats
    paths[f"graphpress dynamic (MatMul), SmoothQuant 0.75 + accuracy control ({stats['fallback_layers']} layers fp32)"] = gp.save(both, workdir / "minilm-gp-smooth-controlled.onnx")
    for key, kwargs in (("ORT quantize_dynamic (default)", {}), ("ORT quantize_dynamic MatMul-only", {"op_types_to_quantize": ["MatMul"]})):
        dst = workdir / f"minilm-ort-{len(paths)}.onnx"
        quantize_dynamic(str(src), str(dst), **kwargs)
        paths[key] = dst
    embed = {key: _text.embed(lambda feeds, s=_session(path): s.run(None, feeds)[0], names, sentences) for key, path in paths.items()}
    results = {"sentences": len(sentences)}
    for key, e in embed.items():
        if key != "fp32":
            results[key] = _text.agreement(e, embed["fp32"])
    print(json.dumps({"minilm": results}), flush=True)
    return results


#: per-token dynamic int8 of the MatMuls (``activations=token``)
PER_TOKEN = "quantize:mode=dynamic;ops=MatMul;activations=token"

#: the x86 paths with int8 kernels of their own (``avx512`` without VNNI runs AVX2's) and the fp32 ones
INT8_PATHS = ("amx", "avx512_vnni", "avx2_vnni", "avx2")

#: the x86 paths a CPU of each ``--ort-isa`` emulation has (the TVM rows' default under it)
EMULATED_PATHS = {"avx512_vnni": ("avx512_vnni", "avx512"), "avx2_vnni": ("avx2_vnni", "avx2"), "avx2": ("avx2",)}
FP32_PATHS = ("avx512", "avx2")

#: the int8 instruction mix (``_machine.INT8_MIXES``) whose measured peak each TVM int8 row is
#: compared with: the innermost step of the kernel its layers take on that path
TVM_MIX = {"avx512_vnni": "zmm_vnni", "avx2_vnni": ("ymm_avx_vnni", "ymm_vnni"), "avx2": "avx2_pairs", "avx2, quantized for it": "avx2_quads"}

#: ONNX Runtime's int8 mix under each ``--ort-isa`` (None: the host's kernels)
ORT_MIX = {"avx2": "avx2_pairs", "avx2_vnni": ("ymm_avx_vnni", "ymm_vnni"), "avx512_vnni": "zmm_vnni", None: ("zmm_vnni", "ymm_avx_vnni", "avx2_pairs")}


def int8_peaks(mixes) -> dict:
    """Measured peak GOP/s of each int8 instruction mix in ``mixes`` (a name, or a tuple of names:
    the first the host runs) on :data:`THREADS` cores: ``{as given: (mix measured, GOP/s)}``,
    without those the host runs none of."""
    measured: dict[str, float | None] = {}  # each mix measured once
    peaks = {}
    for want in mixes:
        for mix in (want,) if isinstance(want, str) else want:
            if mix not in measured:
                measured[mix] = measured_int8_peak_gops(mix, THREADS)
            if measured[mix] is not None:
                peaks[want] = (mix, measured[mix])
                break
    return peaks


def _mix_of(key: str) -> str | tuple | None:
    """The instruction mix of a speed row's int8 kernels (None: not an int8 row with one)."""
    if key.startswith("graphpress-tvm int8 ["):
        return TVM_MIX.get(key[len("graphpress-tvm int8 ["):].rstrip("]"))
    if key.startswith("graphpress-tvm int8 of ORT's best file ["):  # its 8-bit weights: the int16 kernel on AVX2
        return TVM_MIX.get(key.rsplit("[", 1)[1].rstrip("]"))
    if key.startswith("ORT static U8S8") or key.startswith("ORT dynamic MatMul-only"):
        from graphpress.backends.tvm.targets import host_x86_paths

        # on an AMX host ONNX Runtime's own kernels may use the tiles: no mix here to compare with
        return None if ORT_ISA is None and "amx" in host_x86_paths() else ORT_MIX[ORT_ISA]
    return None


def _tvm_targets(paths: list[str]) -> list[tuple[str, str, str]]:
    """(row label, target, int8 mode) for each requested path: fp32 builds of the fp32 paths, int8
    builds of the int8 ones."""
    rows = [(f"graphpress-tvm fp32 [{p}]", f"x86:{p}", "off") for p in paths if p in FP32_PATHS]
    rows += [(f"graphpress-tvm int8 [{p}]", f"x86:{p}", "auto") for p in paths if p in INT8_PATHS]
    # quantized for the AVX2 target itself: 7-bit weights (reduce_range), the vpmaddubsw kernel
    return rows + [(f"graphpress-tvm int8 [{p}, quantized for it]", f"x86:{p}", "auto") for p in paths if p == "avx2"]


def speed(workdir: Path, repeat: int, tvm: bool = True, isa_paths: list[str] | None = None, models: tuple[str, ...] = SPEED_MODELS) -> list[dict]:
    from graphpress.backends.tvm.targets import host_x86_paths
    from graphpress.ir.numeric import make_inputs

    if isa_paths is None:
        isa_paths = [p for p in host_x86_paths() if ORT_ISA is None or p in EMULATED_PATHS[ORT_ISA]]

    labels = [key for key, _, _ in _tvm_targets(isa_paths)] if tvm else []
    peaks = int8_peaks({m for m in map(_mix_of, [*labels, "ORT static U8S8 per-channel (best)"]) if m is not None})
    print(f"measured int8 peaks, {THREADS} cores: " + ", ".join(sorted(f"{mix} {gops:.0f} GOP/s" for mix, gops in set(peaks.values()))), flush=True)
    rows = []
    for name in models:
        model, args = speed_model(name)
        macs = gp.summarize(model).macs
        feeds = {i.name: a.numpy() for i, a in zip(model.graph.inputs, args)}
        src = gp.save(model, workdir / f"{name}.onnx")
        paths = {"ORT fp32": src}
        if name == "minilm":
            q, _ = _graphpress(model, "quantize:mode=dynamic;ops=MatMul")
            paths["graphpress dynamic MatMul"] = gp.save(q, workdir / f"{name}-gp.onnx")
            quantize_dynamic(str(src), str(workdir / f"{name}-ort-dyn.onnx"))
            paths["ORT quantize_dynamic default"] = workdir / f"{name}-ort-dyn.onnx"
            quantize_dynamic(str(src), str(workdir / f"{name}-ort-dyn-mm.onnx"), op_types_to_quantize=["MatMul"])
            paths["ORT dynamic MatMul-only (best)"] = workdir / f"{name}-ort-dyn-mm.onnx"
            # the accurate recipe: per-token activation grids after SmoothQuant (ranges from real sentences)
            from graphpress.models.minilm import tokenize

            seq = feeds[model.graph.inputs[0].name].shape[1]
            texts = _text.sentences(16)
            cal = [dict(zip(feeds, [v.numpy() for v in tokenize(texts[i : i + 1], seq_len=seq).values()])) for i in range(len(texts))]
            tok, _ = _graphpress(model, f"{PER_TOKEN};smooth=0.4", cal)
            paths["graphpress dynamic per-token, SmoothQuant 0.4"] = gp.save(tok, workdir / f"{name}-gp-token.onnx")
        else:
            calibration = [make_inputs(model, seed=i) for i in range(8)]
            q, _ = _graphpress(model, "quantize:mode=static", calibration)
            paths["graphpress static QDQ"] = gp.save(q, workdir / f"{name}-gp.onnx")
            for scheme, label in (("default", "ORT static default (S8S8)"), ("u8s8", "ORT static U8S8 per-channel (best)")):
                dst = workdir / f"{name}-ort-{scheme}.onnx"
                _ort_static(src, dst, calibration, scheme)
                paths[label] = dst
        sessions = {k: _session(p) for k, p in paths.items()}
        ref = sessions["ORT fp32"].run(None, feeds)[0]
        runs = {k: (lambda s=s: s.run(None, feeds)[0]) for k, s in sessions.items()}
        extra = {}
        if tvm:
            from graphpress.backends.tvm import compile_model

            from graphpress.backends.tvm.targets import resolve_target, target_facts

            ours = gp.load(paths["graphpress dynamic MatMul" if name == "minilm" else "graphpress static QDQ"])
            for key, target, int8 in _tvm_targets(isa_paths):
                m = ours if int8 != "off" else model
                if "quantized for it" in key:
                    spec = "quantize:mode=dynamic;ops=MatMul" if name == "minilm" else "quantize:mode=static"
                    m, stats = _graphpress(model, spec, None if name == "minilm" else calibration, target_facts(resolve_target(target)))
                    assert stats["reduce_range"], stats
                t0 = time.perf_counter()
                compiled = compile_model(m, target, int8=int8)
                extra[key] = {"compile_s": round(time.perf_counter() - t0, 1)}
                runs[key] = lambda c=compiled: next(iter(c.run_named(**feeds).values()))
                build = compiled.meta["build"]
                extra[key]["unscheduled_kernels"] = len(build.get("unscheduled_kernels", []))
                if "int8" in build:
                    i8 = build["int8"]
                    extra[key].update({k: i8[k] for k in ("isa", "lowered", "kept_fp32") if k in i8})
                    extra[key].update({k: v for k, v in i8.get("instructions", {}).items() if v})
                    extra[key]["fp32_layers"] = len(i8.get("fp32_layers", []))
                    # agreement with ORT running the same quantized model
                    ort_q = sessions["graphpress dynamic MatMul" if name == "minilm" else "graphpress static QDQ"].run(None, feeds)[0]
                    extra[key]["max_abs_diff_vs_ort_same_model"] = float(np.abs(runs[key]() - ort_q).max())
            # the same work as ONNX Runtime's best int8 row: its own file, compiled (8-bit weights:
            # the int16 kernel on AVX2, where ONNX Runtime's u8s8 kernel saturates instead)
            best_file = gp.load(paths["ORT dynamic MatMul-only (best)" if name == "minilm" else "ORT static U8S8 per-channel (best)"])
            for p in [p for p in isa_paths if p in INT8_PATHS]:
                key = f"graphpress-tvm int8 of ORT's best file [{p}]"
                t0 = time.perf_counter()
                compiled = compile_model(best_file, f"x86:{p}", int8="auto")
                i8 = compiled.meta["build"].get("int8", {})
                extra[key] = {"compile_s": round(time.perf_counter() - t0, 1), **{k: i8[k] for k in ("lowered", "kept_fp32") if k in i8}}
                runs[key] = lambda c=compiled: next(iter(c.run_named(**feeds).values()))
            if name == "minilm":
                t0 = time.perf_counter()
                # the host's best int8 path, or under --ort-isa the best one of the emulated CPU
                best_path = "host ISA" if ORT_ISA is None else EMULATED_PATHS[ORT_ISA][0]
                target = "x86" if ORT_ISA is None else f"x86:{best_path}"
                compiled = compile_model(gp.load(paths["graphpress dynamic per-token, SmoothQuant 0.4"]), target, int8="auto")
                key = f"graphpress-tvm int8 per-token, SmoothQuant 0.4 [{best_path}]"
                extra[key] = {"compile_s": round(time.perf_counter() - t0, 1), "lowered": compiled.meta["build"].get("int8", {}).get("lowered")}
                runs[key] = lambda c=compiled: next(iter(c.run_named(**feeds).values()))
                facts = target_facts(resolve_target(target))
                if facts.int8_dot_product is False:
                    # a CPU without an int8 dot product (AVX2): the accurate recipe quantized for
                    # it too, 7-bit weights on the vpmaddubsw kernel as the row above it
                    t0 = time.perf_counter()
                    tok, stats = _graphpress(model, f"{PER_TOKEN};smooth=0.4", cal, facts)
                    assert stats["reduce_range"], stats
                    compiled = compile_model(tok, target, int8="auto")
                    key = f"graphpress-tvm int8 per-token, SmoothQuant 0.4 [{best_path}, quantized for it]"
                    extra[key] = {"compile_s": round(time.perf_counter() - t0, 1), "lowered": compiled.meta["build"].get("int8", {}).get("lowered")}
                    runs[key] = lambda c=compiled: next(iter(c.run_named(**feeds).values()))
        ms = blocked(runs, repeat, rounds=3)
        best = "ORT dynamic MatMul-only (best)" if name == "minilm" else "ORT static U8S8 per-channel (best)"
        for key in runs:
            if key.startswith("graphpress-tvm int8"):
                extra[key]["vs_ort_best_int8"] = round(ms[best] / ms[key], 3)  # on ORT's best file: the same work
        for key, fn in runs.items():
            out = fn()
            cos = float((out.ravel() @ ref.ravel()) / np.linalg.norm(out) / np.linalg.norm(ref))
            size = os.path.getsize(paths[key]) if key in paths else None
            if (peak := peaks.get(_mix_of(key))) is not None:  # the model's products over the time, against its kernels' peak
                gops = 2 * macs / ms[key] / 1e6
                extra.setdefault(key, {}).update({"GOP/s": round(gops), "of_peak": f"{100 * gops / peak[1]:.0f}% of {peak[0]}"})
            rows.append({"model": name, "variant": key, "ms": ms[key], "vs_fp32": ms["ORT fp32"] / ms[key], "cosine_to_fp32": cos,
                         "mb": size / 1e6 if size else None, **extra.get(key, {})})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--json")
    parser.add_argument("--no-tvm", action="store_true", help="ONNX Runtime rows only")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy runs")
    parser.add_argument("--models", default=",".join(SPEED_MODELS), help="comma-separated speed models (default: all)")
    parser.add_argument("--paths", help="comma-separated x86 ISA paths for the TVM rows (default: every path this host runs)")
    parser.add_argument("--ort-isa", choices=["host", *_ort_isa.EMULATIONS], default="host",
                        help="the kernels ONNX Runtime may pick: the host's (default), or those of a CPU without AMX (avx512_vnni), without AVX-512 (avx2_vnni) or without AVX-512 and AVX-VNNI (avx2)")  # fmt: skip
    args = parser.parse_args()
    print(banner(), flush=True)
    print(_ort_isa.describe(ORT_ISA), flush=True)
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        acc = {} if args.speed_only else digits(work)
        text = {"sentences": 0} if args.speed_only else minilm_accuracy(work, args.sentences)
        rows = speed(work, args.repeat, tvm=not args.no_tvm, isa_paths=args.paths.split(",") if args.paths else None, models=tuple(args.models.split(",")))
    print("\n| digits CNN | top-1 |\n| --- | ---: |")
    for k, v in acc.items():
        print(f"| {k} | {v:.4f} |")
    print(f"\n| MiniLM, {text['sentences']} stdlib docstring sentences | mean cosine | min cosine | NN agreement |\n| --- | ---: | ---: | ---: |")
    for k, v in text.items():
        if k != "sentences":
            print(f"| {k} | {v['mean_cosine']:.4f} | {v['min_cosine']:.4f} | {v['nn_agreement']:.3f} |")
    print("\n| model | variant | ms | speed-up vs ORT fp32 | cosine to fp32 | file MB | TVM int8 notes |\n| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        mb = f"{r['mb']:.1f}" if r.get("mb") else ""
        skip = {"model", "variant", "ms", "vs_fp32", "cosine_to_fp32", "mb"}
        notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
        print(f"| {r['model']} | {r['variant']} | {r['ms']:.2f} | {r['vs_fp32']:.2f}x | {r['cosine_to_fp32']:.4f} | {mb} | {notes} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"digits": acc, "minilm": text, "speed": rows}, indent=2))


if __name__ == "__main__":
    main()
