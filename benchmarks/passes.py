"""Benchmark graphpress's ``cleanup`` pipeline side by side with onnxslim.

What is measured, per model and per tool, in the same process and on the same input file:

* graphpress: ``gp.load(path)`` + ``PassManager(build_passes("cleanup")).run(model)``
  + ``gp.save(model, out)``;
* onnxslim: ``onnxslim.slim(path, out)`` with its default (normal) optimizations, which
  loads, optimizes to its own fixpoint, runs shape inference and saves. Its summary table
  is printed to stdout by onnxslim itself; that output is captured and discarded so that
  it does not land in the middle of this script's tables (the work stays in the timing).

Each timing is the median wall-clock time (``time.perf_counter``) of ``--repeat`` runs,
each run starting from the file on disk. Both tools are warmed up once on a tiny graph
before any timing, so one-off import costs are not charged to the first model.

Models:

1. ResNet-50 (``graphpress.models.resnet50``, random weights) exported with torch's
   dynamo exporter, ``optimize=False``: the raw export has real cleanup work in it.
2. A synthetic chain of ~2,000 nodes built with ``onnx.helper`` (opset 20, IR 10).
3. The same generator with 10x the blocks (~20,000 nodes).

Each synthetic block has work for every cleanup pass: a MatMul and an Add with small
float initializers, an Identity, a foldable constant subexpression
(``Add(Constant, Constant)`` feeding a ``Mul``), two identical ``Relu`` of the same input
(CSE), a dead node nothing uses (DCE) and a ``Reshape -> Reshape`` chain. Activations are
``[1, 16]`` so the time is dominated by graph size, not by math.

Both tools' outputs are run with ONNX Runtime on one random input and compared with the
original model (max abs diff, ``numpy.allclose(atol=1e-5)``) so that the comparison is
between equivalent results.

Goals:

* graphpress is no slower than onnxslim (ratio graphpress/onnxslim <= 1);
* the 20k-node graph takes <= 10x the time of the 2k-node graph (no quadratic passes).

Usage::

    python benchmarks/passes.py               # all three models, median of 3
    python benchmarks/passes.py --quick       # synthetic 2k graph only, one run
    python benchmarks/passes.py --repeat 5 --json results.json
"""

from __future__ import annotations

from _machine import banner
import argparse
import contextlib
import gc
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

import graphpress as gp
from graphpress.passes import PassManager, build_passes

#: Activation width of the synthetic graphs.
WIDTH = 16
#: Nodes in one synthetic block (see :func:`add_block`).
NODES_PER_BLOCK = 14
#: Tolerance of the output comparison with the original model.
ATOL = 1e-5
#: Goal: the 20k graph may take at most this many times the 2k graph.
SCALING_GOAL = 10.0
SMALL, LARGE = "synthetic-2k", "synthetic-20k"

console = Console()
if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
    console.width = max(console.width, 132)


# --------------------------------------------------------------------------- models


def add_block(nodes: list, inits: list, i: int, x: str, rng: np.random.Generator) -> str:
    """Append one block of :data:`NODES_PER_BLOCK` nodes reading ``x``; return its output."""
    p = f"b{i}_"
    weight = (rng.standard_normal((WIDTH, WIDTH)) * (0.5 / np.sqrt(WIDTH))).astype(np.float32)
    bias = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
    scale_a = (1.0 + rng.standard_normal(WIDTH) * 0.05).astype(np.float32)
    scale_b = (rng.standard_normal(WIDTH) * 0.05).astype(np.float32)
    inits += [numpy_helper.from_array(weight, p + "W"), numpy_helper.from_array(bias, p + "bias")]
    nodes += [
        helper.make_node("MatMul", [x, p + "W"], [p + "mm"], name=p + "matmul"),
        helper.make_node("Add", [p + "mm", p + "bias"], [p + "biased"], name=p + "add_bias"),
        helper.make_node("Identity", [p + "biased"], [p + "id"], name=p + "identity"),
        # constant subexpression: Add(Constant, Constant) folds to one initializer
        helper.make_node("Constant", [], [p + "ca"], name=p + "const_a", value=numpy_helper.from_array(scale_a)),
        helper.make_node("Constant", [], [p + "cb"], name=p + "const_b", value=numpy_helper.from_array(scale_b)),
        helper.make_node("Add", [p + "ca", p + "cb"], [p + "scale"], name=p + "const_add"),
        helper.make_node("Mul", [p + "id", p + "scale"], [p + "scaled"], name=p + "mul"),
        # duplicate computation, both used: CSE merges the two Relu
        helper.make_node("Relu", [p + "scaled"], [p + "r1"], name=p + "relu1"),
        helper.make_node("Relu", [p + "scaled"], [p + "r2"], name=p + "relu2"),
        helper.make_node("Add", [p + "r1", p + "r2"], [p + "sum"], name=p + "add_relus"),
        # dead branch: nothing reads its output
        helper.make_node("Sigmoid", [p + "sum"], [p + "dead"], name=p + "dead_sigmoid"),
        # Reshape -> Reshape chain collapses to one (a no-op here)
        helper.make_node("Reshape", [p + "sum", "shape_4x4"], [p + "r44"], name=p + "reshape1"),
        helper.make_node("Reshape", [p + "r44", "shape_1x16"], [p + "r116"], name=p + "reshape2"),
        helper.make_node("Tanh", [p + "r116"], [p + "out"], name=p + "tanh"),
    ]
    return p + "out"


