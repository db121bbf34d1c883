"""ONNX's backend node tests through graphpress: the passes path and the compile path.

The onnx wheel ships the generators of its node tests, not their data: the cases are
regenerated in memory (``onnx.backend.test.case.node.collect_testcases()``, each a model of
one node, or of one function's expansion, with its inputs and expected outputs). A case
counts where ONNX Runtime on the original model loads it and reproduces the expected outputs
(the case's own rtol/atol, as ONNX's backend runner checks them). Each counted case goes
through

* **passes**: ``load`` -> ``cleanup,fuse`` (invariants checked, no numeric check: the passes
  are what is measured) -> ``save`` -> ONNX Runtime, compared with ONNX Runtime on the
  original by the fusion tolerance (the looser of the two lossless families);
* **compile**: ``load`` -> ``compile_model(x86, input shapes and check samples from the
  case's data)`` -> run, compared with ONNX Runtime on the original by the backend's
  tolerance. ``compile_model`` checks its code against ONNX Runtime itself: a lowering that
  computes something else is *refused* by that check (counted apart as ``caught``: what
  TVM lowers wrong), and ``wrong`` is what would reach a user despite it.

and ends as ``ok``, ``refused`` (a :class:`GraphpressError`: one line naming the op),
``crash`` (any other exception, a timeout or a dead process) or ``wrong`` (outputs differ).
Each case runs in a forked child with a time limit, so a crash in TVM's C++ costs one case.

    python benchmarks/conformance.py                 # every case, both paths, table per op
    python benchmarks/conformance.py --sample 250    # a seeded sample
    python benchmarks/conformance.py --op Gemm --path compile -v
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATHS = ("passes", "compile")
TIMEOUT_S = 120


def collect(op: str | None = None) -> list:
    """ONNX's node test cases (regenerated in memory), sorted by name."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(op)
    return sorted({c.name: c for c in cases if c.model is not None and c.data_sets}.values(), key=lambda c: c.name)


def op_of(case) -> str:
    return case.model.graph.node[0].op_type if len(case.model.graph.node) == 1 else case.name.split("_expanded")[0].removeprefix("test_") + " (expanded)"


def _feeds(case) -> dict:
    inputs, _ = case.data_sets[0]
    names = [i.name for i in case.model.graph.input]
    return dict(zip(names, inputs))


def _ort_session(proto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def reference(case) -> dict | None:
    """ONNX Runtime's outputs on the original, or None when ORT cannot load the case or does
    not reproduce the expected outputs (the case then does not count)."""
    _, expected = case.data_sets[0]
    try:
        sess = _ort_session(case.model)
        got = sess.run(None, _feeds(case))
    except Exception:
        return None
    for g, e in zip(got, expected):
        if not isinstance(e, np.ndarray):
            continue
        g = np.asarray(g)
        if g.shape != e.shape:
            return None
        if e.dtype.kind in "fc":
            if not np.allclose(g.astype(np.float64), e.astype(np.float64), rtol=case.rtol, atol=case.atol, equal_nan=True):
                return None
        elif e.dtype.kind in "biu" and not np.array_equal(g, e):
            return None
    return {o.name: v for o, v in zip(case.model.graph.output, got)}


def _compare(ref: dict, got: dict, family: str, precision) -> str | None:
    from graphpress.ir.numeric import compare_outputs

    report = compare_outputs(ref, got, family, "the case's inputs", precision=precision)
    return None if report.passed else report.describe_failure()


def run_passes(case, ref: dict) -> tuple[str, str]:
    import graphpress as gp
    from graphpress.ir.numeric import lowest_float_precision
    from graphpress.passes import InvariantInstrument, PassManager, build_passes

    model = gp.load(case.model)
    precision = lowest_float_precision(model)
    PassManager(build_passes("cleanup,fuse"), [InvariantInstrument()]).run(model)
    with tempfile.TemporaryDirectory() as d:
        path = gp.save(model, Path(d) / "m.onnx")
        import onnx

        sess = _ort_session(onnx.load(str(path)))
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, _feeds(case))))
    if set(got) != set(ref):
        return "wrong", f"outputs {sorted(got)} instead of {sorted(ref)}"
    failure = _compare(ref, got, "fusion", precision)
    return ("wrong", failure) if failure else ("ok", "")


def run_compile(case, ref: dict, verify: bool = True) -> tuple[str, str]:
    import graphpress as gp
    from graphpress.backends.tvm import compile_model
    from graphpress.ir.numeric import lowest_float_precision

    model = gp.load(case.model)
    precision = lowest_float_precision(model)
    feeds = _feeds(case)
    shapes = {n: list(a.shape) for n, a in feeds.items() if isinstance(a, np.ndarray)}
    compiled = compile_model(model, "x86", input_shapes=shapes, verify=verify, samples=[feeds])
    outs = compiled(**feeds)
    got = dict(zip(ref, outs))
    failure = _compare(ref, got, "backend", precision)
    return ("wrong", failure) if failure else ("ok", "")


