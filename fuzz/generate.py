#!/usr/bin/env python3
"""Generate random ONNX graphs with NNSmith, deterministically from a seed.

Runs INSIDE the fuzz venv made by fuzz/setup-venv.sh (NOT the project venv):

    .fuzz-venv/bin/python fuzz/generate.py --out DIR --count N --seed S [--max-nodes K]

Graph i (0 <= i < N) is generated from seed S+i and written as

    DIR/g{seed:06d}.onnx   self-contained model (weights inline), opset 14, IR version 7
    DIR/g{seed:06d}.npz    its inputs, keys = graph input names, made by NNSmith's own
                           input search (gradient/sampling search for inputs that keep every
                           intermediate value free of NaN/Inf; NNSmith's random inputs if
                           the search finds none)
    DIR/manifest.json      what was generated (ops, dtypes, shapes, input source...) and
                           which seeds failed, at which stage and why

The same seed gives byte-identical .onnx and .npz files, whatever the machine speed and
whichever other seeds run in the same process (see "Determinism" below). NNSmith's
operator/dtype table ("topset") is read from fuzz/nnsmith-topset.json, made by a stricter
variant of NNSmith's single-operator test against onnxruntime 1.32.0 CPU (build_topset;
rebuild with --refresh-topset) and checked in, so generation never depends on NNSmith's
per-user cache (~/.cache/nnsmith-0.1.0) and only uses op/dtype pairs ORT has kernels for.
"""
from __future__ import annotations

import os
import sys

# --- Determinism, part 1: hash seed ---------------------------------------------------
# NNSmith builds sets of DType enums and op classes in places (e.g. the topset inference);
# Enum/str hashes are salted per process unless PYTHONHASHSEED is fixed. Re-exec once with
# a fixed hash seed so any set iteration order is the same in every run. (Defensive: with
# the sorted topset, 200 graphs came out identical under PYTHONHASHSEED=1 and =2 too.)
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse
import collections
import functools
import hashlib
import io
import json
import logging
import platform
import random
import signal
import time
import traceback
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TOPSET = HERE / "nnsmith-topset.json"
NNSMITH_OPSET = 14  # nnsmith 0.1.0 hard-codes opset_version=14 in torch2onnx()
MAX_IR_VERSION = 10  # the legacy exporter writes IR 7 for opset 14; refuse anything newer than 10

os.environ.pop("NNSMITH_ONNX_DCE", None)  # random output masking would change the graphs
os.environ.setdefault("OMP_NUM_THREADS", "1")

warnings.filterwarnings("ignore")  # pygraphviz notice at import, exporter deprecations

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.onnx  # noqa: E402

torch.set_num_threads(1)  # single-threaded CPU kernels: same floats every run

# --- Compatibility shim 1: torch.onnx.export(dynamo=...) ------------------------------
# nnsmith 0.1.0 (2023-03, written for torch 1.13) calls torch.onnx.export() without a
# `dynamo` argument. Since torch 2.9 that defaults to dynamo=True, the torch.export-based
# exporter, which needs onnxscript (not installed) and produces different graphs. Force the
# legacy TorchScript exporter that nnsmith was written for (still present in torch 2.13 as
# torch.onnx._internal.torchscript_exporter). Remove when nnsmith passes dynamo= itself
# (no such release on PyPI as of nnsmith 0.1.0); if a future torch drops the TorchScript
# exporter, nnsmith's torch2onnx() has to be replaced instead.
_torch_onnx_export = torch.onnx.export


@functools.wraps(_torch_onnx_export)
def _legacy_onnx_export(*args, **kwargs):
    kwargs.setdefault("dynamo", False)
    return _torch_onnx_export(*args, **kwargs)


torch.onnx.export = _legacy_onnx_export