def synthetic_model(blocks: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of ``blocks`` blocks (``blocks * NODES_PER_BLOCK`` nodes), opset 20, IR 10."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits = [
        numpy_helper.from_array(np.array([4, 4], dtype=np.int64), "shape_4x4"),
        numpy_helper.from_array(np.array([1, WIDTH], dtype=np.int64), "shape_1x16"),
    ]
    x = "x"
    for i in range(blocks):
        x = add_block(nodes, inits, i, x, rng)
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        nodes,
        f"synthetic_{blocks}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="graphpress-bench")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def write_synthetic(path: Path, target_nodes: int) -> Path:
    """Write a synthetic graph of about ``target_nodes`` nodes and check ORT can run it."""
    blocks = max(1, round(target_nodes / NODES_PER_BLOCK))
    onnx.save(synthetic_model(blocks), path)
    run_ort(path, random_feeds(path))  # loads and runs, or raises
    return path


def write_resnet50(path: Path) -> Path:
    """Export ResNet-50 (random weights) with graphpress's torch loader (``optimize=False``)."""
    import torch

    from graphpress.models import resnet50

    torch.manual_seed(0)
    gp.save(gp.load(resnet50().eval(), torch.randn(1, 3, 224, 224)), path)
    return path


# --------------------------------------------------------------------------- running


def graphpress_cleanup(src: Path, dst: Path) -> None:
    """graphpress: load + cleanup + save."""
    model = gp.load(src)
    PassManager(build_passes("cleanup")).run(model)
    gp.save(model, dst)


def onnxslim_slim(src: Path, dst: Path) -> None:
    """onnxslim: load + slim (default optimizations) + save, its summary table swallowed."""
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):
        onnxslim.slim(str(src), str(dst))


TOOLS: dict[str, Callable[[Path, Path], None]] = {"graphpress": graphpress_cleanup, "onnxslim": onnxslim_slim}


