#!/usr/bin/env python3
"""The int8 kernels over a grid of small quantized models, on every x86 path this host runs,
on one TVM thread and on two.

The test workers run TVM on one thread each, so a schedule's parallel loops (each iteration with
a C tile of its own) never run over the cores in CI but here. Each model -- a 3x3 convolution,
ReLU, a 1x1 convolution (maps of 1x1 to 9x4 pixels, 3 to 20 channels in, 8 to 72 out, strides
1 and 2); an inverted residual with a depthwise layer; a squeeze-and-excitation block
(PP-OCR's MobileNetV3: a 1x1 map, 88 channels); a two-layer MLP of 1 to 33 rows -- is quantized
static (graphpress's ``quantize:mode=static``, 8 calibration samples); a transformer's
feed-forward layer (LayerNorm, up-projection, GELU, down-projection, residual) and three
projections of one activation, 1 to 128 rows, are quantized at run time (``mode=dynamic``, per
tensor; ``activations=token``; and per token with SmoothQuant, ``smooth=0.5``). Each is built
with every layer on the path's integer kernels (``int8="on"``, guard off) and run on three
inputs; on the AVX2 path also quantized for it (7-bit weights, the ``vpmaddubsw`` kernels). It
fails when an output differs between one and two threads by a single bit, or from ONNX
Runtime running the same quantized model (op by op) by more than ``--max-steps`` percent of the
output's range or below cosine 0.999.

    .venv/bin/python fuzz/int8_threads.py [--paths amx,avx2] [--only NAME] [--max-steps 5]

Run on the 2-core AMD EPYC Zen 4 (2026-12-04): 204 builds (102 models on the AVX2 and AVX-512
VNNI paths), all bit-identical on one and two threads, 170 bit-identical to ONNX Runtime, the
others within 2 % of the output range (squeeze-and-excitation's hard sigmoid, a few steps).
On the 2-core Xeon of the Sapphire Rapids class (2026-12-06), the grid with the transformer layers
on the AMX, AVX-512 VNNI, AVX-VNNI and AVX2 paths: 630 builds (126 models), all bit-identical on
one and two threads, 427 bit-identical to ONNX Runtime, the farthest 2.0 % of the range; 21 min.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cases():
    """(name, torch module, input shape) of every model of the grid."""
    import torch

    nn = torch.nn

    class InvertedResidual(nn.Module):
        def __init__(self, c: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, 6 * c, 1), nn.ReLU6(), nn.Conv2d(6 * c, 6 * c, 3, stride, 1, groups=6 * c), nn.ReLU6(), nn.Conv2d(6 * c, c, 1))
            self.residual = stride == 1

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class SqueezeExcitation(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1), nn.Hardsigmoid())

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return y * self.gate(y)

    class TransformerMLP(nn.Module):
        """x + W2 GELU(W1 LayerNorm(x)), BERT's feed-forward layer."""

        def __init__(self, d: int):
            super().__init__()
            self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            return x + self.down(nn.functional.gelu(self.up(self.norm(x))))

    class Projections(nn.Module):
        """Three projections of one activation (one quantizer feeding three layers), two of them added."""

        def __init__(self, d: int):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 24)

        def forward(self, x):
            return torch.cat([torch.relu(self.q(x)) + self.k(x), self.v(x)], -1)

    out = []
    for (h, w), cin, cout, stride in itertools.product([(1, 1), (2, 3), (5, 5), (7, 7), (9, 4)], [3, 8, 20], [8, 24, 72], [1, 2]):
        if (h, w) != (1, 1) or stride == 1:
            chain = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(), nn.Conv2d(cout, 24, 1), nn.ReLU())
            out.append((f"chain {h}x{w} {cin}->{cout} s{stride}", chain, (1, cin, h, w)))
    for (h, w), c, stride in itertools.product([(1, 1), (3, 3), (7, 7)], [8, 16], [1, 2]):
        out.append((f"inverted residual {h}x{w} c{c} s{stride}", InvertedResidual(c, stride), (1, c, h, w)))
    for (h, w), c in itertools.product([(1, 1), (4, 4), (7, 7)], [16, 88]):
        out.append((f"squeeze-excitation {h}x{w} c{c}", SqueezeExcitation(c), (1, c, h, w)))
    for rows in (1, 7, 33):
        out.append((f"mlp rows {rows}", nn.Sequential(nn.Linear(40, 72), nn.ReLU(), nn.Linear(72, 17)), (1, rows, 40)))
    out = [(name, module, shape, "static") for name, module, shape in out]
    # transformer layers quantized at run time (the dynamic recipes' write-backs: a residual
    # addition, GELU, the per-token rows' zero points and scales)
    for (rows, d), recipe in itertools.product([(1, 32), (7, 40), (33, 64), (128, 32)], ["dynamic", "token", "token smooth"]):
        out.append((f"transformer mlp rows {rows} d{d} {recipe}", TransformerMLP(d), (1, rows, d), recipe))
        out.append((f"projections rows {rows} d{d} {recipe}", Projections(d), (1, rows, d), recipe))
    return out


#: the quantize pass of each recipe (dynamic: MatMul layers, as for transformers)
RECIPES = {
    "static": "quantize:mode=static",
    "dynamic": "quantize:mode=dynamic;ops=MatMul",
    "token": "quantize:mode=dynamic;ops=MatMul;activations=token",
    "token smooth": "quantize:mode=dynamic;ops=MatMul;activations=token;smooth=0.5",
}