# --- Compatibility shim 2: onnx._serialize --------------------------------------------
# nnsmith.backends.onnxruntime (used only to build/refresh the topset against ORT) calls
# onnx._serialize(model), a private helper that onnx removed (absent from onnx 1.23.2; its
# public replacement is ModelProto.SerializeToString / onnx.serialization). Remove when
# nnsmith stops calling it.
if not hasattr(onnx, "_serialize"):
    onnx._serialize = lambda proto: proto.SerializeToString()  # type: ignore[attr-defined]

import nnsmith.graph_gen as nn_graph_gen  # noqa: E402
import nnsmith.materialize.torch.input_gen as nn_input_gen  # noqa: E402
import nnsmith.materialize.torch.symbolnet as nn_symbolnet  # noqa: E402
import z3  # noqa: E402
from nnsmith.abstract.dtype import DType  # noqa: E402
from nnsmith.graph_gen import model_gen  # noqa: E402
from nnsmith.materialize import Model  # noqa: E402


# --- Bug workaround: nnsmith 0.1.0 `param.dtype.torch()` ---------------------------------
# Not a version incompatibility but an nnsmith 0.1.0 bug (any torch): when the gradient
# input search meets NaN/Inf in a weight or an input, SymbolNet.backward() and
# SymbolNet.grad_input_gen() try to re-draw them with `random_tensor(dtype=x.dtype.torch())`,
# but x.dtype is already a torch.dtype, so an AttributeError escapes and the whole graph is
# lost (seen in ~3% of seeds with --vulops). Catch exactly that error, re-draw the
# non-finite weights as upstream meant to, and report "no input found" for this search
# attempt (NNSmith then tries another sample or falls back to random inputs). Remove when
# the pinned nnsmith no longer calls `.dtype.torch()` on torch tensors.
_orig_grad_input_gen = nn_symbolnet.SymbolNet.grad_input_gen


def _grad_input_gen(self, *args, **kwargs):
    last_check = self.check_intermediate_numeric
    try:
        return _orig_grad_input_gen(self, *args, **kwargs)
    except AttributeError as e:
        if "'torch.dtype' object has no attribute 'torch'" not in str(e):
            raise
        self.stop_training()
        self.check_intermediate_numeric = last_check
        with torch.no_grad():
            for p in self.parameters():
                bad = p.isnan().logical_or(p.isinf())
                if bool(bad.any()):
                    p.copy_(torch.where(bad, nn_symbolnet.random_tensor(p.shape, dtype=p.dtype), p))
        return None


nn_symbolnet.SymbolNet.grad_input_gen = _grad_input_gen


# --- Determinism, part 2: virtual clocks ----------------------------------------------
# NNSmith bounds three loops by wall-clock time, which makes the output depend on machine
# speed and load: graph growth (graph_gen.BaseGen.abstract_gen, `timeout_ms`), the weight/
# input search (input_gen.InputSearchBase.search, 20 ms) and the gradient input search
# (symbolnet.SymbolNet.grad_input_gen, 20 ms). Each of these modules gets its own `time`
# whose clock advances a fixed step per call, so each loop is bounded by a number of
# iterations instead (1 ms of budget = 1 iteration). On an idle machine the real clocks
# gave the same 200 graphs, so this guards against load/slow machines (e.g. CI), not a
# bug seen. A real-time watchdog (--graph-timeout) still stops a pathological seed; it is
# reported as a failure.
class _VirtualClock:
    def __init__(self, step_s: float = 0.001):
        self.step = step_s
        self.now = 0.0

    def time(self) -> float:
        self.now += self.step
        return self.now

    def reset(self) -> None:
        self.now = 0.0


_CLOCKS = {
    mod.__name__: _VirtualClock() for mod in (nn_graph_gen, nn_input_gen, nn_symbolnet)
}
for _mod in (nn_graph_gen, nn_input_gen, nn_symbolnet):
    _mod.time = _CLOCKS[_mod.__name__]  # these modules only use time.time()


