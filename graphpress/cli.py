"""The ``graphpress`` command: inspect, optimize, compress, compile, run, bench, pack, unpack, passes, demo.

Exit codes: 0 success; 2 bad input (missing/corrupt model, unknown pass or option, bad
value, unwritable output, failed ``--verify``), with one line on stderr. ``--debug``
shows the traceback. The input model is never modified and outputs are written whole
or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from graphpress.errors import GraphpressError

__all__ = ["main"]


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="ops, params, bytes, MACs, inputs/outputs of a model")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DxDx...",
                   help="count shapes and MACs for this input shape (symbolic dims count as 1 otherwise); repeatable")
    p.set_defaults(func=cmd_inspect)


def _add_optimize(sub):
    p = sub.add_parser("optimize", help="run passes on a model and write the result as ONNX")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--passes", required=True, help="SPEC: name[:key=value[;key=value]],name... e.g. 'cleanup'")
    p.add_argument("--verify", action="store_true", help="check every pass numerically with ONNX Runtime; fail (exit 2) on a mismatch")
    p.add_argument("--report", help="write the report JSON here")
    p.add_argument("--report-html", metavar="PATH", help="write the report a person reads here: one self-contained HTML page (weights before/after, per-layer metrics, pass timeline)")
    p.add_argument("--inputs", help=".npz of sample inputs (keys = input names; a stack of N for a batch-1 model is N samples) "
                   "for --verify and passes that need data (given to passes that need none, they turn --verify on); "
                   "default: random from declared shapes")
    p.add_argument("--min-cosine", type=_cosine, default=0.99,
                   help="end-to-end budget of a lossy pipeline (prune, share, quantize): every output keeps at least this "
                        "cosine against the input model (default 0.99)")
    p.add_argument("--dump-ir", metavar="DIR", help="save the model after every pass into DIR")
    p.add_argument("--external-data", action="store_true",
                   help="store weights in OUT.data beside the .onnx (default: one file below 2 GB, OUT.data above)")
    p.add_argument("--target", help="the machine the output will run on, as compile takes it (x86[:PATH], aarch64[:i8mm]): quantize fits "
                   "its int8 weights to that machine's instructions (x86:avx2: 7 bits, whose vpmaddubsw pair sums cannot saturate, "
                   "for ONNX Runtime's AVX2 kernels and graphpress's alike); default: any machine")
    p.set_defaults(func=cmd_optimize)


#: --rpc on compile and compress
RPC_HELP = ("a device reached through TVM's RPC: HOST:PORT:KEY (an RPC tracker and the key its servers registered with) or HOST:PORT "
            "(one server); the int8 guards time their kernels there and the check against ONNX Runtime runs the code there, so a "
            "cross-compiled target (aarch64) gets both; the report's measured_on says where")


def _add_compile(sub):
    p = sub.add_parser("compile", help="compile a model with TVM for x86, aarch64 or cuda")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--target", required=True, help="x86[:PATH] (PATH: amx, avx512_vnni, avx512, avx2_vnni, avx2, sse), aarch64[:i8mm], cuda[:sm_XX] or a TVM target JSON dict")
    p.add_argument("-o", "--output", required=True, help="artifact directory (model.so + graphpress.json), written whole")
    p.add_argument("--passes", help="SPEC of passes to run before compiling, e.g. 'cleanup'")
    p.add_argument("--tune-trials", type=_at_least(0), default=0, help="MetaSchedule trials in total (CPU); 0: use tuning databases only")
    p.add_argument("--max-trials-per-task", type=_at_least(1), help="per-kernel trial cap (default: tune-trials / kernels)")
    p.add_argument("--database", help="tuning database directory (default: ~/.cache/graphpress/tvm-tuning/<target>)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DxDx...", help="static shape for an input with symbolic dims (repeatable)")
    p.add_argument("--inputs", help=".npz of sample inputs for the check against ONNX Runtime (host targets)")
    p.add_argument("--dynamic", metavar="DIM[,DIM]", help="symbolic input dims that stay symbolic in the artifact, so it runs every size of "
                   "them: 'batch' (the first dim of each input whose first dim is symbolic) or the model's dim names, e.g. 'batch,seq'")
    p.add_argument("--int8", choices=("auto", "on", "off"), default="auto",
                   help="integer VNNI kernels for quantized dense layers (auto: x86 with AVX-512 VNNI)")
    p.add_argument("--require-faster", action="store_true",
                   help="exit 2 and write nothing when the artifact is slower than ONNX Runtime on the model as given (host targets)")
    p.add_argument("--no-measure", action="store_true", help="skip timing the artifact against ONNX Runtime (host targets)")
    p.add_argument("--report", help="write the build report JSON here")
    p.add_argument("--report-html", metavar="PATH", help="write the report a person reads here: one self-contained HTML page (weights before/after, per-layer metrics, pass timeline, latency against ONNX Runtime)")
    p.add_argument("--rpc", metavar="HOST:PORT[:KEY]", help=RPC_HELP)
    p.set_defaults(func=cmd_compile)


def _add_compress(sub):
    from graphpress.pipelines import RECIPES

    p = sub.add_parser("compress", help="a recipe (prune, quantize, share, fuse) under one accuracy budget, built for a target and measured")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--target", default="onnxruntime",
                   help="onnxruntime: write ONNX; x86/aarch64/cuda (x86:PATH such as x86:avx2, aarch64:i8mm, cuda:sm_80): compile with TVM (default onnxruntime)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file (onnxruntime) or the artifact directory (TVM targets), written whole")
    p.add_argument("--samples", help=".npz of real inputs (keys = input names, a leading row axis); the last quarter is held out and judges the result")
    p.add_argument("--labels", help=".npy of one label per sample row: the budget is then accuracy, not agreement")
    p.add_argument("--budget", help="what the whole pipeline may lose: '1%%' top-1 agreement (default for convolutional models) or "
                   "'cos:0.99' mean output cosine (default for others)")
    p.add_argument("--recipe", default="int8", choices=tuple(RECIPES), help="; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    p.add_argument("--metric", metavar="MODULE:FUNCTION", help="your own quality measure: FUNCTION(model: onnx_ir.Model) -> float, higher is "
                   "better (imported from MODULE; the current directory is on the path); the budget is then how much it may drop "
                   "(--budget 0.01, the default, or 1%%)")
    p.add_argument("--onnx", help="also write the compressed ONNX here (TVM targets)")
    p.add_argument("--no-measure", action="store_true", help="skip the latency comparison")
    p.add_argument("--report", help="write the report JSON here")
    p.add_argument("--report-html", metavar="PATH", help="write the report a person reads here: one self-contained HTML page (weights before/after, per-layer metrics, every candidate tried, latency against the peers)")
    p.add_argument("--rpc", metavar="HOST:PORT[:KEY]", help=RPC_HELP)
    p.add_argument("--recover", metavar="KEY=VALUE,...", help="fine-tune every lossy candidate against the model given before it is judged "
                   "(distillation on the compressed graph: graphpress.recover), e.g. epochs=3 or epochs=3,lr=0.001,temperature=2; freeze=embeddings|LayerNorm keeps the weights whose names hold one of these")
    p.add_argument("--train-data", metavar="NPZ", help="inputs --recover trains on (keys = input names, a leading row axis; default: the "
                   "samples the steps are chosen on); the held-out samples only judge")
    p.set_defaults(func=cmd_compress)


def _add_bench(sub):
    p = sub.add_parser("bench", help="latency side by side: ONNX Runtime fp32, its best int8, and a compiled artifact")
    p.add_argument("model", nargs="?", help="path of an .onnx file (the model the peers run), or an artifact directory alone")
    p.add_argument("--artifact", help="artifact directory from graphpress compile/compress")
    p.add_argument("--inputs", help=".npz of inputs (keys = input names); the int8 peer is calibrated on them; default: generated")
    p.add_argument("--no-int8", action="store_true", help="leave out ONNX Runtime's int8")
    p.add_argument("--torch", metavar="MODULE:FUNCTION", help="also time torch eager: FUNCTION() returns the torch.nn.Module the model "
                   "was exported from (imported from MODULE; the current directory is on the path); it takes the inputs in the model's order")
    p.add_argument("--seconds", type=float, default=4.0, help="time spent timing, all engines together (default 4)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--rpc", metavar="HOST:PORT[:KEY]", help="time the artifact on a device through TVM's RPC (TVM's time evaluator there); "
                   "the peers are then not timed (they run here)")
    p.set_defaults(func=cmd_bench)


def _add_run(sub):
    p = sub.add_parser("run", help="run a compiled artifact on this machine")
    p.add_argument("artifact", help="artifact directory from graphpress compile")
    p.add_argument("--inputs", help=".npz of inputs (keys = input names); default: random from the artifact's shapes")
    p.add_argument("--output", help="write the outputs to this .npz")
    p.add_argument("--bench", action="store_true", help="measure latency (median of --repeat runs after warm-up)")
    p.add_argument("--repeat", type=_at_least(1), default=50, help="runs for --bench (default 50)")
    p.add_argument("--threads", type=_at_least(1), help="TVM CPU threads (default: all cores)")
    p.add_argument("--rpc", metavar="HOST:PORT[:KEY]", help="run it on a device through TVM's RPC (the library is uploaded there)")
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
    p = sub.add_parser("demo", help="the whole job on built-in models: the digits CNN with prune-int8 and smallest, MiniLM with int8, "
                       "compiled for x86, verified, timed against ONNX Runtime, an HTML report each (about a minute; no network)")
    p.add_argument("--output-dir", help="keep the models, artifacts and reports here (default: a new temporary directory)")
    p.add_argument("--epochs", type=_at_least(1), default=8, help="training epochs on digits (default 8)")
    p.set_defaults(func=cmd_demo)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"graphpress: error: {self.prog}: {message}; see '{self.prog} --help'\n")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _cosine(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine lies in [-1, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphpress", description="Graph-level compiler passes for model compression.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_inspect, _add_optimize, _add_compress, _add_compile, _add_run, _add_bench, _add_pack, _add_passes, _add_demo):
        add(sub)
    return parser


def _version() -> str:
    from graphpress import __version__

    return f"graphpress {__version__}"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_exception():
    """Turn SIGTERM/SIGHUP into an exception for the duration of a command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _terminate_as_exception():
            return int(args.func(args) or 0)
    except GraphpressError as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())  # one line, whatever a library put in it
        print(f"graphpress: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f"graphpress: interrupted ({signal.Signals(signum).name}); no partial file was left", file=sys.stderr)
        return 128 + int(signum)


# ------------------------------------------------------------------------------ inspect


def cmd_inspect(args) -> int:
    from graphpress.ir import load, summarize
    from graphpress.ir.analysis import with_input_shapes

    summary = summarize(with_input_shapes(load(args.model), _parse_shapes(args.input_shape)))
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
    if summary.symbolic_dims:
        print(f"note: symbolic dims {', '.join(summary.symbolic_dims)} count as 1 in the MACs; give --input-shape NAME=DxDx... for real figures")
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
    from graphpress.ir.numeric import load_samples, make_inputs
    from graphpress.passes import DumpInstrument, InvariantInstrument, NumericInstrument, PassManager, build_passes
    from graphpress.passes.context import PassContext
    from graphpress.passes.report import build_report, write_json_atomic

    passes = build_passes(args.passes)
    facts = None
    if args.target:
        from graphpress.backends.tvm.targets import resolve_target, target_facts

        facts = target_facts(resolve_target(args.target))
    input_path = Path(args.model)
    out = check_writable(args.output, "output", input_path)
    for extra, what in ((args.report, "report"), (args.report_html, "--report-html")):
        if extra and check_writable(extra, what, input_path).resolve() == out.resolve():
            raise GraphpressError(f"{extra}: is also the output model; give the {what} another path")
    instruments = [InvariantInstrument()]
    trace = None
    if args.report_html:
        from graphpress.report_html import WeightTrace

        trace = WeightTrace()
        instruments.insert(0, trace)
    if args.dump_ir:
        instruments.append(DumpInstrument(args.dump_ir))
    model = load(input_path)
    before = summarize(model)
    numeric_inst = None
    samples = load_samples(args.inputs, model) if args.inputs else None
    # every pass gets the samples (quantize: calibration; prune, dedup: activations)
    context = PassContext(samples=samples, samples_source=str(args.inputs) if samples else "generated", target=facts)
    # inputs the user gives are used, never refused: by the passes that read samples, else by the check
    if args.verify or (samples is not None and not any(p.uses_samples for p in passes)):
        source = str(args.inputs) if samples is not None else "generated from declared shapes (seed 0)"
        checked = samples if samples is not None else [make_inputs(model, seed=0)]
        numeric_inst = NumericInstrument(checked, source, min_cosine=args.min_cosine, **_user_baseline(input_path, model, checked))
        instruments.insert(1, numeric_inst)
    try:
        result = PassManager(passes, instruments, context=context).run(model)
    except GraphpressError as e:
        if trace is not None:  # the page shows how far the run got and why it stopped
            _html_of_failed_run(args.report_html, trace, e, "optimize", model=args.model, spec=args.passes)
        raise
    after = summarize(model)
    save(model, out, external_data=True if args.external_data else None)
    if trace is not None:
        from graphpress.report_html import optimize_page

        optimize_page(args.report_html, trace=trace, records=[r.to_dict() for r in result.records], model=args.model, spec=args.passes,
                      final=numeric_inst.final if numeric_inst else None)  # fmt: skip
        print(f"report: {args.report_html}")
    if args.report:
        report = build_report(
            result,
            before,
            after,
            numeric_inst.final if numeric_inst else None,
            model=str(input_path),
            spec=args.passes,
            rebased_by=numeric_inst.rebased_by if numeric_inst else None,
            vs_reference=numeric_inst.vs_reference if numeric_inst else None,
        )
        write_json_atomic(report, args.report)
    _print_optimize_summary(before, after, result, numeric_inst, out)
    return 0


def _html_of_failed_run(path, trace, error: Exception, command: str, **kw) -> None:
    """The HTML page of a run a check stopped: the passes that ran, the one that failed with its
    verification (the first diverging node) and the error."""
    from graphpress.report_html import compile_page, optimize_page

    records = [r.to_dict() for r in trace.records]
    report = getattr(error, "report", None)
    if records and records[-1].get("verification") is None and report is not None:
        records[-1]["verification"] = {"passed": False, "max_abs_diff": report.max_abs_diff, "cosine": report.min_cosine,
                                       "family": "?", "first_divergence": report.first_divergence}  # fmt: skip
    page = optimize_page if command == "optimize" else compile_page
    try:
        page(path, trace=trace, records=records, failure=str(error), **kw)
        print(f"report of the stopped run: {path}")  # stdout: the error stays the one line on stderr
    except Exception as e:  # the error the user must see is the first one
        print(f"warning: the report {path} was not written ({e})")


def _user_baseline(path: Path, model, samples) -> dict:
    """What the end-to-end check compares with: ONNX Runtime on the file as the user gave it.

    Only a model converted to the default opset on load differs from that file; its
    conversion is then judged like a cleanup pass.
    """
    from graphpress.ir.io import CONVERTED_FROM_KEY
    from graphpress.ir.numeric import check_runnable, run_samples

    check_runnable(model, str(path))
    if CONVERTED_FROM_KEY not in model.meta:
        return {}
    import onnx

    original = onnx.load(str(path))  # with its external data, as ONNX Runtime reads it
    return {"baseline_outputs": run_samples(original, samples, where=str(path)), "baseline_family": "cleanup", "baseline_model": original}


def _print_optimize_summary(before, after, result, numeric_inst, out) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    t = Table(title=f"wrote {out}")
    for col in ("pass", "modified", "seconds", "stats"):
        t.add_column(col)
    for rec in result.records:
        stats = ", ".join(f"{k}={v}" for k, v in rec.stats.items() if k != "warnings" and (v not in (0, False) or k == "fixpoint_reached"))
        t.add_row(rec.name, "yes" if rec.modified else "no", f"{rec.seconds:.3f}", stats)
    console.print(t)
    for rec in result.records:
        for warning in rec.stats.get("warnings", ()):
            print(f"warning: pass '{rec.name}': {warning}", file=sys.stderr)
    s = Table()
    for col in ("", "nodes", "params", "bytes", "MACs"):
        s.add_column(col, justify="right")
    for label, m in (("before", before), ("after", after)):
        s.add_row(label, f"{m.nodes:,}", f"{m.params:,}", _bytes(m.bytes), f"{m.macs:,}")
    console.print(s)
    if numeric_inst is not None:
        for line in verification_lines(numeric_inst):
            print(line)


def verification_lines(numeric_inst) -> list[str]:
    """What the end-to-end check compared, in words: always against the model the user gave."""
    final = numeric_inst.final
    rule = f"budget cosine >= {numeric_inst.min_cosine:g}" if numeric_inst.lossy else f"'{final.family}' tolerance"
    lines = [
        f"verification vs the input model ({final.inputs_source}): max_abs_diff={final.max_abs_diff:.3g} "
        f"cosine={final.min_cosine:.8f} ({rule}) -> {'PASS' if final.passed else 'FAIL'}"
    ]
    if final.amplified_by:
        nodes = ", ".join(f"'{a['node']}' ({a['op_type']})" for a in final.amplified_by)
        lines.append(f"  beyond the elementwise tolerance only where rounding within it was amplified by node(s) {nodes}, which compute correctly on their inputs")
    ref = numeric_inst.vs_reference
    if ref is not None:
        names = ", ".join(numeric_inst.rebased_by)
        lines.append(
            f"  the baseline moved on purpose ({names}): vs the masked reference max_abs_diff={ref.max_abs_diff:.3g} "
            f"cosine={ref.min_cosine:.8f} ('{ref.family}' tolerance) -> {'PASS' if ref.passed else 'FAIL'}"
        )
    return lines


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


def _check_artifact_path(path: str, input_path: Path) -> Path:
    """Fail before compiling when the artifact directory cannot be written."""
    from graphpress.backends.tvm.runtime import ARTIFACT_META

    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GraphpressError(f"{out}: cannot write the artifact, directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GraphpressError(f"{out}: cannot write the artifact, directory {parent} is not writable")
    if out.resolve() == input_path.resolve():
        raise GraphpressError(f"{out}: is the input model; write the artifact to another path")
    if out.exists() and not (out / ARTIFACT_META).is_file():
        raise GraphpressError(f"{out}: exists and is not a graphpress artifact; choose another -o path")
    return out


def cmd_compile(args) -> int:
    from graphpress.backends.tvm.build import compile_model
    from graphpress.backends.tvm.lower import dynamic_dims, shapes_of_samples
    from graphpress.backends.tvm.targets import resolve_target, target_facts
    from graphpress.passes.context import PassContext
    from graphpress.ir import load
    from graphpress.ir.io import check_writable
    from graphpress.ir.numeric import load_samples
    from graphpress.passes import InvariantInstrument, PassManager, build_passes
    from graphpress.passes.report import write_json_atomic

    spec = resolve_target(args.target)
    shapes = _parse_shapes(args.input_shape)
    passes = build_passes(args.passes) if args.passes else []
    out = _check_artifact_path(args.output, Path(args.model))
    for extra, what in ((args.report, "report"), (args.report_html, "--report-html")):
        if extra:
            check_writable(extra, what, Path(args.model))
    if args.require_faster and args.rpc:
        raise GraphpressError("--require-faster compares with ONNX Runtime on this machine; with --rpc the artifact runs on another device: drop one of them")
    if args.require_faster and not spec.is_host:
        raise GraphpressError(f"--require-faster: target {spec.name} does not run on this host, so its speed cannot be measured here")
    model = load(args.model)
    baseline = load(args.model) if passes else model  # what the user had: the artifact is measured against ORT on it
    dynamic = [d.strip() for d in args.dynamic.split(",") if d.strip()] if args.dynamic else None
    if dynamic:
        dynamic_dims(model, dynamic)  # a name the model does not have: one line, before anything else
    samples = load_samples(args.inputs, model) if args.inputs else None
    if samples:
        shapes = shapes_of_samples(model, samples, shapes, args.inputs, dynamic_dims(model, dynamic) if dynamic else None)
    pass_records = []
    trace = None
    if args.report_html:
        from graphpress.report_html import WeightTrace

        trace = WeightTrace()
        trace.run_start(model)
    try:
        if passes:
            context = PassContext(samples=samples, samples_source=str(args.inputs) if samples else "generated", target=target_facts(spec))
            instruments = [InvariantInstrument()] + ([trace] if trace is not None else [])
            pass_records = [r.to_dict() for r in PassManager(passes, instruments, context=context).run(model).records]
        # host targets: compile_model checks the code against ONNX Runtime on these samples and
        # raises (naming the first diverging node) before anything is written
        from rich.console import Console

        with Console(stderr=True).status(f"compiling for {spec.name}") as status:
            compiled = compile_model(
                model, spec, input_shapes=shapes, tune_trials=args.tune_trials, max_trials_per_task=args.max_trials_per_task, database=args.database,
                int8=args.int8, samples=samples, dynamic=dynamic, measure=not args.no_measure, baseline=baseline, require_faster=args.require_faster,
                progress=lambda line, t=time.perf_counter(): status.update(f"[{time.perf_counter() - t:.0f} s] {line}"), rpc=args.rpc,
            )  # fmt: skip
    except GraphpressError as e:
        if trace is not None:
            _html_of_failed_run(args.report_html, trace, e, "compile", model=args.model, compiled=None)
        raise
    compiled.save(out)
    build = compiled.meta["build"]
    if trace is not None:
        from graphpress.report_html import compile_page

        compile_page(args.report_html, trace=trace, records=pass_records, model=args.model, compiled=compiled)
        print(f"report: {args.report_html}")
    if args.report:
        write_json_atomic({"target": spec.config, "passes": pass_records, "build": build, "inputs": compiled.meta["inputs"]}, args.report)
    unscheduled = build.get("unscheduled_kernels") or []
    print(f"wrote {out} for {spec.name} {spec.to_json()}")
    frozen = compiled.meta.get("frozen_inputs") or []
    if frozen:
        fixed = ", ".join(f"{f['name']}={f['value']}" for f in frozen)
        print(f"fixed to the samples' values (they decide shapes; the artifact refuses others): {fixed}")
    if build.get("dynamic_dims"):
        where = "; ".join(f"{dim}: " + ", ".join(f"{i} axis {a}" for i, a in places) for dim, places in build["dynamic_dims"].items())
        print(f"dynamic dims (any size at run time; built without tuning or integer kernels): {where}")
    if spec.is_cpu:
        scheduled = build.get("scheduled_kernels", 0)
        print(f"kernels: {scheduled + len(unscheduled)}, scheduled by the tuning databases, graphpress's integer kernels or its analytic "
              f"matrix-product schedule ({build.get('analytic_scheduled_kernels', 0)}): {scheduled}, "
              f"without a tuned schedule: {len(unscheduled)}")  # fmt: skip
        if unscheduled:
            print(f"warning: {len(unscheduled)} kernel(s) have no tuned schedule ({build.get('generic_scheduled_kernels', 0)} of them "
                  f"got graphpress's generic parallel schedule, the rest TVM's default loop nests: slow); tune with --tune-trials N",
                  file=sys.stderr)
    if "int8" in build:
        i8 = build["int8"]
        counted = ", ".join(f"{n} {label}" for label, n in i8.get("instructions", {}).items())
        timed = f", timed on {i8['measured_on']}" if i8.get("measured_on") else ""
        print(f"int8 ({i8['isa']}): {i8['lowered']} layer(s) on integer kernels{f' ({counted})' if counted else ''}, "
              f"{i8['kept_fp32']} kept fp32 by the speed guard{timed}, {len(i8.get('fp32_layers', []))} QDQ layer(s) in fp32 (no integer kernel)")
        if (i8.get("model_guard") or {}).get("reason"):
            print(f"int8 whole-model guard: {i8['model_guard']['reason']}")
        if i8.get("hint"):
            print(f"int8 hint: {i8['hint']}")
    check = build.get("check_vs_onnxruntime")
    if check is not None:
        ran = f" (compiled code run on {check['ran_on']})" if check.get("ran_on", "this host") != "this host" else ""
        print(f"check vs ONNX Runtime{ran}: max_abs_diff={check['max_abs_diff']:.3g} cosine={check['cosine']:.8f} -> PASS")
    if build.get("vs_onnxruntime_note"):
        print(f"speed vs ONNX Runtime: {build['vs_onnxruntime_note']}; time the artifact there with graphpress bench --rpc")
    speed = build.get("vs_onnxruntime")
    if speed is not None:
        line = f"speed vs ONNX Runtime ({speed['onnxruntime']}, {speed['threads']} thread(s)): artifact {speed['artifact_ms']:.3f} ms, " \
               f"ORT on the model as given ({speed['model_as_given']}) {speed['onnxruntime_ms']:.3f} ms: {speed['speedup']:.2f}x"
        if "speedup_vs_fp32" in speed:
            line += f"; ORT on its fp32 counterpart {speed['onnxruntime_fp32_ms']:.3f} ms: {speed['speedup_vs_fp32']:.2f}x"
        print(line)
        if speed["slower"]:
            print(f"warning: {speed['verdict']}; ONNX Runtime on the model you had is the faster choice here", file=sys.stderr)
    return 0


def cmd_compress(args) -> int:
    import numpy as np

    from graphpress.compression import compress, parse_recover
    from graphpress.ir import load, save
    from graphpress.ir.io import check_writable
    from graphpress.ir.numeric import load_samples
    from graphpress.passes.report import write_json_atomic

    input_path = Path(args.model)
    if args.target == "onnxruntime":
        out = check_writable(args.output, "output", input_path)
    else:
        out = _check_artifact_path(args.output, input_path)
    for extra, what in ((args.onnx, "--onnx"), (args.report, "report"), (args.report_html, "--report-html")):
        if extra:
            check_writable(extra, what, input_path)
    model = load(input_path)
    samples = load_samples(args.samples, model) if args.samples else None
    if args.train_data and not args.recover:
        raise GraphpressError("--train-data: give --recover too (e.g. --recover epochs=3)")
    recover = parse_recover(args.recover) if args.recover else None
    train_data = load_samples(args.train_data, model) if args.train_data else None
    labels = None
    if args.labels:
        try:
            labels = np.load(args.labels, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise GraphpressError(f"{args.labels}: not a readable .npy of labels ({str(e).splitlines()[0][:120]})") from None
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("compressing") as status:
        result = compress(model, args.target, samples=samples, budget=_metric_budget(args) if args.metric else args.budget, recipe=args.recipe, labels=labels,
                          measure=not args.no_measure, progress=lambda line, t=time.perf_counter(): status.update(f"[{time.perf_counter() - t:.0f} s] {line}"),
                          rpc=args.rpc, recover=recover, train_data=train_data)  # fmt: skip
    if args.target == "onnxruntime":
        save(result.model, out)
    else:
        result.compiled.save(out)
        if args.onnx:
            save(result.model, args.onnx)
    if args.report:
        write_json_atomic(result.to_dict(), args.report)
    if args.report_html:
        from graphpress.report_html import compress_page

        compress_page(args.report_html, result, args.model)
    _print_compress(result, out)
    if args.report_html:
        print(f"report: {args.report_html}")
    return 0


def _import_callable(spec: str, option: str):
    """``MODULE:NAME`` imported (the current directory first on the path, as ``python -m`` has it)."""
    import importlib

    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise GraphpressError(f"{option} {spec}: give MODULE:FUNCTION, e.g. mymetrics:accuracy")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise GraphpressError(f"{option} {spec}: no module '{module_name}' on the Python path (the current directory is on it)") from None
        raise GraphpressError(f"{option} {spec}: importing '{module_name}' failed: {type(e).__name__}: {e}") from e
    except Exception as e:  # the user's module raised while importing
        raise GraphpressError(f"{option} {spec}: importing '{module_name}' failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise GraphpressError(f"{option} {spec}: module '{module_name}' has no function '{name}'")
    return fn


def _metric_budget(args):
    """``--metric M:F`` with ``--budget D`` (how much the metric may drop; ``1%`` is 0.01)."""
    from graphpress.pipelines import Budget

    text = (args.budget or "0.01").strip()
    try:
        drop = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        if drop < 0:
            raise ValueError
    except ValueError:
        raise GraphpressError(f"--budget {args.budget}: with --metric, give how much the metric may drop, e.g. 0.01 or 1%") from None
    fn = _import_callable(args.metric, "--metric")

    def metric(model) -> float:
        try:
            return float(fn(model))
        except GraphpressError:
            raise
        except Exception as e:  # the user's function: its error in one line, naming it
            raise GraphpressError(f"--metric {args.metric} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    return Budget.of_metric(metric, drop=drop)


def _print_compress(result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or a file gets the whole table
    recipe = result.recipe if result.recipe == result.chosen_recipe else f"{result.recipe} (chose {result.chosen_recipe})"
    t = Table(title=f"graphpress compress: {recipe} for {result.target}, budget {result.budget_text()}")
    for col in ("variant", "size on disk", "packed", "params", "MACs", "latency ms (p10-p90)", "vs ORT fp32", "held-out"):
        t.add_column(col, justify="left" if col in ("variant", "held-out") else "right")
    for row in result.rows:
        latency = f"{row['median_ms']:.3f} ({row['p10_ms']:.3f}-{row['p90_ms']:.3f})" if "median_ms" in row else "-"
        t.add_row(
            row["variant"], _bytes(row["onnx_bytes"]) if row.get("onnx_bytes") else "-", _bytes(row["packed_bytes"]) if row.get("packed_bytes") else "-",
            f"{row['params']:,}" if "params" in row else "-", f"{row['macs']:,}" if "macs" in row else "-", latency,
            f"{row['speedup']:.2f}x" if "speedup" in row else "-", row.get("held_out", row.get("note", "-")),
        )  # fmt: skip
    console.print(t)
    for step in result.steps:
        chosen = step.get("chosen") or f"skipped ({step.get('skipped', 'nothing chosen')})"
        # what was tried before the choice, or everything when nothing was chosen: the reasons
        tried = step.get("tried", [])[:-1] if step.get("chosen") else step.get("tried", [])
        print(f"step {step['stage']}: {chosen}" + "".join(f"\n  tried {spec}: {outcome}" for spec, outcome in tried))
    for note in result.notes:
        print(f"note: {note}")
    if result.onnxruntime_settings:
        chosen = result.onnxruntime_settings["chosen"]
        entries = "".join(f", {k}={v}" for k, v in chosen.get("config_entries", {}).items())
        print(f"ONNX Runtime settings (fastest of {len(result.onnxruntime_settings['candidates'])} timed here, {chosen['measured']['median_ms']:.3f} ms): "
              f"{chosen['graph_optimization_level']}, {chosen['intra_op_num_threads']} intra-op thread(s){entries}; stored in the model, "
              f"open it with graphpress.ort_session('{out}')")  # fmt: skip
    print(f"machine: {result.machine['cpu']}, {result.machine['threads']} threads; wrote {out} ({result.seconds:.0f} s)")


def cmd_bench(args) -> int:
    from graphpress.compression import bench
    from graphpress.ir import load
    from graphpress.ir.numeric import load_samples

    if not args.model and not args.artifact:
        raise GraphpressError("bench: give a model (.onnx), --artifact DIR, or both")
    if args.model and Path(args.model).is_dir() and not args.artifact:  # `bench ARTIFACT`
        args.artifact, args.model = args.model, None
    model = load(args.model) if args.model else None
    inputs = load_samples(args.inputs, model) if args.inputs and model is not None else None
    if args.inputs and model is None:
        from graphpress.ir.numeric import read_npz

        inputs = read_npz(args.inputs)
    module = None
    if args.torch:
        module = _import_callable(args.torch, "--torch")()
        if not hasattr(module, "eval") or not callable(module):
            raise GraphpressError(f"--torch {args.torch}: returned {type(module).__name__}, not a torch.nn.Module")
        module.eval()
    result = bench(model, artifact=args.artifact, inputs=inputs, int8=not args.no_int8, seconds=args.seconds, module=module, rpc=args.rpc)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"latency, batch as given: {result.machine['cpu']}, {result.machine['threads']} threads")
    base = "vs ORT fp32" if any(r["engine"] == "ONNX Runtime fp32" for r in result.rows) else f"vs {result.rows[0]['engine']}"
    for col in ("engine", "median ms", "p10 ms", "p90 ms", "runs", base):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for row in result.rows:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        t.add_row(row["engine"], f"{row['median_ms']:.3f}", f"{row['p10_ms']:.3f}", f"{row['p90_ms']:.3f}", str(row["runs"]), speedup)
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def cmd_run(args) -> int:
    import io

    import numpy as np

    from graphpress.backends.tvm.runtime import concrete_input_specs, load
    from graphpress.ir.atomic import write_bytes_atomic
    from graphpress.ir.io import check_writable
    from graphpress.ir.numeric import random_inputs, read_npz

    output = check_writable(args.output, "outputs", Path(args.artifact)) if args.output else None
    model = load(args.artifact, num_threads=args.threads, remote=args.rpc)
    feeds = read_npz(args.inputs) if args.inputs else random_inputs(concrete_input_specs(model.meta["inputs"]))  # dynamic dims at 1
    outputs = model.run_named(**feeds)
    if output is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        write_bytes_atomic(output, buffer.getbuffer())
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)} mean={float(value.mean()):.6g} std={float(value.std()):.6g}")
    if args.bench:
        stats = model.benchmark(**feeds, repeat=args.repeat)
        print(f"latency: median {stats['median_ms']:.3f} ms, mean {stats['mean_ms']:.3f} ms, min {stats['min_ms']:.3f} ms over {stats['repeat']} runs")
    model.release()  # a remote device is free again
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