def run_grid(out: str, paths: list[str], only: str | None) -> None:
    """Worker (one TVM thread count, from the environment): every model's outputs on every path,
    and ONNX Runtime's, into the npz ``out``."""
    import torch

    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.targets import resolve_target, target_facts
    from graphpress.ir import numeric
    from graphpress.ir.io import clone
    from graphpress.passes import PassManager, build_passes
    from graphpress.passes.context import PassContext

    def normal(shape, seed):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    results = {}
    for i, (name, module, shape, recipe) in enumerate(cases()):
        if only and only not in name:
            continue
        torch.manual_seed(i)
        for p in module.parameters():
            p.data = torch.randn_like(p) * 0.3
        given = gp.load(module.eval(), normal(shape, 100 + i))
        feed_name = given.graph.inputs[0].name
        PassManager(build_passes("cleanup,fuse")).run(given)
        calibration = [{feed_name: normal(shape, 200 + 10 * i + k).numpy()} for k in range(8)]
        feeds = [normal(shape, 300 + 10 * i + k).numpy() for k in range(3)]
        # quantized for any target (8-bit weights: the exact int16 kernel on AVX2) on every path,
        # and for the AVX2 path (7-bit weights, its vpmaddubsw kernels) on that path
        builds = [("", None, paths)] + ([(" for avx2", "avx2", ["avx2"])] if "avx2" in paths else [])
        for label, quantized_for, on in builds:
            model = clone(given)
            facts = target_facts(resolve_target(f"x86:{quantized_for}")) if quantized_for else None
            PassManager(build_passes(RECIPES[recipe]), context=PassContext(samples=calibration, target=facts)).run(model)
            key = f"{name}{label}"
            results[f"{key} | onnxruntime"] = np.stack([next(iter(numeric.run(model, {feed_name: f}).values())) for f in feeds])
            for path in on:
                compiled = compile_model(model, f"x86:{path}", int8="on", int8_guard=False, measure=False, verify=False)
                results[f"{key} | {path}"] = np.stack([next(iter(compiled.run_named(**{feed_name: f}).values())) for f in feeds])
                print(f"built {key} on {path}: {compiled.meta['build']['int8']['lowered']} integer layers", flush=True)
    np.savez(out, **results)


def tally(one: dict[str, np.ndarray], two: dict[str, np.ndarray], max_steps: float) -> dict:
    """Every build's outputs (``"MODEL | PATH"``) on one TVM thread (``one``) and on two
    (``two``) against each other, bit for bit, and against ONNX Runtime's (``"MODEL |
    onnxruntime"``, in ``one``): within ``max_steps`` percent of its range and at cosine 0.999.
    Returns the number of builds, the failures (a line each), how many match ONNX Runtime bit for
    bit and the farthest from it (percent of the range, key)."""
    failed, same_as_ort, total, farthest = [], 0, 0, (0.0, "")
    for key in sorted(one):
        name, path = key.rsplit(" | ", 1)
        if path == "onnxruntime":
            continue
        total += 1
        ref, got = one[f"{name} | onnxruntime"], one[key]
        spread = float(np.ptp(ref)) or 1.0
        worst = float(np.abs(got - ref).max()) / spread * 100
        norms = np.linalg.norm(got) * np.linalg.norm(ref)
        cosine = float(got.ravel() @ ref.ravel() / norms) if norms else float(np.array_equal(got, ref))
        same_as_ort += bool(np.array_equal(got, ref))
        farthest = max(farthest, (worst, key))
        if key not in two:
            failed.append(f"{key}: one and two threads differ (no output on two)")
        elif got.shape != two[key].shape:
            failed.append(f"{key}: one and two threads differ in shape ({got.shape} against {two[key].shape})")
        elif not np.array_equal(got, two[key]):
            failed.append(f"{key}: one and two threads differ by up to {np.abs(got - two[key]).max():.4g}")
        elif worst > max_steps or cosine < 0.999:
            failed.append(f"{key}: {worst:.2f} % of the output's range from ONNX Runtime, cosine {cosine:.5f}")
    return {"builds": total, "failed": failed, "same_as_onnxruntime": same_as_ort, "farthest": farthest}


def main(argv: list[str] | None = None) -> int:
    from graphpress.backends.tvm.targets import host_x86_paths

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default=",".join(p for p in ("amx", "avx512_vnni", "avx2_vnni", "avx2") if p in host_x86_paths()), help="x86 paths to build for (default: the host's)")
    ap.add_argument("--only", help="only the models whose name contains this")
    ap.add_argument("--max-steps", type=float, default=5.0, help="largest difference from ONNX Runtime, in percent of the output's range")
    ap.add_argument("--worker", nargs=2, metavar=("OUT", "PATHS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_grid(args.worker[0], args.worker[1].split(","), args.only)
        return 0
    paths = [p for p in args.paths.split(",") if p]
    if not paths:
        print("this host runs none of the x86 int8 paths", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for threads in (1, 2):
            out = os.path.join(tmp, f"t{threads}.npz")
            cmd = [sys.executable, __file__, "--worker", out, ",".join(paths), *(["--only", args.only] if args.only else [])]
            env = {**os.environ, "TVM_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
            print(f"== {threads} TVM thread(s)", flush=True)
            subprocess.run(cmd, env=env, check=True)
            outs[threads] = dict(np.load(out))
    result = tally(outs[1], outs[2], args.max_steps)
    failed = result["failed"]
    print(f"{result['builds']} builds on {', '.join(paths)}: {result['builds'] - len(failed)} agree (bit-identical on one and two threads, "
          f"{result['same_as_onnxruntime']} bit-identical to ONNX Runtime)")  # fmt: skip
    worst, key = result["farthest"]
    print(f"farthest from ONNX Runtime: {key}, {worst:.3f} % of its output's range")
    for line in failed:
        print("FAILED", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
