"""The ``graphpress`` command: inspect, optimize, compile, run, pack, unpack, passes, demo.

Exit codes: 0 success; 2 bad input (missing/corrupt model, unknown pass or option, bad
value, unwritable output, failed ``--verify``), with one line on stderr. ``--debug``
shows the traceback. The input model is never modified and outputs are written whole
or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from graphpress.errors import GraphpressError

__all__ = ["main"]


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="ops, params, bytes, MACs, inputs/outputs of a model")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_inspect)


def _add_optimize(sub):
    p = sub.add_parser("optimize", help="run passes on a model and write the result as ONNX")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--passes", required=True, help="SPEC: name[:key=value[;key=value]],name... e.g. 'cleanup'")
    p.add_argument("--verify", action="store_true", help="check every pass numerically with ONNX Runtime; fail (exit 2) on a mismatch")
    p.add_argument("--report", help="write the report JSON here")
    p.add_argument("--inputs", help=".npz of sample inputs (keys = input names) for --verify; default: random from declared shapes")
    p.add_argument("--dump-ir", metavar="DIR", help="save the model after every pass into DIR")
    p.add_argument("--external-data", action="store_true", help="store weights in OUT.data beside the .onnx")
    p.set_defaults(func=cmd_optimize)


def _add_compile(sub):
    p = sub.add_parser("compile", help="compile a model with TVM for x86, aarch64 or cuda")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--target", required=True, help="x86, aarch64, cuda[:sm_XX] or a TVM target JSON dict")
    p.add_argument("-o", "--output", required=True, help="artifact directory (model.so + graphpress.json), written whole")
    p.add_argument("--passes", help="SPEC of passes to run before compiling, e.g. 'cleanup'")
    p.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials in total (CPU); 0: use tuning databases only")
    p.add_argument("--max-trials-per-task", type=int, help="per-kernel trial cap (default: tune-trials / kernels)")
    p.add_argument("--database", help="tuning database directory (default: ~/.cache/graphpress/tvm-tuning/<target>)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DxDx...", help="static shape for an input with symbolic dims (repeatable)")
    p.add_argument("--inputs", help=".npz of sample inputs for the check against ONNX Runtime (host targets)")
    p.add_argument("--int8", choices=("auto", "on", "off"), default="auto",
                   help="integer VNNI kernels for quantized dense layers (auto: x86 with AVX-512 VNNI)")
    p.add_argument("--report", help="write the build report JSON here")
    p.set_defaults(func=cmd_compile)


def _add_run(sub):
    p = sub.add_parser("run", help="run a compiled artifact on this machine")
    p.add_argument("artifact", help="artifact directory from graphpress compile")
    p.add_argument("--inputs", help=".npz of inputs (keys = input names); default: random from the artifact's shapes")
    p.add_argument("--output", help="write the outputs to this .npz")
    p.add_argument("--bench", action="store_true", help="measure latency (median of --repeat runs after warm-up)")
    p.add_argument("--repeat", type=int, default=50, help="runs for --bench (default 50)")
    p.add_argument("--threads", type=int, help="TVM CPU threads (default: all cores)")
    p.set_defaults(func=cmd_run)


def _add_pack(sub):
    p = sub.add_parser("pack", help="entropy-code an .onnx file into one smaller file (bit-exact round trip)")
    p.add_argument("model", help="path of an .onnx file (weights inside the file)")
    p.add_argument("-o", "--output", required=True, help="packed file, e.g. model.gpk (written atomically)")
    p.add_argument("--json", action="store_true", help="print the sizes as JSON")
    p.set_defaults(func=cmd_pack)
    q = sub.add_parser("unpack", help="restore the exact .onnx file from graphpress pack's output")
    q.add_argument("packed", help="file written by graphpress pack")
    q.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    q.set_defaults(func=cmd_unpack)


def _add_passes(sub):
    p = sub.add_parser("passes", help="list the registered passes and their options")
    p.set_defaults(func=cmd_passes)


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job on a built-in model (no arguments, no network)")
    p.add_argument("--output-dir", help="keep the exported and optimized models here")
    p.add_argument("--epochs", type=int, default=8, help="training epochs on digits (default 8)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphpress", description="Graph-level compiler passes for model compression.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_inspect, _add_optimize, _add_compile, _add_run, _add_pack, _add_passes, _add_demo):
        add(sub)
    return parser


def _version() -> str:
    from graphpress import __version__

    return f"graphpress {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except GraphpressError as e:
        if args.debug:
            raise
        print(f"graphpress: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphpress: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------ inspect


def cmd_inspect(args) -> int:
    from graphpress.ir import load, summarize

    summary = summarize(load(args.model))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{args.model}", show_header=False)
    t.add_row("opset", str(summary.opset))
    t.add_row("nodes", f"{summary.nodes:,}")
    t.add_row("params", f"{summary.params:,}")
    t.add_row("weight bytes", _bytes(summary.bytes))
    t.add_row("MACs (per sample)", f"{summary.macs:,}" + (f"  ({len(summary.unknown_macs)} nodes of unknown shape)" if summary.unknown_macs else ""))
    for kind, macs in summary.macs_by_kind.items():
        t.add_row(f"  {kind}", f"{macs:,}")
    for io in summary.inputs:
        t.add_row("input", f"{io['name']}: {io['dtype']} {io['shape']}")
    for io in summary.outputs:
        t.add_row("output", f"{io['name']}: {io['dtype']} {io['shape']}")
    console.print(t)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary.ops.items():
        ops.add_row(op, str(count))
    console.print(ops)
    return 0


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------------ optimize


def cmd_optimize(args) -> int:
    from graphpress.ir import load, save, summarize
    from graphpress.ir.io import check_writable
    from graphpress.ir.numeric import load_inputs, make_inputs
    from graphpress.passes import DumpInstrument, InvariantInstrument, NumericInstrument, PassManager, build_passes
    from graphpress.passes.report import build_report, write_json_atomic

    passes = build_passes(args.passes)
    input_path = Path(args.model)
    out = check_writable(args.output, "output", input_path)
    if args.report:
        check_writable(args.report, "report", input_path)
    model = load(input_path)
    before = summarize(model)
    instruments = [InvariantInstrument()]
    numeric_inst = None
    given = load_inputs(args.inputs, model) if args.inputs else None
    # passes that need sample data (quantize: calibration; prune: activation importance) get --inputs
    users = [p for p in passes if hasattr(p, "calibration") or hasattr(p, "feeds")]
    if given is not None:
        for p in users:
            if hasattr(p, "calibration"):
                p.calibration = [given]
            if hasattr(p, "feeds"):
                p.feeds = given
    if args.verify:
        if given is not None:
            feeds, source = given, str(args.inputs)
        else:
            feeds, source = make_inputs(model, seed=0), "generated from declared shapes (seed 0)"
        numeric_inst = NumericInstrument(feeds, source)
        instruments.append(numeric_inst)
    elif args.inputs and not users:
        raise GraphpressError("--inputs is used by --verify and by passes that need sample data (quantize, prune); add --verify")
    if args.dump_ir:
        instruments.append(DumpInstrument(args.dump_ir))
    result = PassManager(passes, instruments).run(model)
    after = summarize(model)
    save(model, out, external_data=True if args.external_data else None)
    if args.report:
        report = build_report(
            result,
            before,
            after,
            numeric_inst.final if numeric_inst else None,
            model=str(input_path),
            spec=args.passes,
            rebased_by=numeric_inst.rebased_by if numeric_inst else None,
        )
        write_json_atomic(report, args.report)
    _print_optimize_summary(before, after, result, numeric_inst.final if numeric_inst else None, out)
    return 0


def _print_optimize_summary(before, after, result, verification, out) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    t = Table(title=f"wrote {out}")
    for col in ("pass", "modified", "seconds", "stats"):
        t.add_column(col)
    for rec in result.records:
        stats = ", ".join(f"{k}={v}" for k, v in rec.stats.items() if v not in (0, False) or k == "fixpoint_reached")
        t.add_row(rec.name, "yes" if rec.modified else "no", f"{rec.seconds:.3f}", stats)
    console.print(t)
    s = Table()
    for col in ("", "nodes", "params", "bytes", "MACs"):
        s.add_column(col, justify="right")
    for label, m in (("before", before), ("after", after)):
        s.add_row(label, f"{m.nodes:,}", f"{m.params:,}", _bytes(m.bytes), f"{m.macs:,}")
    console.print(s)
    if verification is not None:
        console.print(
            f"verification ({verification.inputs_source}): max_abs_diff={verification.max_abs_diff:.3g} "
            f"cosine={verification.min_cosine:.8f} -> {'PASS' if verification.passed else 'FAIL'}"
        )


# ------------------------------------------------------------------------------ compile / run


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, eq, dims = item.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise GraphpressError(f"--input-shape '{item}': expected NAME=DxDx..., e.g. input=1x3x224x224") from None
    return shapes


def cmd_compile(args) -> int:
    from graphpress.backends.tvm.build import compile_model
    from graphpress.backends.tvm.targets import resolve_target
    from graphpress.ir import load
    from graphpress.ir.numeric import compare_outputs, load_inputs, random_inputs, run
    from graphpress.passes import InvariantInstrument, PassManager, build_passes
    from graphpress.passes.report import write_json_atomic

    spec = resolve_target(args.target)
    shapes = _parse_shapes(args.input_shape)
    passes = build_passes(args.passes) if args.passes else []
    out = Path(args.output)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise GraphpressError(f"{out}: cannot write the artifact, directory {out.parent} does not exist")
    if args.report:
        from graphpress.ir.io import check_writable

        check_writable(args.report, "report")
    model = load(args.model)
    pass_records = []
    if passes:
        pass_records = [r.to_dict() for r in PassManager(passes, [InvariantInstrument()]).run(model).records]
    compiled = compile_model(
        model, spec, input_shapes=shapes, tune_trials=args.tune_trials, max_trials_per_task=args.max_trials_per_task, database=args.database,
        int8=args.int8,
    )  # fmt: skip
    check = None
    if spec.is_host:
        feeds = load_inputs(args.inputs, model) if args.inputs else random_inputs(compiled.meta["inputs"])
        ref = run(model, feeds)
        got = dict(zip(ref, compiled(**feeds)))
        # integer kernels round where ONNX Runtime's do not (one step of a quantized output at most)
        family = "quantization" if compiled.meta["build"].get("int8", {}).get("lowered") else "backend"
        check = compare_outputs(ref, got, family, args.inputs or "generated from the artifact's shapes (seed 0)")
        compiled.meta["build"]["check_vs_onnxruntime"] = {"passed": check.passed, "max_abs_diff": check.max_abs_diff, "cosine": check.min_cosine}
        if not check.passed:
            raise GraphpressError(f"target {spec.name}: compiled code differs from ONNX Runtime: {check.describe_failure()}; artifact not written")
    compiled.save(out)
    build = compiled.meta["build"]
    if args.report:
        write_json_atomic({"target": spec.config, "passes": pass_records, "build": build, "inputs": compiled.meta["inputs"]}, args.report)
    unscheduled = build.get("unscheduled_kernels") or []
    print(f"wrote {out} for {spec.name} {spec.to_json()}")
    if spec.is_cpu:
        scheduled = build.get("scheduled_kernels", 0)
        print(f"kernels: {scheduled + len(unscheduled)}, scheduled by the tuning databases or graphpress's integer kernels: {scheduled}, "
              f"without a tuned schedule: {len(unscheduled)}")  # fmt: skip
        if unscheduled:
            print(f"warning: {len(unscheduled)} kernel(s) have no tuned schedule ({build.get('generic_scheduled_kernels', 0)} of them "
                  f"got graphpress's generic parallel schedule, the rest TVM's default loop nests: slow); tune with --tune-trials N",
                  file=sys.stderr)
    if "int8" in build:
        i8 = build["int8"]
        print(f"int8: {i8['lowered']} layer(s) on integer kernels ({i8.get('amx_tile_products', 0)} AMX tile products, {i8.get('zmm_vpdpbusd', 0)} zmm vpdpbusd), "
              f"{i8['kept_fp32']} kept fp32 by the speed guard, {len(i8.get('fp32_layers', []))} QDQ layer(s) in fp32 (no integer kernel)")
    if check is not None:
        print(f"check vs ONNX Runtime: max_abs_diff={check.max_abs_diff:.3g} cosine={check.min_cosine:.8f} -> PASS")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from graphpress.backends.tvm.runtime import load
    from graphpress.ir.numeric import random_inputs

    model = load(args.artifact, num_threads=args.threads)
    if args.inputs:
        try:
            with np.load(args.inputs) as data:
                feeds = {k: data[k] for k in data.files}
        except OSError as e:
            raise GraphpressError(f"{args.inputs}: cannot read the .npz ({e})") from e
    else:
        feeds = random_inputs(model.meta["inputs"])
    outputs = model.run_named(**feeds)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)} mean={float(value.mean()):.6g} std={float(value.std()):.6g}")
    if args.output:
        np.savez(args.output, **outputs)
    if args.bench:
        stats = model.benchmark(**feeds, repeat=args.repeat)
        print(f"latency: median {stats['median_ms']:.3f} ms, mean {stats['mean_ms']:.3f} ms, min {stats['min_ms']:.3f} ms over {stats['repeat']} runs")
    return 0


# ------------------------------------------------------------------------------ pack / unpack


def cmd_pack(args) -> int:
    from graphpress.ir.pack import pack

    report = pack(args.model, args.output)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    codecs = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(report.by_codec.items(), key=lambda kv: -kv[1]))
    print(
        f"wrote {args.output}: {_bytes(report.packed_bytes)} from {_bytes(report.original_bytes)} "
        f"({report.ratio:.2f}x smaller; {report.tensors} weight tensors; {codecs})"
    )
    return 0


def cmd_unpack(args) -> int:
    from graphpress.ir.pack import unpack

    size = unpack(args.packed, args.output)
    print(f"wrote {args.output}: {_bytes(size)} (SHA-256 matches the packed model)")
    return 0


# ------------------------------------------------------------------------------ passes


def cmd_passes(args) -> int:
    import dataclasses

    from graphpress.passes import all_passes
    from graphpress.passes.base import describe_option

    for name, cls in all_passes().items():
        opts = ", ".join(describe_option(f) for f in dataclasses.fields(cls.Options)) or "no options"
        print(f"{name:20s} [{cls.family}] {cls.description}  ({opts})")
    return 0


# ------------------------------------------------------------------------------ demo


def cmd_demo(args) -> int:
    from graphpress.demo import run_demo

    run_demo(output_dir=args.output_dir, epochs=args.epochs)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
