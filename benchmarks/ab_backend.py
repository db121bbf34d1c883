"""A/B of the TVM backend between two checkouts of graphpress, on one machine in one run.

``python benchmarks/ab_backend.py --before /path/to/old/checkout [--after .] [--work DIR]``

1. The models (ResNet-18 and MobileNetV2 static QDQ, MiniLM dynamic MatMul, and their fp32
   forms) are built once, with this checkout.
2. Each checkout compiles all six for x86 into artifacts (``int8_guard=False``: timing noise
   cannot change which layers are integer), in its own process (``PYTHONPATH`` = the checkout).
3. One process loads all twelve artifacts and times them interleaved (before/after alternating,
   5 rounds of 20 runs for int8, 2 of 3 for fp32; the median of the round medians), and checks
   the two sides' outputs are bit-identical.

Used for the issue-14 closing note (the backend split had to change no generated code).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _machine import banner
from _models import SPEED_MODELS, speed_model

MODELS = SPEED_MODELS


def make(root: Path) -> None:
    import graphpress as gp
    from graphpress.ir.numeric import make_inputs
    from graphpress.passes import PassManager, build_passes
    from graphpress.passes.context import PassContext

    (root / "models").mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        model, args = speed_model(name)
        gp.save(model, root / "models" / f"{name}-fp32.onnx")
        np.savez(root / "models" / f"{name}.npz", **{i.name: a.numpy() for i, a in zip(model.graph.inputs, args)})
        if name == "minilm":
            spec, ctx = "quantize:mode=dynamic;ops=MatMul", PassContext()
        else:
            spec, ctx = "quantize:mode=static", PassContext(samples=[make_inputs(model, seed=i) for i in range(8)])
        PassManager(build_passes(spec), context=ctx).run(model)
        gp.save(model, root / "models" / f"{name}-int8.onnx")


def compile_all(root: Path, side: str) -> None:
    import graphpress as gp
    from graphpress.backends.tvm import compile_model

    (root / "art").mkdir(parents=True, exist_ok=True)
    out = {}
    for name in MODELS:
        for variant in ("fp32", "int8"):
            model = gp.load(root / "models" / f"{name}-{variant}.onnx")
            start = time.perf_counter()
            compiled = compile_model(model, "x86", int8_guard=False)
            seconds = time.perf_counter() - start
            compiled.save(root / "art" / f"{side}-{name}-{variant}")
            build = compiled.meta["build"]
            i8 = build.get("int8", {})
            out[f"{name}-{variant}"] = {"compile_s": round(seconds, 1), "kernels": len(build.get("kernel_names", [])),
                                        "unscheduled": len(build.get("unscheduled_kernels", [])), "lowered": i8.get("lowered"),
                                        "zmm_vpdpbusd": i8.get("zmm_vpdpbusd")}  # fmt: skip
            print(side, name, variant, out[f"{name}-{variant}"], flush=True)
    (root / f"compile-{side}.json").write_text(json.dumps(out, indent=1))


def time_all(root: Path) -> None:
    from graphpress.backends.tvm.runtime import load

    print("| model | variant | before ms | after ms | after/before | outputs bit-identical |")
    print("|---|---|---:|---:|---:|---|")
    for name in MODELS:
        with np.load(root / "models" / f"{name}.npz") as data:
            feeds = {k: data[k] for k in data.files}
        for variant in ("fp32", "int8"):
            arts = {side: load(root / "art" / f"{side}-{name}-{variant}") for side in ("before", "after")}
            outs = {side: a.run_named(**feeds) for side, a in arts.items()}
            same = all(np.array_equal(outs["before"][k], outs["after"][k]) for k in outs["before"])
            medians: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(5 if variant == "int8" else 2):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    medians[side].append(arts[side].benchmark(**feeds, repeat=20 if variant == "int8" else 3, warmup=2)["median_ms"])
            b, a = float(np.median(medians["before"])), float(np.median(medians["after"]))
            print(f"| {name} | {variant} | {b:.2f} | {a:.2f} | {a / b:.3f} | {'yes' if same else 'no'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the old checkout (a git worktree); required")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1]), help="the new checkout (default: this one)")
    parser.add_argument("--work", default="ab-work", help="models, artifacts and results go here")
    parser.add_argument("--phase", choices=("all", "compile"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.work).resolve()
    if args.phase == "compile":
        compile_all(root, args.side)
        return
    if not args.before:
        parser.error("--before (the old checkout) is required")
    print(banner(), flush=True)
    if not all((root / "models" / f"{name}-{variant}.onnx").is_file() for name in MODELS for variant in ("fp32", "int8")):
        make(root)
    for side, checkout in (("before", args.before), ("after", args.after)):
        env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
        subprocess.run([sys.executable, __file__, "--phase", "compile", "--side", side, "--work", str(root)], env=env, check=True,
                       cwd=Path(checkout).resolve())  # fmt: skip
    time_all(root)


if __name__ == "__main__":
    main()
