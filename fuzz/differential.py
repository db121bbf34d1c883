#!/usr/bin/env python3
"""Differential fuzzing: every pass family and the x86 compile, against ONNX Runtime on the
graph as it was generated.

Runs in the project's venv on graphs written by ``fuzz/generate.py`` (NNSmith, its own venv):

    .venv/bin/python fuzz/differential.py GRAPHS_DIR [--jobs 2] [--families ...] [--json OUT]

For each graph ``gNNNNNN.onnx`` with its inputs ``gNNNNNN.npz`` the reference is ONNX Runtime
(CPU, graph optimizations off) on the file itself. Each family runs the CLI as a user would
(``graphpress optimize G -o OUT --passes SPEC --verify --inputs G.npz --report R``, or
``graphpress compile G --target x86 -o ART --inputs G.npz``) in a worker process, and the
outcome is one of:

* ``ok``: exit 0, and the output is right: it loads in ONNX Runtime from another directory,
  refers to no other file, has the reference's outputs (names, dtypes, shapes), and its values
  are within the family's tolerance of the reference (lossless families, the compiled
  artifact) or, for lossy families (run with ``--min-cosine -1``, so only the per-pass checks
  can refuse), the cosine the report claims against the input is the one recomputed here.
  A lossless output beyond the elementwise tolerance counts as ok only when the report
  discloses the nodes that amplified rounding within tolerance (``amplified_by``, see
  ``graphpress.ir.divergence``); the tally counts those apart;
* ``refused``: exit 2 with one line that is not a bug report, tallied by reason;
* ``crash``: a traceback, a pass that raised (``PassFailedError``), a pass that broke the IR,
  an exit 0 whose output ONNX Runtime cannot load, a dead worker or a timeout;
* ``wrong``: an exit 0 whose output differs from the reference beyond tolerance or misreports
  its verification, or a lossless pass that ``--verify`` caught changing the outputs.

The comparisons here are written out with numpy and do not call graphpress's own checker.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

#: family -> (SPEC, lossless?): ``None`` SPEC means the x86 compile
FAMILIES: dict[str, tuple[str | None, bool]] = {
    "cleanup": ("cleanup", True),
    "fuse": ("fuse", True),
    "dedup": ("dedup", True),
    "prune": ("prune:ratio=0.5", False),
    "quantize-static": ("quantize", False),
    "quantize-dynamic": ("quantize:mode=dynamic", False),
    "share": ("share", False),
    "compile-x86": (None, True),
}

#: independent tolerances (atol, rtol) per output dtype: lossless passes, and the compiled code
#: (different kernels, same math). An opset conversion on load is a cleanup-level change.
LOSSLESS = {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-5), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
BACKEND = {"float64": (1e-10, 1e-8), "float32": (1e-5, 1e-4), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)}

GRAPH_TIMEOUT_S = 600


# ---------------------------------------------------------------------------- reference


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    old = os.getcwd()
    os.chdir("/")  # relative external-data paths must not depend on where we run
    try:
        return ort.InferenceSession(str(path.resolve()), opts, providers=["CPUExecutionProvider"])
    finally:
        os.chdir(old)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))


_PRECISION = ("bfloat16", "float16", "float32", "float64")


def least_precision(path: Path) -> str:
    """The least precise float type anywhere in the graph (an output is only as precise as its math)."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=False)
    g = proto.graph
    types = [v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)] + [t.data_type for t in g.initializer]
    types += [a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    names = {onnx.helper.tensor_dtype_to_np_dtype(t).name for t in types if t in (1, 10, 11, 16)}
    return next((n for n in _PRECISION if n in names), "float64")


def _close(ref: np.ndarray, new: np.ndarray, table: dict[str, tuple[float, float]], precision: str = "float64") -> str | None:
    """None when ``new`` matches ``ref`` (NaN where NaN, same infinities), else why not."""
    if ref.shape != new.shape or ref.dtype != new.dtype:
        return f"{new.dtype}{list(new.shape)} instead of {ref.dtype}{list(ref.shape)}"
    if ref.dtype.kind not in "fc":
        bad = int(np.count_nonzero(ref != new))
        return f"{bad} integer elements differ" if bad else None
    judged = min(ref.dtype.name, precision, key=lambda n: _PRECISION.index(n) if n in _PRECISION else 2)
    atol, rtol = table.get(judged, table["float32"])
    r, n = ref.astype(np.float64), new.astype(np.float64)
    if not np.array_equal(np.isnan(r), np.isnan(n)):
        return "NaN in different places"
    finite = np.isfinite(r)
    if not np.array_equal(r[~finite & ~np.isnan(r)], n[~finite & ~np.isnan(r)]):
        return "infinities differ"
    diff = np.abs(n[finite] - r[finite])
    allowed = atol + rtol * np.abs(r[finite])
    if np.any(~(diff <= allowed)):
        return f"max |diff| {float(np.nanmax(diff)):.3g} beyond atol {atol:g} + rtol {rtol:g}"
    return None


def _cosine(ref: np.ndarray, new: np.ndarray) -> float:
    r = np.nan_to_num(ref.astype(np.float64).ravel())
    n = np.nan_to_num(new.astype(np.float64).ravel())
    nr, nn = np.linalg.norm(r), np.linalg.norm(n)
    if nr == 0 and nn == 0:
        return 1.0
    if nr == 0 or nn == 0:
        return 0.0
    return float(np.dot(r, n) / (nr * nn))


# ---------------------------------------------------------------------------- one graph


_BUG_MARKERS = ("it is a bug in that pass", "IR invariant violation", "Traceback")


def _classify_refusal(line: str, lossless: bool) -> tuple[str, str]:
    if any(m in line for m in _BUG_MARKERS):
        return "crash", line
    if "produced a model ONNX Runtime cannot run" in line or (lossless and "changed the outputs beyond its" in line):
        return "wrong", "caught by --verify: " + line
    return "refused", line


def _reason(line: str) -> str:
    """A refusal line without what differs from graph to graph (paths, names, numbers)."""
    text = re.sub(r"^graphpress: error: ", "", line)
    text = re.sub(r"/\S+\.(onnx|npz|json)", "FILE", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return text[:160]


def _cli(argv: list[str]) -> tuple[int, str]:
    from graphpress.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    lines = [line for line in err.getvalue().splitlines() if line.strip() and not line.startswith("warning:")]
    return code, lines[-1] if lines else ""


def _check_optimize(graph: Path, npz: Path, feeds, ref, spec: str, lossless: bool, work: Path) -> dict:
    out, report = work / "out.onnx", work / "report.json"
    argv = ["optimize", str(graph), "-o", str(out), "--passes", spec, "--verify", "--inputs", str(npz), "--report", str(report)]
    if not lossless:
        argv += ["--min-cosine", "-1"]
    code, line = _cli(argv)
    if code == 2:
        outcome, detail = _classify_refusal(line, lossless)
        return {"outcome": outcome, "detail": detail}
    if code != 0:
        return {"outcome": "crash", "detail": f"exit {code}: {line}"}
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("out.onnx", "report.json"))
    if leftovers:
        return {"outcome": "wrong", "detail": f"stray files {leftovers}"}
    import onnx

    proto = onnx.load(str(out), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return {"outcome": "wrong", "detail": "output refers to an external data file"}
    try:
        got = _run(out, feeds)
    except Exception as e:  # noqa: BLE001 - ORT cannot load or run what we wrote
        return {"outcome": "crash", "detail": f"ONNX Runtime cannot run the output: {str(e).splitlines()[0][:200]}"}
    if list(got) != list(ref):
        return {"outcome": "wrong", "detail": f"outputs {list(got)} instead of {list(ref)}"}
    verification = json.loads(report.read_text())["verification"]
    amplified = verification.get("amplified_by")
    for (name, r), (_, n) in zip(ref.items(), got.items()):
        if lossless:
            why = _close(r, n, LOSSLESS, least_precision(graph))
            if why and not amplified:
                return {"outcome": "wrong", "detail": f"output '{name}': {why}"}
        elif r.shape != n.shape or r.dtype != n.dtype:
            return {"outcome": "wrong", "detail": f"output '{name}': {n.dtype}{list(n.shape)} instead of {r.dtype}{list(r.shape)}"}
    claimed = {o["name"]: o["cosine"] for o in verification["outputs"]}
    for name, r in ref.items():
        c = claimed.get(name)
        if isinstance(c, (int, float)) and abs(c - _cosine(r, got[name])) > 1e-6:
            return {"outcome": "wrong", "detail": f"output '{name}': report claims cosine {c:.8f}, it is {_cosine(r, got[name]):.8f}"}
    result = {"outcome": "ok", "cosine": min((_cosine(ref[k], got[k]) for k in ref), default=1.0)}
    if amplified:  # beyond the elementwise tolerance, disclosed and attributed (graphpress.ir.divergence)
        result["amplified_by"] = [a["node"] for a in amplified]
    return result


def _check_compile(graph: Path, npz: Path, feeds, ref, work: Path) -> dict:
    art = work / "artifact"
    code, line = _cli(["compile", str(graph), "--target", "x86", "-o", str(art), "--inputs", str(npz)])
    if code == 2:
        outcome, detail = _classify_refusal(line, True)
        return {"outcome": outcome, "detail": detail}
    if code != 0:
        return {"outcome": "crash", "detail": f"exit {code}: {line}"}
    from graphpress.backends.tvm.runtime import load

    compiled = load(art)
    got = compiled.run_named(**{k: v for k, v in feeds.items() if k in compiled.input_names})
    for name, r in ref.items():
        if name not in got:
            return {"outcome": "wrong", "detail": f"artifact has no output '{name}'"}
        why = _close(r, got[name], BACKEND, least_precision(graph))
        if why:
            return {"outcome": "wrong", "detail": f"output '{name}': {why}"}
    return {"outcome": "ok"}


def _on_alarm(signum, frame):
    raise TimeoutError(f"over {GRAPH_TIMEOUT_S} s")


def check_graph(graph: str, families: list[str]) -> dict:
    """Every family on one graph (in a worker process)."""
    graph_path = Path(graph)
    npz = graph_path.with_suffix(".npz")
    with np.load(npz) as data:
        feeds = {k: data[k] for k in data.files}
    result: dict = {"graph": graph_path.name, "families": {}}
    try:
        ref = _run(graph_path, feeds)
    except Exception as e:  # noqa: BLE001
        result["skipped"] = f"ONNX Runtime cannot run the generated graph: {str(e).splitlines()[0][:200]}"
        return result
    signal.signal(signal.SIGALRM, _on_alarm)
    for family in families:
        spec, lossless = FAMILIES[family]
        work = Path(tempfile.mkdtemp(prefix=f"{graph_path.stem}.{family}."))
        started = time.perf_counter()
        signal.alarm(GRAPH_TIMEOUT_S)
        try:
            if spec is None:
                outcome = _check_compile(graph_path, npz, feeds, ref, work)
            else:
                outcome = _check_optimize(graph_path, npz, feeds, ref, spec, lossless, work)
        except TimeoutError as e:
            outcome = {"outcome": "crash", "detail": f"timeout: {e}"}
        except BaseException as e:  # noqa: BLE001 - a traceback is what we are looking for
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
            outcome = {"outcome": "crash", "detail": f"{type(e).__name__} at {where}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        finally:
            signal.alarm(0)
            shutil.rmtree(work, ignore_errors=True)
        outcome["seconds"] = round(time.perf_counter() - started, 2)
        result["families"][family] = outcome
    return result


def _worker_init() -> None:
    os.environ["TVM_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    import warnings

    warnings.filterwarnings("ignore")


# ---------------------------------------------------------------------------- many graphs


#: fresh worker processes (forking a process that runs TVM's or ORT's threads can deadlock)
_SPAWN = multiprocessing.get_context("spawn")


def run_all(graphs: list[Path], families: list[str], jobs: int, progress=None) -> list[dict]:
    """Check every graph; a worker that dies marks its graph as a crash and the pool restarts."""
    pending = [str(g) for g in graphs]
    results: list[dict] = []
    while pending:
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init, mp_context=_SPAWN) as pool:
            futures = {pool.submit(check_graph, g, families): g for g in pending}
            broken = False
            for future in concurrent.futures.as_completed(futures):
                graph = futures[future]
                try:
                    results.append(future.result())
                    pending.remove(graph)
                except concurrent.futures.process.BrokenProcessPool:
                    broken = True
                    break
                if progress:
                    progress(len(results), len(graphs))
        if broken:  # which graph killed the worker is unknown: rerun the rest one at a time
            for graph in list(pending):
                with concurrent.futures.ProcessPoolExecutor(max_workers=1, initializer=_worker_init, mp_context=_SPAWN) as solo:
                    try:
                        results.append(solo.submit(check_graph, graph, families).result())
                    except concurrent.futures.process.BrokenProcessPool:
                        results.append({"graph": Path(graph).name, "families": {f: {"outcome": "crash", "detail": "worker process died"} for f in families}})
                pending.remove(graph)
    return sorted(results, key=lambda r: r["graph"])


def tally(results: list[dict], families: list[str]) -> dict:
    table = {}
    for family in families:
        counts = collections.Counter()
        reasons = collections.Counter()
        bad = []
        for r in results:
            if "skipped" in r or family not in r["families"]:
                continue
            o = r["families"][family]
            counts[o["outcome"]] += 1
            counts["amplified"] += bool(o.get("amplified_by"))
            if o["outcome"] == "refused":
                reasons[_reason(o["detail"])] += 1
            elif o["outcome"] in ("crash", "wrong"):
                bad.append(f"{r['graph']}: {o['outcome']}: {o['detail']}")
        table[family] = {"graphs": sum(counts[k] for k in ("ok", "refused", "crash", "wrong")), **{k: counts[k] for k in ("ok", "amplified", "refused", "crash", "wrong")},
                         "refusal_reasons": reasons.most_common(), "failures": bad}  # fmt: skip
    return table


def machine() -> str:
    model, flags = platform.processor() or "?", []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8") if f in have]
                break
    return f"{model}; {os.cpu_count()} CPUs; ISA flags: {' '.join(flags) or 'none found'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", type=Path, help="directory of gNNNNNN.onnx + .npz (fuzz/generate.py)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, help="only the first N graphs")
    ap.add_argument("--json", type=Path, help="write every result and the tally here")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown family {unknown[0]}; choose from {', '.join(FAMILIES)}")
    graphs = sorted(args.graphs.glob("g*.onnx"))[: args.limit]
    print(f"machine: {machine()}")
    print(f"{len(graphs)} graphs x {len(families)} families, {args.jobs} workers")
    started = time.perf_counter()

    def progress(done, total):
        if done % 25 == 0 or done == total:
            print(f"  {done}/{total} graphs, {time.perf_counter() - started:.0f} s", flush=True)

    results = run_all(graphs, families, args.jobs, progress)
    table = tally(results, families)
    skipped = [r for r in results if "skipped" in r]
    print(f"\n{len(results) - len(skipped)} graphs checked ({len(skipped)} skipped: ONNX Runtime cannot run them as generated), "
          f"{time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| family | graphs | ok | of which amplified rounding | refused | crash | wrong |\n|---|---:|---:|---:|---:|---:|---:|")
    for family, row in table.items():
        print(f"| {family} | {row['graphs']} | {row['ok']} | {row['amplified']} | {row['refused']} | {row['crash']} | {row['wrong']} |")
    for family, row in table.items():
        if row["refusal_reasons"]:
            print(f"\nrefusals, {family}:")
            for reason, n in row["refusal_reasons"]:
                print(f"  {n:4d}  {reason}")
        for line in row["failures"]:
            print(f"FAIL {family}: {line}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "families": families, "tally": table, "results": results}, indent=1))
    return 1 if any(row["crash"] or row["wrong"] for row in table.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
