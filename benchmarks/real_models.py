"""Real ONNX models from PyPI wheels (benchmarks/_real.py) through every graphpress command.

Each model, on its catalog inputs, goes through what a user would type:

* ``inspect`` with the inputs' shapes,
* ``optimize --passes cleanup,fuse,dedup --inputs`` (checked against ONNX Runtime),
* ``optimize --passes prune:ratio=0.2 --inputs --verify`` (the default 0.99 cosine budget),
* ``optimize --passes quantize:mode=dynamic --inputs --verify``,
* ``compile --target x86 --inputs`` (the compiled code checked against ONNX Runtime; the
  artifact's own side-by-side timing against ONNX Runtime on the model as given, from its
  ``graphpress.json``, is the ``x86 / ORT`` column: the same work, batch as in the catalog),
* with ``--arm``: ``compile --target aarch64``, run under qemu and compared with ONNX Runtime.
* with ``--same-work``: the files the prune and quantize steps wrote, and a static int8 one
  (``optimize --passes cleanup,fuse,quantize:mode=static --inputs``), each compiled for x86 and
  timed against ONNX Runtime on that same file (``compile``'s own measurement): the same
  (pruned, quantized) work on both engines.

``--ort-isa avx2`` (or ``avx2_vnni``) measures what a user of a CPU without AVX-512 gets: the x86
step compiles ``--target x86:avx2`` (that path's code, on this host), and the artifact is timed
in this process against ONNX Runtime on its own kernels for such a CPU (``_ort_isa``: a cached
copy of it that picks them), on the file as shipped, the way ``compile`` times it
(:func:`graphpress.backends.tvm.build.measure_against_onnxruntime`).

A step is ``ok``, ``refused`` (exit 2 and one line: the table lists every reason) or
``crash`` (any other exit). Models are downloaded with pip into the cache on first use.

    python benchmarks/real_models.py [--arm] [--same-work] [--ort-isa avx2] [--only NAME,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _ort_isa  # noqa: E402

# before onnxruntime is imported: --ort-isa runs ORT's kernels for a CPU without AVX-512
ORT_ISA = _ort_isa.install_from_argv()

from _real import CATALOG, BY_NAME, fetch  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from graphpress.cli import main; sys.exit(main())"]
STEPS = ("inspect", "optimize", "prune", "quantize", "x86")

#: --same-work: (step, the file it compiles, the step that wrote that file)
SAME_WORK = (("x86 pruned", "pruned.onnx", "prune"), ("x86 dynamic int8", "q.onnx", "quantize"), ("x86 static int8", "qs.onnx", "quantize static"))


def _cli(*args: str, timeout: float = 1800) -> tuple[str, str, float]:
    t = time.perf_counter()
    try:
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "crash", f"no result within {timeout:.0f} s", time.perf_counter() - t
    seconds = time.perf_counter() - t
    if proc.returncode == 0:
        return "ok", (proc.stdout.strip().splitlines() or [""])[-1], seconds
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return ("refused" if proc.returncode == 2 else "crash"), last, seconds


def _shape_args(feeds: dict[str, np.ndarray]) -> list[str]:
    args = []
    for name, arr in feeds.items():
        if arr.ndim:
            args += ["--input-shape", f"{name}={'x'.join(map(str, arr.shape))}"]
    return args


def run_model(model, work: Path, arm: bool = False, same_work: bool = False) -> dict:
    import onnx

    path = fetch(model)
    proto = onnx.load(str(path), load_external_data=False)
    row = {
        "model": model.name, "family": model.family, "wheel": model.wheel,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node), "producer": proto.producer_name or "?",
    }  # fmt: skip
    feeds = model.feeds()
    npz = work / f"{model.name}.npz"
    np.savez(npz, **feeds)
    out = work / model.name
    out.mkdir(exist_ok=True)
    steps = {
        "inspect": ["inspect", str(path), *_shape_args(feeds)],
        "optimize": ["optimize", str(path), "-o", str(out / "opt.onnx"), "--passes", "cleanup,fuse,dedup", "--inputs", str(npz)],
        "prune": ["optimize", str(path), "-o", str(out / "pruned.onnx"), "--passes", "prune:ratio=0.2", "--inputs", str(npz), "--verify"],
        "quantize": ["optimize", str(path), "-o", str(out / "q.onnx"), "--passes", "quantize:mode=dynamic", "--inputs", str(npz), "--verify"],
        "x86": ["compile", str(path), "--target", row_target(), "-o", str(out / "x86"), "--inputs", str(npz)],
    }
    for step, args in steps.items():
        row[step], row[f"{step}_detail"], row[f"{step}_s"] = _cli(*args)
    row["x86_ms"], row["ort_ms"] = _timed(row["x86"], out / "x86", path, feeds)
    if same_work:
        static = ["optimize", str(path), "-o", str(out / "qs.onnx"), "--passes", "cleanup,fuse,quantize:mode=static", "--inputs", str(npz), "--verify"]
        row["quantize static"], row["quantize static_detail"], row["quantize static_s"] = _cli(*static)
        for step, name, source in SAME_WORK:
            if row[source] != "ok":
                row[step], row[f"{step}_detail"], row[f"{step}_s"] = "skipped", f"no file: {source} {row[source]}", 0.0
                continue
            artifact = out / step.replace(" ", "-")
            row[step], row[f"{step}_detail"], row[f"{step}_s"] = _cli("compile", str(out / name), "--target", row_target(), "-o", str(artifact), "--inputs", str(npz))
            row[f"{step}_ms"], row[f"{step}_ort_ms"] = _timed(row[step], artifact, out / name, feeds)
    if arm:
        row["aarch64"], row["aarch64_detail"], row["aarch64_s"] = _aarch64(path, feeds, out / "arm")
    return row


def row_target() -> str:
    """The x86 steps' target: the host's paths, or with ``--ort-isa`` those of the emulated CPU."""
    return f"x86:{ORT_ISA}" if ORT_ISA else "x86"


def _timed(status: str, artifact: Path, source: Path, feeds: dict) -> tuple[float | None, float | None]:
    """(artifact ms, ONNX Runtime ms) on ``source``, the file it was compiled from: ``compile``'s
    own measurement (its ``graphpress.json``), or with ``--ort-isa`` one against the emulated CPU's
    ONNX Runtime kernels (``compile`` timed this host's)."""
    meta = artifact / "graphpress.json"
    if status != "ok" or not meta.exists():
        return None, None
    versus = _versus_emulated(artifact, source, feeds) if ORT_ISA else json.loads(meta.read_text()).get("build", {}).get("vs_onnxruntime", {})
    return versus.get("artifact_ms"), versus.get("onnxruntime_ms")


def _versus_emulated(artifact: Path, path: Path, feeds: dict) -> dict:
    """The artifact against ONNX Runtime's kernels for the emulated CPU (``--ort-isa``), on the
    file as shipped, as ``compile`` measures it."""
    import graphpress as gp
    from graphpress.backends.tvm import load
    from graphpress.backends.tvm.build import measure_against_onnxruntime

    compiled = load(artifact)
    try:
        return measure_against_onnxruntime(compiled, gp.load(path), feeds)
    finally:
        compiled.release()


def _aarch64(path: Path, feeds: dict, out: Path) -> tuple[str, str, float]:
    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.qemu import run_aarch64
    from graphpress.errors import one_line
    from graphpress.ir.numeric import compare_outputs, lowest_float_precision, run

    t = time.perf_counter()
    try:
        model = gp.load(path)
        compiled = compile_model(model, "aarch64", input_shapes={n: list(a.shape) for n, a in feeds.items()})
        compiled.save(out)
        got = run_aarch64(out, feeds)
        ref = run(model, feeds)
        report = compare_outputs(ref, {n: got[n] for n in ref}, "backend", "the catalog inputs", precision=lowest_float_precision(model))
        status = ("ok", f"max_abs_diff={report.max_abs_diff:.3g} vs ONNX Runtime") if report.passed else ("wrong", report.describe_failure())
    except gp.GraphpressError as e:
        status = ("refused", one_line(e, 300))
    except Exception as e:  # noqa: BLE001 - counted
        status = ("crash", f"{type(e).__name__}: {one_line(e, 300, last=True)}")
    return (*status, time.perf_counter() - t)


def same_work_table(rows: list[dict]) -> str:
    """The compressed files, each compiled and timed against ONNX Runtime on that same file."""
    head = "| model | " + " | ".join(f"{step}: x86 ms / ORT ms" for step, _, _ in SAME_WORK) + " |"
    lines = [head, "|---|" + "---:|" * len(SAME_WORK)]
    for r in rows:
        cells = []
        for step, _, _ in SAME_WORK:
            x86, ort = r.get(f"{step}_ms"), r.get(f"{step}_ort_ms")
            cells.append(f"{x86:.3g} / {ort:.3g} = **{x86 / ort:.2f}x**" if x86 and ort else f"{r[step]}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict], steps) -> str:
    lines = ["| model | family | opset | nodes | " + " | ".join(steps) + " | x86 ms | ORT ms | x86 / ORT |", "|---|---|---|---|" + "---|" * len(steps) + "---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[s]} ({r[s + '_s']:.0f} s)" if r[s] == "ok" else f"**{r[s]}**" for s in steps]
        x86, ort = r.get("x86_ms"), r.get("ort_ms")
        speed = [f"{x86:.3g}", f"{ort:.3g}", f"{x86 / ort:.2f}x"] if x86 and ort else ["", "", ""]
        lines.append(f"| {r['model']} | {r['family']} | {r['opset']} | {r['nodes']} | " + " | ".join(cells + speed) + " |")
    return "\n".join(lines)


def main() -> int:
    from _machine import banner

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated model names (default: all): " + ", ".join(BY_NAME))
    ap.add_argument("--arm", action="store_true", help="also compile for aarch64 and run under qemu (make arm-env)")
    ap.add_argument("--same-work", action="store_true", help="also compile the pruned and quantized files (and a static int8 one) and time each against ONNX Runtime on it")
    ap.add_argument("--ort-isa", choices=["host", *_ort_isa.EMULATIONS], default="host",
                    help="compile the x86 path of a CPU without AVX-512 (x86:avx2, x86:avx2_vnni) and time ONNX Runtime's kernels for it")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the outputs in this directory")
    args = ap.parse_args()
    print(banner(row_target()))
    print(_ort_isa.describe(ORT_ISA))
    models = [BY_NAME[n] for n in args.only.split(",")] if args.only else CATALOG
    steps = (*STEPS, "aarch64") if args.arm else STEPS
    shown = (*steps, "quantize static", *(s for s, _, _ in SAME_WORK)) if args.same_work else steps
    work = Path(tempfile.mkdtemp(prefix="graphpress-real-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for model in models:
            row = run_model(model, work, args.arm, args.same_work)
            rows.append(row)
            print(f"{model.name}: " + ", ".join(f"{s}={row[s]}" for s in shown), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows, steps))
    print()
    if args.same_work:
        print(same_work_table(rows))
        print()
    for r in rows:
        for s in shown:
            if r[s] != "ok":
                print(f"- {r['model']} {s}: {r[s]}: {r[s + '_detail']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