def _reset_state(seed: int) -> None:
    """Make graph `seed` independent of whatever ran before it in this process."""
    for c in _CLOCKS.values():
        c.reset()
    # Fresh z3 context: symbol/AST ids of earlier graphs would otherwise influence the
    # solver's choices (and models) for this one.
    z3.z3._main_ctx = None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- Determinism, part 3: z3's per-check wall-clock timeout -----------------------------
# abstract_gen() sets z3's global `timeout` to timeout_ms/3 of REAL time; a check that hits
# it returns `unknown` and the graph changes. Checks take milliseconds, so replace that with
# one generous fixed value (--z3-timeout-ms) that only a pathological seed can reach.
Z3_TIMEOUT_MS = [30000]


class _Z3FixedTimeout:
    def __getattr__(self, name):
        return getattr(z3, name)

    @staticmethod
    def set_param(*args, **kwargs):
        if len(args) == 2 and args[0] == "timeout":
            return z3.set_param("timeout", Z3_TIMEOUT_MS[0])
        return z3.set_param(*args, **kwargs)


nn_graph_gen.z3 = _Z3FixedTimeout()

# --- Generation tweak: more float32 ----------------------------------------------------
# NNSmith draws each fresh tensor's dtype with weight 4 per float type (f16/f32/f64) and 1
# per int type (i8/i16/i32/i64/u8), i.e. float32 ~24%. We want float32 to dominate while
# keeping the others: float32's weight is --f32-weight (default 12, ~48%; 4 = upstream).
# Same number of random draws as upstream, so only the dtype choice changes.
from nnsmith.abstract.dtype import DTYPE_GEN_ALL, DTYPE_GEN_FLOATS  # noqa: E402

F32_WEIGHT = [12]


def _weighted_random_dtype_gen(self):
    dtypes = [dt for dt in DTYPE_GEN_ALL if dt in self.dtype_choices]
    assert dtypes, "Empty INTERSECT(DTYPE_GEN_ALL, dtype_choices). Please relax dtype_choices."
    wts = [
        F32_WEIGHT[0] if dt == DType.float32 else 4 if dt in DTYPE_GEN_FLOATS else 1
        for dt in dtypes
    ]
    return random.choices(dtypes, weights=wts)[0]


nn_graph_gen.BaseGen.random_dtype_gen = _weighted_random_dtype_gen


# --- Topset (which op supports which dtypes) ------------------------------------------
def _dt_key(comb):
    return [str(d) for d in comb]


def _single_op_ok(model_cls, factory, ir) -> bool:
    import tempfile

    from nnsmith.materialize import TestCase

    try:
        model = model_cls.from_gir(ir)
        if factory is not None:
            return isinstance(factory.make_testcase(model), TestCase)
        model.make_oracle()
        with tempfile.TemporaryDirectory() as d:
            model.with_torch = False
            model.dump(os.path.join(d, "m.onnx"))
        return True
    except Exception:  # noqa: BLE001
        return False