def _child(case, path: str, conn) -> None:
    from graphpress.errors import GraphpressError, one_line

    warnings.simplefilter("ignore")
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ref = reference(case)
            if ref is None:
                result = ("n/a", "ONNX Runtime does not reproduce the expected outputs")
            else:
                result = (run_passes if path == "passes" else run_compile)(case, ref)
    except GraphpressError as e:
        result = ("refused", one_line(e, 300))
    except BaseException as e:  # noqa: BLE001 - a crash is what is counted
        result = ("crash", f"{type(e).__name__}: {one_line(e, 300, last=True)}")
    conn.send(result)
    conn.close()
    os._exit(0)  # no atexit handlers of the parent's libraries in a forked child


def run_case(case, path: str, timeout: float = TIMEOUT_S) -> tuple[str, str]:
    """(outcome, detail) of one case through one path, in a forked child."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, path, child))
    proc.start()
    child.close()
    if parent.poll(timeout):
        try:
            result = parent.recv()
        except EOFError:
            result = ("crash", f"the process died (exit {proc.exitcode})")
    else:
        proc.kill()
        result = ("crash", f"no result within {timeout:.0f} s")
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    if proc.exitcode not in (0, None) and result[0] == "ok":
        result = ("crash", f"exit {proc.exitcode}")
    return result


def warm() -> None:
    """Import what the children use, once, before forking them (each would take seconds)."""
    import onnxruntime  # noqa: F401
    from tvm.relax.frontend import onnx as _  # noqa: F401

    import graphpress  # noqa: F401
    from graphpress.backends.tvm import build  # noqa: F401
    from graphpress.passes import build_passes

    build_passes("cleanup,fuse")


def run_all(cases, paths=PATHS, jobs: int = 1, timeout: float = TIMEOUT_S, progress=None) -> list[dict]:
    """Every case through every path; ``jobs`` cases at once (threads waiting on forked children)."""
    from concurrent.futures import ThreadPoolExecutor

    warm()

    def one(case):
        row = {"case": case.name, "op": op_of(case)}
        for path in paths:
            t = time.perf_counter()
            row[path], row[f"{path}_detail"] = run_case(case, path, timeout)
            row[f"{path}_s"] = round(time.perf_counter() - t, 2)
            if row[path] == "n/a":
                for p in paths:
                    row[p] = "n/a"
                break
        if progress:
            progress(row)
        return row

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cases))


def summarize(rows: list[dict], paths=PATHS) -> str:
    counted = [r for r in rows if r[paths[0]] != "n/a"]
    lines = [f"{len(rows)} cases, {len(counted)} where ONNX Runtime reproduces the expected outputs"]
    for path in paths:
        c = collections.Counter(r[path] for r in counted)
        share = 100 * c["ok"] / len(counted) if counted else 0.0
        caught = sum(1 for r in counted if r[path] == "refused" and "differs from ONNX Runtime" in r[path + "_detail"])
        lines.append(f"{path:8s} ok {c['ok']:5d} ({share:5.1f}%)  refused {c['refused']:4d} (caught by the check: {caught})  "
                     f"crash {c['crash']:3d}  wrong {c['wrong']:3d}")  # fmt: skip
    return "\n".join(lines)


def by_op(rows: list[dict], paths=PATHS) -> str:
    ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        if r[paths[0]] == "n/a":
            continue
        for path in paths:
            ops[r["op"]][(path, r[path])] += 1
    lines = ["| op | " + " | ".join(f"{p} ok/refused/crash/wrong" for p in paths) + " |", "|---|" + "---|" * len(paths)]
    for op in sorted(ops):
        c = ops[op]
        lines.append(f"| {op} | " + " | ".join("/".join(str(c[(p, k)]) for k in ("ok", "refused", "crash", "wrong")) for p in paths) + " |")
    return "\n".join(lines)


def main() -> int:
    from _machine import banner

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, help="a seeded sample of this many cases (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--op", help="only the cases of this op type")
    ap.add_argument("--path", choices=PATHS, action="append", help="one path (default: both)")
    ap.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case that is not ok")
    args = ap.parse_args()
    print(banner())
    cases = collect(args.op)
    if args.sample and args.sample < len(cases):
        cases = sorted(random.Random(args.seed).sample(cases, args.sample), key=lambda c: c.name)
    paths = tuple(args.path or PATHS)
    done = [0]

    def progress(row):
        done[0] += 1
        bad = [f"{p}={row[p]}: {row[p + '_detail']}" for p in paths if row[p] not in ("ok", "n/a")]
        if bad and args.verbose:
            print(f"[{done[0]}/{len(cases)}] {row['case']}: " + "; ".join(bad), flush=True)
        elif done[0] % 100 == 0:
            print(f"[{done[0]}/{len(cases)}]", flush=True)

    t = time.perf_counter()
    rows = run_all(cases, paths, args.jobs, args.timeout, progress)
    print(f"\n{summarize(rows, paths)}\n({time.perf_counter() - t:.0f} s)\n")
    print(by_op(rows, paths))
    for path in paths:
        bad = [r for r in rows if r[path] in ("crash", "wrong", "refused")]
        if bad:
            print(f"\n{path}: not ok")
            for r in bad:
                print(f"  {r[path]:7s} {r['case']}: {r[path + '_detail']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