def time_runs(fn: Callable[[Path, Path], None], src: Path, dst: Path, repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` runs of ``fn(src, dst)``."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn(src, dst)
        times.append(time.perf_counter() - start)
    return times


def count_nodes(path: Path) -> int:
    """Nodes in all graphs of the file (``Constant`` nodes included), as graphpress counts them."""
    return gp.summarize(gp.load(path), shapes=False).nodes


def random_feeds(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """One random float input per graph input (symbolic dims set to 1)."""
    rng = np.random.default_rng(seed)
    session = ort_session(path)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        if inp.type != "tensor(float)":
            raise ValueError(f"{path.name}: input {inp.name} is {inp.type}; the benchmark feeds floats only")
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def ort_session(path: Path) -> ort.InferenceSession:
    """An ORT session that runs the graph as written (graph optimizations off)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort_session(path).run(None, feeds)


def compare(reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, bool]:
    """Max abs diff over all outputs and whether all are ``allclose`` within :data:`ATOL`."""
    if len(reference) != len(outputs):
        return float("inf"), False
    diff = max((float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(reference, outputs)), default=0.0)
    ok = all(a.shape == b.shape and np.allclose(a, b, atol=ATOL) for a, b in zip(reference, outputs))
    return diff, ok


# --------------------------------------------------------------------------- results


@dataclass
class ToolResult:
    seconds: float
    runs: list[float]
    nodes_after: int
    max_abs_diff: float
    outputs_match: bool


@dataclass
class ModelResult:
    model: str
    nodes_before: int
    tools: dict[str, ToolResult] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.tools["graphpress"].seconds / self.tools["onnxslim"].seconds


def benchmark_model(name: str, src: Path, workdir: Path, repeat: int) -> ModelResult:
    """Time both tools on ``src`` and check their outputs against the original."""
    feeds = random_feeds(src)
    reference = run_ort(src, feeds)
    result = ModelResult(name, count_nodes(src))
    for tool, fn in TOOLS.items():
        dst = workdir / f"{src.stem}.{tool}.onnx"
        runs = time_runs(fn, src, dst, repeat)  # no spinner: its refresh thread would share the GIL
        diff, ok = compare(reference, run_ort(dst, feeds))
        result.tools[tool] = ToolResult(statistics.median(runs), runs, count_nodes(dst), diff, ok)
        console.log(f"{name}: {tool} {statistics.median(runs):.3f}s (runs {', '.join(f'{t:.3f}' for t in runs)})")
    return result


def scaling(results: list[ModelResult]) -> dict[str, float] | None:
    """``t(20k) / t(2k)`` per tool, when both synthetic graphs were measured."""
    by_name = {r.model: r for r in results}
    if SMALL not in by_name or LARGE not in by_name:
        return None
    return {tool: by_name[LARGE].tools[tool].seconds / by_name[SMALL].tools[tool].seconds for tool in TOOLS}


def warm_up(workdir: Path) -> None:
    """Run both tools once on a tiny graph so lazy imports are not timed."""
    src = write_synthetic(workdir / "warmup.onnx", 3 * NODES_PER_BLOCK)
    for tool, fn in TOOLS.items():
        fn(src, workdir / f"warmup.{tool}.onnx")


# --------------------------------------------------------------------------- reporting

COLUMNS = [
    "model",
    "nodes before",
    "gp nodes after",
    "slim nodes after",
    "graphpress s",
    "onnxslim s",
    "gp/slim",
    "gp max|diff|",
    "slim max|diff|",
]


def row_cells(r: ModelResult) -> list[str]:
    g, s = r.tools["graphpress"], r.tools["onnxslim"]

    def diff(t: ToolResult) -> str:
        return f"{t.max_abs_diff:.1e}" + ("" if t.outputs_match else " MISMATCH")

    return [
        r.model,
        f"{r.nodes_before:,}",
        f"{g.nodes_after:,}",
        f"{s.nodes_after:,}",
        f"{g.seconds:.3f}",
        f"{s.seconds:.3f}",
        f"{r.ratio:.2f}x",
        diff(g),
        diff(s),
    ]


def scaling_cells(ratios: dict[str, float]) -> list[list[str]]:
    return [[tool, f"{ratio:.2f}x", "yes" if ratio <= SCALING_GOAL else "NO"] for tool, ratio in ratios.items()]


SCALING_COLUMNS = ["tool", f"t({LARGE}) / t({SMALL})", f"<= {SCALING_GOAL:g}x"]


def rich_table(results: list[ModelResult], repeat: int) -> Table:
    table = Table(title=f"load + cleanup + save, median of {repeat} (wall clock)")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in results:
        cells = row_cells(r)
        cells[6] = f"[{'green' if r.ratio <= 1 else 'red'}]{cells[6]}[/]"
        table.add_row(*cells)
    return table


def rich_scaling_table(ratios: dict[str, float]) -> Table:
    table = Table(title="scaling: 10x the nodes")
    for i, col in enumerate(SCALING_COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right")
    for cells in scaling_cells(ratios):
        table.add_row(*cells)
    return table


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(columns) - 1)
    return "\n".join([line(columns), "| " + " | ".join(align) + " |", *(line(r) for r in rows)])


def markdown_report(results: list[ModelResult], ratios: dict[str, float] | None, repeat: int) -> str:
    parts = [
        f"load + cleanup + save, median of {repeat} runs (wall clock, {platform.machine()}, {os.cpu_count()} CPUs):",
        "",
        markdown_table(COLUMNS, [row_cells(r) for r in results]),
    ]
    if ratios:
        parts += ["", markdown_table(SCALING_COLUMNS, scaling_cells(ratios))]
    return "\n".join(parts)


def environment() -> dict[str, str]:
    import onnx_ir
    import onnxscript
    import onnxslim

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "graphpress": gp.__version__,
        "onnxslim": onnxslim.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": ort.__version__,
    }


def write_json(path: Path, results: list[ModelResult], ratios: dict[str, float] | None, repeat: int) -> None:
    payload = {
        "repeat": repeat,
        "environment": environment(),
        "models": [{**asdict(r), "graphpress_over_onnxslim": r.ratio} for r in results],
        "scaling_20k_over_2k": ratios,
        "goals": {"graphpress_over_onnxslim_max": 1.0, "scaling_max": SCALING_GOAL},
    }
    path.write_text(json.dumps(payload, indent=2))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and model; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: synthetic 2k graph only, one run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    print(banner(), flush=True)
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        parser.error("--repeat must be >= 1")

    results: list[ModelResult] = []
    with tempfile.TemporaryDirectory(prefix="graphpress-bench-") as tmp:
        workdir = Path(tmp)
        with console.status("warming up"):
            warm_up(workdir)
        models: list[tuple[str, Callable[[], Path]]] = []
        if not args.quick:
            models.append(("resnet50", lambda: write_resnet50(workdir / "resnet50.onnx")))
        models.append((SMALL, lambda: write_synthetic(workdir / "synthetic_2k.onnx", 2_000)))
        if not args.quick:
            models.append((LARGE, lambda: write_synthetic(workdir / "synthetic_20k.onnx", 20_000)))
        for name, make in models:
            with console.status(f"{name}: building"):
                src = make()
            results.append(benchmark_model(name, src, workdir, repeat))

    ratios = scaling(results)
    console.print(rich_table(results, repeat))
    if ratios:
        console.print(rich_scaling_table(ratios))
    mismatches = [f"{r.model}/{t}" for r in results for t, tr in r.tools.items() if not tr.outputs_match]
    if mismatches:
        console.print(f"[red]outputs differ from the original beyond atol={ATOL:g}: {', '.join(mismatches)}[/]")
    console.print("\nMarkdown:\n")
    print(markdown_report(results, ratios, repeat))
    if args.json:
        write_json(args.json, results, ratios, repeat)
        console.print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