def build_topset(model_cls, with_ort: bool) -> dict:
    """NNSmith's single-operator test, made stricter.

    Same idea as nnsmith.narrow_spec.infer_topset_from_scratch (build a one-op graph per
    input-dtype combination, export it, run it with onnxruntime), but each combination is
    tried at the op's smallest input rank AND at its smallest rank >= 1; it is kept only if
    all pass. Upstream tries the smallest rank only, which is often 0, and the TorchScript
    exporter turns 0-d float64 tensors into float32 ("scalar type analysis"), so e.g. GELU
    on float64 passed upstream's test (as float32 Erf) yet its Erf(float64) has no ORT
    kernel in real graphs.
    """
    from nnsmith.abstract.op import Constant, Input, concretize_op
    from nnsmith.abstract.tensor import AbsTensor
    from nnsmith.narrow_spec import _make_single_op_irs

    factory = None
    if with_ort:
        from nnsmith.backends.onnxruntime import ORTFactory

        # optmax=False (ORT_DISABLE_ALL): only ops/dtypes with a plain CPU kernel count.
        factory = ORTFactory(target="cpu", optmax=False)

    ops = {}
    for idx, node_t in enumerate(model_cls.operators()):
        if node_t is Input or node_t is Constant or not node_t.in_dtypes:
            continue
        skip = set(model_cls.skip_dtypes()) | set(factory.skip_dtypes() if factory else [])
        passed = None  # dtype-combo -> out-dtypes, for combos that pass every rank tried
        for want_nonscalar in (False, True):
            for min_dim in ((2, 1) if want_nonscalar else (1,)):
                random.seed(idx)
                torch.manual_seed(idx)
                op = node_t(*[z3.Int(f"v{idx}-{k}") for k in range(node_t.get_num_var_param())])
                solver = z3.Solver()
                inputs = []
                for i, ranks in enumerate(op.inp_ranks):
                    if op.same_inp_dims and inputs:
                        rank = inputs[0].ndims
                    else:
                        cands = [r for r in ranks if r >= 1] if want_nonscalar else list(ranks)
                        rank = min(cands or ranks)
                    t = AbsTensor(shape=[z3.Int(f"s{i}_{k}") for k in range(rank)],
                                  dtype=node_t.in_dtypes[0][i])
                    inputs.append(t)
                    solver.add(*t.gt_zero())
                    solver.add(*[d < 64 for d in t.shape])
                    solver.add(*[d >= min_dim for d in t.shape])
                solver.add(*op.checked_requires(inputs))
                if solver.check() == z3.sat:
                    break
            else:
                continue
            m = solver.model()
            conc = concretize_op(op, m)
            shapes = [[m.eval(d).as_long() for d in t.shape] for t in inputs]
            now = {}
            for itypes, otypes, ir in _make_single_op_irs(conc, shapes, node_t.in_dtypes):
                if not skip.isdisjoint(itypes + otypes):
                    continue
                if _single_op_ok(model_cls, factory, ir):
                    now[itypes] = otypes
            passed = now if passed is None else {k: v for k, v in passed.items() if k in now}
        if passed:
            ops[node_t.name()] = {
                "in_dtypes": sorted(_dt_key(c) for c in passed),
                "out_dtypes": sorted({tuple(_dt_key(c)) for c in passed.values()}),
            }
    for v in ops.values():
        v["out_dtypes"] = [list(c) for c in v["out_dtypes"]]
    meta = {
        "made_by": "fuzz/generate.py --refresh-topset",
        "nnsmith": "0.1.0",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "checked_against": None,
    }
    if with_ort:
        import onnxruntime

        meta["checked_against"] = f"onnxruntime {onnxruntime.__version__} CPU (ORT_DISABLE_ALL)"
    return {"meta": meta, "topset": ops}


def load_opset(model_cls, topset: dict, vulops: bool, include, exclude):
    table = topset["topset"]
    opset = []
    for op in model_cls.operators():
        name = op.name()
        if name not in table or (not vulops and op.limit_domain):
            continue
        if include and name not in include and op.__name__ not in include:
            continue
        if exclude and (name in exclude or op.__name__ in exclude):
            continue
        op.in_dtypes = [tuple(DType[t] for t in c) for c in table[name]["in_dtypes"]]
        op.out_dtypes = [tuple(DType[t] for t in c) for c in table[name]["out_dtypes"]]
        opset.append(op)
    return opset


# --- Output helpers ---------------------------------------------------------------------
def save_npz_deterministic(path: Path, arrays: dict) -> None:
    """Like np.savez, but with fixed zip timestamps so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            # (not np.ascontiguousarray: it turns 0-d arrays into shape (1,))
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    path.write_bytes(buf.getvalue())


def _tensor_type(vi) -> dict:
    tt = vi.type.tensor_type
    return {
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim],
    }


class _GraphTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _GraphTimeout()


def generate_one(model_cls, opset, seed: int, args, out: Path) -> dict:
    stage = "graph_gen"
    t0 = time.perf_counter()
    _reset_state(seed)
    try:
        signal.alarm(args.graph_timeout)
        gen = model_gen(
            opset=opset,
            method=args.method,
            seed=seed,
            max_nodes=args.max_nodes,
            timeout_ms=args.gen_budget,
            max_elem_per_tensor=args.max_elem,
            dtype_choices=args.dtypes,
        )
        ir = gen.make_concrete()

        stage = "materialize"
        model = model_cls.from_gir(ir)
        model.refine_weights()  # weight/input search, then torch -> ONNX export

        stage = "oracle"
        oracle = model.make_oracle()  # inputs (searched or random) + torch eager outputs

        stage = "save"
        proto: onnx.ModelProto = model.native_model
        opsets = {o.domain: o.version for o in proto.opset_import}
        if opsets.get("", opsets.get("ai.onnx")) != NNSMITH_OPSET:
            raise RuntimeError(f"unexpected opset_import {opsets}")
        if proto.ir_version > MAX_IR_VERSION:
            raise RuntimeError(f"IR version {proto.ir_version} > {MAX_IR_VERSION}")
        proto.producer_name = "graphpress-fuzz/nnsmith"
        onnx.checker.check_model(proto, full_check=True)

        graph_inputs = [i.name for i in proto.graph.input]
        missing = [n for n in graph_inputs if n not in oracle.input]
        if missing:
            raise RuntimeError(f"no input data for graph inputs {missing}")
        feeds = {n: oracle.input[n] for n in graph_inputs}

        stem = f"g{seed:06d}"
        onnx_bytes = proto.SerializeToString(deterministic=True)
        (out / f"{stem}.onnx").write_bytes(onnx_bytes)
        save_npz_deterministic(out / f"{stem}.npz", feeds)
        signal.alarm(0)

        ref_bad = any(
            np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))
            for v in oracle.output.values()
        )
        return {
            "seed": seed,
            "onnx": f"{stem}.onnx",
            "npz": f"{stem}.npz",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "ir_version": proto.ir_version,
            "opset": NNSMITH_OPSET,
            "n_nodes": len(proto.graph.node),
            "onnx_ops": sorted(collections.Counter(n.op_type for n in proto.graph.node).items()),
            "nnsmith_ops": sorted(
                collections.Counter(
                    type(inst.iexpr.op).__name__
                    for inst in ir.insts
                    if type(inst.iexpr.op).__name__ not in ("Input", "Constant")
                ).items()
            ),
            "n_initializers": len(proto.graph.initializer),
            "inputs": {i.name: _tensor_type(i) for i in proto.graph.input},
            "outputs": {o.name: _tensor_type(o) for o in proto.graph.output},
            "input_source": "nnsmith-search" if model.sat_inputs is not None else "nnsmith-random",
            "torch_ref_has_nan_inf": bool(ref_bad),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    except _GraphTimeout:
        return {
            "seed": seed,
            "stage": stage,
            "error": f"timeout after {args.graph_timeout}s (real time)",
            "seconds": round(time.perf_counter() - t0, 3),
        }
    except Exception as e:  # noqa: BLE001 - every failure is recorded, never fatal
        tb = traceback.format_exc(limit=-3)
        return {
            "seed": seed,
            "stage": stage,
            "error": f"{type(e).__name__}: {str(e).strip()[:500]}",
            "traceback_tail": tb[-1500:],
            "seconds": round(time.perf_counter() - t0, 3),
        }
    finally:
        signal.alarm(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--count", type=int, default=1, help="number of graphs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first graph")
    ap.add_argument("--max-nodes", type=int, default=10, help="operators per graph (NNSmith max_nodes)")
    ap.add_argument("--method", default="symbolic-cinit", choices=["symbolic", "symbolic-cinit", "concolic"])
    ap.add_argument("--gen-budget", type=int, default=10000,
                    help="NNSmith timeout_ms; with the virtual clock: max insertion attempts")
    ap.add_argument("--max-elem", type=int, default=2**16, help="max elements per tensor")
    ap.add_argument("--dtypes", nargs="*", default=None,
                    help="restrict dtypes, e.g. --dtypes float32 (default: all NNSmith offers)")
    ap.add_argument("--include", nargs="*", default=None, help="only these NNSmith ops (e.g. ReLU core.Add)")
    ap.add_argument("--exclude", nargs="*", default=None, help="never these NNSmith ops")
    ap.add_argument("--vulops", action="store_true",
                    help="also use limited-domain ops (Asin, Acos, Sqrt, Log2, Pow)")
    ap.add_argument("--topset", type=Path, default=DEFAULT_TOPSET)
    ap.add_argument("--refresh-topset", action="store_true",
                    help="re-run NNSmith's single-op test (against onnxruntime) and rewrite --topset")
    ap.add_argument("--f32-weight", type=int, default=12,
                    help="weight of float32 among fresh tensor dtypes (4 = NNSmith's default)")
    ap.add_argument("--z3-timeout-ms", type=int, default=30000, help="z3 timeout per check")
    ap.add_argument("--graph-timeout", type=int, default=120, help="real-time seconds per graph")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(name)s: %(message)s")
    for name in ("mgen", "smt", "dtest", "core", "gen|torch", "exec", "viz", "fuzz"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.ERROR)

    F32_WEIGHT[0] = args.f32_weight
    Z3_TIMEOUT_MS[0] = args.z3_timeout_ms
    model_cls = Model.init("onnx", backend_target="cpu")  # ONNXModelCPU
    model_cls.add_seed_setter()  # nnsmith's set_seed() also seeds torch

    if args.refresh_topset or not args.topset.exists():
        t = time.perf_counter()
        try:
            import onnxruntime  # noqa: F401

            with_ort = True
        except ImportError:
            with_ort = False
        topset = build_topset(model_cls, with_ort)
        args.topset.write_text(json.dumps(topset, indent=1, sort_keys=True) + "\n")
        print(f"topset: {len(topset['topset'])} ops -> {args.topset} "
              f"({time.perf_counter() - t:.1f}s)", file=sys.stderr)
    topset = json.loads(args.topset.read_text())
    opset = load_opset(model_cls, topset, args.vulops, args.include, args.exclude)
    if not opset:
        print("no operator left after filtering", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, _alarm)
    generated, failed = [], []
    t_all = time.perf_counter()
    for i in range(args.count):
        seed = args.seed + i
        rec = generate_one(model_cls, opset, seed, args, args.out)
        (failed if "error" in rec else generated).append(rec)
        if args.verbose:
            print(f"seed {seed}: {'FAILED ' + rec['error'] if 'error' in rec else rec['onnx']}",
                  file=sys.stderr)
    wall = time.perf_counter() - t_all

    manifest = {
        "generator": {
            "argv": sys.argv[1:],
            "nnsmith": "0.1.0",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "z3": z3.get_version_string(),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "method": args.method,
            "max_nodes": args.max_nodes,
            "gen_budget": args.gen_budget,
            "max_elem": args.max_elem,
            "dtypes": args.dtypes,
            "vulops": args.vulops,
            "f32_weight": args.f32_weight,
            "z3_timeout_ms": args.z3_timeout_ms,
            "opset": NNSMITH_OPSET,
            "topset": str(args.topset),
            "topset_sha256": hashlib.sha256(args.topset.read_bytes()).hexdigest(),
            "topset_meta": topset.get("meta"),
            "ops_enabled": sorted(op.name() for op in opset),
        },
        "seed_first": args.seed,
        "count": args.count,
        "n_generated": len(generated),
        "n_failed": len(failed),
        "seconds_total": round(wall, 2),
        "generated": generated,
        "failed": failed,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"generated {len(generated)}/{args.count} graphs in {wall:.1f}s "
          f"({wall / max(args.count, 1):.2f}s/graph), {len(failed)} failed -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
