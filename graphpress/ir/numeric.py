"""Numeric checks: run a model before and after a change with ONNX Runtime and compare.

Tolerances are explicit per pass family and per output dtype (:data:`TOLERANCES`); there
is no default ``rtol=1``. An output passes when every element satisfies
``|new - ref| <= atol + rtol * |ref|`` and the cosine similarity of the flattened
outputs is at least ``min_cosine``. Integer and boolean outputs must match exactly in
every family except ``quantization``.

On a mismatch, :func:`first_divergence` names the first node (in topological order of
the new model) whose output differs from the value of the same name in the reference:
every shared intermediate value is exposed as an extra output and both models are run
once (in chunks of :data:`DIVERGENCE_CHUNK` values, so memory stays bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import GraphpressError, one_line
from graphpress.ir.io import _materialize, to_proto

__all__ = [
    "TOLERANCES",
    "NumericReport",
    "OutputDiff",
    "Tolerance",
    "compare_models",
    "compare_outputs",
    "first_divergence",
    "as_samples",
    "check_runnable",
    "load_inputs",
    "load_samples",
    "lowest_float_precision",
    "make_inputs",
    "read_npz",
    "run_each",
    "run_samples",
    "random_inputs",
    "run",
    "tolerance_for",
]

DIVERGENCE_CHUNK = 2000


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Allowed difference of one output: ``|new-ref| <= atol + rtol*|ref|`` and cosine >= min_cosine."""

    atol: float
    rtol: float
    min_cosine: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


_EXACT = Tolerance(0.0, 0.0, 1.0 - 1e-12)

#: Tolerances per pass family and output dtype. ``exact`` is for passes that must not
#: change a single bit (dedup, dead-code removal, sorting).
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "exact": {"float64": _EXACT, "float32": _EXACT, "float16": _EXACT, "bfloat16": _EXACT, "int": _EXACT},
    "cleanup": {
        "float64": Tolerance(1e-12, 1e-12, 0.999999),
        "float32": Tolerance(1e-5, 1e-5, 0.99999),
        "float16": Tolerance(2e-3, 2e-3, 0.999),  # 2 ulps: a constant folded then divided by
        "bfloat16": Tolerance(1e-2, 1e-2, 0.99),
        "int": _EXACT,
    },
    "fusion": {
        "float64": Tolerance(1e-10, 1e-10, 0.999999),
        "float32": Tolerance(1e-5, 1e-4, 0.99999),
        "float16": Tolerance(2e-3, 2e-3, 0.999),
        "bfloat16": Tolerance(2e-2, 2e-2, 0.99),
        "int": _EXACT,
    },
    "pruning": {
        "float64": Tolerance(1e-10, 1e-10, 0.999999),
        "float32": Tolerance(1e-4, 1e-4, 0.9999),
        "float16": Tolerance(5e-3, 5e-3, 0.999),
        "bfloat16": Tolerance(5e-2, 5e-2, 0.99),
        "int": _EXACT,
    },
    # compiled code (TVM) against ONNX Runtime: different kernels, same fp32 math
    "backend": {
        "float64": Tolerance(1e-10, 1e-8, 0.999999),
        "float32": Tolerance(1e-5, 1e-4, 0.99999),
        "float16": Tolerance(2e-3, 2e-3, 0.999),
        "bfloat16": Tolerance(2e-2, 2e-2, 0.99),
        "int": _EXACT,
    },
    # weight sharing (k-means codebooks, near-duplicate merges): lossy like quantization,
    # judged by the outputs' direction
    "sharing": {
        "float64": Tolerance(math.inf, math.inf, 0.99),
        "float32": Tolerance(math.inf, math.inf, 0.99),
        "float16": Tolerance(math.inf, math.inf, 0.99),
        "bfloat16": Tolerance(math.inf, math.inf, 0.98),
        "int": Tolerance(math.inf, math.inf, 0.0),
    },
    "quantization": {
        "float64": Tolerance(math.inf, math.inf, 0.99),
        "float32": Tolerance(math.inf, math.inf, 0.99),
        "float16": Tolerance(math.inf, math.inf, 0.99),
        "bfloat16": Tolerance(math.inf, math.inf, 0.98),
        "int": Tolerance(math.inf, math.inf, 0.0),
    },
}


def tolerance_for(family: str, dtype: np.dtype | str) -> Tolerance:
    """The tolerance of a pass family for outputs of ``dtype``."""
    if family not in TOLERANCES:
        raise GraphpressError(f"unknown tolerance family '{family}'; valid: {', '.join(TOLERANCES)}")
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    table = TOLERANCES[family]
    if name in table:
        return table[name]
    if name.startswith(("int", "uint", "bool")):
        return table["int"]
    return table["float32"]


#: floating-point dtypes from the least to the most precise
_FLOAT_PRECISION = ("bfloat16", "float16", "float32", "float64")


def lowest_float_precision(model: ir.Model) -> str | None:
    """The least precise floating-point dtype the model computes in (inputs, weights, values, Casts).

    An output is only as precise as the math behind it: a float64 output cast from float16
    work is compared with float16's tolerance (:func:`compare_outputs`'s ``precision``).
    """
    seen: set[str] = set()

    def note(dtype) -> None:
        if dtype is not None:
            with contextlib.suppress(Exception):
                seen.add(np.dtype(dtype.numpy()).name)

    for graph in model.graphs():
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            note(value.dtype)
        for node in graph:
            for value in (*node.inputs, *node.outputs):
                if value is not None:
                    note(value.dtype)
            to = node.attributes.get("to") if node.op_type in ("Cast", "CastLike") else None
            if to is not None and to.type == ir.AttributeType.INT:
                with contextlib.suppress(Exception):
                    note(ir.DataType(to.as_int()))
    return next((name for name in _FLOAT_PRECISION if name in seen), None)


def _judged_as(dtype: np.dtype, precision: str | None) -> str:
    name = np.dtype(dtype).name
    if precision is None or name not in _FLOAT_PRECISION:
        return name
    return min(name, precision, key=_FLOAT_PRECISION.index)


@dataclasses.dataclass
class OutputDiff:
    """Difference of one output. ``max_rel_diff`` is relative to ``max(|ref|)``."""

    name: str
    dtype: str
    shape: list[int]
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    tolerance: Tolerance
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tolerance"] = self.tolerance.to_dict()
        return d


@dataclasses.dataclass
class NumericReport:
    """Result of comparing two models on the same inputs.

    Attributes:
        outputs: one :class:`OutputDiff` per output.
        family: the tolerance family used.
        first_divergence: set on failure: where the new model first differs.
        inputs_source: where the sample inputs came from ("generated (seed 0)" or a file).
    """

    outputs: list[OutputDiff]
    family: str
    inputs_source: str
    first_divergence: dict[str, Any] | None = None
    #: set when the differences are rounding within tolerance that these nodes amplified
    #: (:func:`graphpress.ir.divergence.attribute_divergence`): the check then passes
    amplified_by: list[dict[str, Any]] | None = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) or bool(self.amplified_by)

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "family": self.family,
            "inputs": self.inputs_source,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": max((o.max_rel_diff for o in self.outputs), default=0.0),
            "cosine": self.min_cosine,
            "outputs": [o.to_dict() for o in self.outputs],
            "first_divergence": self.first_divergence,
            "amplified_by": self.amplified_by,
        }

    def describe_failure(self) -> str:
        bad = [o for o in self.outputs if not o.passed]
        parts = [
            f"output '{o.name}' max_abs_diff={o.max_abs_diff:.3g} cosine={o.cosine:.6f} "
            f"(allowed atol={o.tolerance.atol:g} rtol={o.tolerance.rtol:g} min_cosine={o.tolerance.min_cosine:g})"
            for o in bad
        ]
        text = "; ".join(parts)
        if self.first_divergence:
            fd = self.first_divergence
            text += f"; first diverging node '{fd['node']}' ({fd['op_type']}) output '{fd['value']}' max_abs_diff={fd['max_abs_diff']:.3g}"
        return text


# ---------------------------------------------------------------------------- inputs


def _np_dtype(dtype: ir.DataType | None) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32)
    return np.dtype(dtype.numpy())


def make_inputs(
    model: ir.Model, *, seed: int = 0, dim_values: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Random inputs from the declared input shapes/dtypes.

    Floats are standard normal; integers are drawn from ``[0, 2)`` (valid token ids, masks
    and segment ids alike); booleans are random. Symbolic dimensions take their value
    from ``dim_values`` (by name) or 1. Give real data with :func:`load_inputs` when the
    model's behaviour depends on it.
    """
    dim_values = dict(dim_values or {})
    specs = []
    initializer_names = set(model.graph.initializers)
    for value in model.graph.inputs:
        if value.name in initializer_names:
            continue
        if value.shape is None:
            raise GraphpressError(
                f"input '{value.name}' has no declared shape; give sample inputs (an .npz with --inputs, or feeds in Python)"
            )
        shape = [d if isinstance(d, int) else dim_values.get(str(d), 1) for d in value.shape]
        specs.append({"name": value.name, "shape": shape, "dtype": _np_dtype(value.dtype).name})
    return random_inputs(specs, seed=seed)


def random_inputs(specs: list[Mapping[str, Any]], *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays for ``[{"name", "shape", "dtype"}]`` (the rules of :func:`make_inputs`)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype, shape = np.dtype(spec["dtype"]), list(spec["shape"])
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise GraphpressError(f"input '{spec['name']}' has dtype {dtype}, which graphpress cannot make up; give sample inputs (an .npz with --inputs, or feeds in Python)")
        feeds[spec["name"]] = arr
    return feeds


def load_inputs(path: str | os.PathLike, model: ir.Model) -> dict[str, np.ndarray]:
    """Read one set of sample inputs from an ``.npz`` whose keys are the model's input names.

    The arrays are checked against the declared inputs like :func:`load_samples`; a stack
    of samples for a static batch of 1 is refused here (use :func:`load_samples`).
    """
    samples = load_samples(path, model)
    if len(samples) > 1:
        raise GraphpressError(f"{path}: holds {len(samples)} samples for a model with a batch of 1; give one sample")
    return samples[0]


def load_samples(path: str | os.PathLike, model: ir.Model) -> list[dict[str, np.ndarray]]:
    """Read sample inputs from an ``.npz`` (keys = the model's input names) as a list of feeds.

    Each array must fit its declared input: same kind of dtype (a float64 array for a
    float32 input is converted; integers only when every value fits), the same rank, and
    the declared size on every static dimension. One exception makes the common case work:
    when every input's declared first dimension is a static 1 and the arrays all have the
    same first dimension N > 1, they are N samples, fed one at a time.

    Raises:
        GraphpressError: naming the file, the input, and the expected vs given shape/dtype.
    """
    arrays = read_npz(path)
    specs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    wanted = [v.name for v in specs]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise GraphpressError(
            f"{path}: missing input(s) {', '.join(missing)}; the .npz keys must be the model's input names: {', '.join(wanted)}"
        )
    feeds = {v.name: _fit_dtype(path, v, arrays[v.name]) for v in specs}
    stacked = _stack_size(specs, feeds)
    for v in specs:
        _check_shape(path, v, feeds[v.name], stacked)
    if stacked:
        return [{n: a[i : i + 1] for n, a in feeds.items()} for i in range(stacked)]
    return [feeds]


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles), or one line saying why not."""
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("a single .npy array, not an .npz archive of named arrays")
        with data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError as e:
        raise GraphpressError(f"{path}: no such file; give an .npz of sample inputs") from e
    except IsADirectoryError as e:
        raise GraphpressError(f"{path}: is a directory; give an .npz of sample inputs") from e
    except Exception as e:
        text = one_line(e, 120)
        raise GraphpressError(f"{path}: not a readable .npz file ({text}); save inputs with numpy.savez(path, name=array, ...)") from e


def _declared(value: ir.Value) -> str:
    dims = "?" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"
    return f"{_np_dtype(value.dtype).name if value.dtype else '?'} {dims}"


def _fit_dtype(path, value: ir.Value, arr: np.ndarray) -> np.ndarray:
    if value.dtype is None:
        return arr
    want = _np_dtype(value.dtype)
    if arr.dtype == want:
        return arr
    given = f"{arr.dtype} {list(arr.shape)}"
    ok_kind = (arr.dtype.kind == "f" and want.kind == "f") or (arr.dtype.kind in "iub" and want.kind in "iu")
    if ok_kind:
        cast = arr.astype(want)
        if want.kind == "f" or np.array_equal(cast.astype(arr.dtype), arr):
            return cast
    raise GraphpressError(f"{path}: input '{value.name}' expects {_declared(value)}, the .npz gives {given}; save it as {want}")


def _stack_size(specs: list[ir.Value], feeds: Mapping[str, np.ndarray]) -> int:
    """N when every input is declared with a static batch of 1 and given as N > 1 stacked samples."""
    sizes = set()
    for v in specs:
        arr = feeds[v.name]
        if v.shape is None or len(v.shape) == 0 or v.shape[0] != 1 or arr.ndim != len(v.shape) or arr.shape[0] <= 1:
            return 0
        sizes.add(arr.shape[0])
    return sizes.pop() if len(sizes) == 1 else 0


def _check_shape(path, value: ir.Value, arr: np.ndarray, stacked: int) -> None:
    if value.shape is None:
        return
    given = f"{arr.dtype} {list(arr.shape)}"
    bad = arr.ndim != len(value.shape)
    for i, (dim, size) in enumerate(zip(value.shape, arr.shape)):
        if isinstance(dim, int) and dim != size and not (i == 0 and stacked):
            bad = True
    if bad:
        raise GraphpressError(f"{path}: input '{value.name}' expects {_declared(value)}, the .npz gives {given}; save arrays of that shape")


def as_samples(feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """One feed dict or a sequence of them, as a list of feed dicts."""
    if isinstance(feeds, Mapping):
        return [dict(feeds)]
    if not isinstance(feeds, Sequence) or not feeds or not all(isinstance(f, Mapping) for f in feeds):
        raise GraphpressError(
            f"sample inputs must be a dict of input name -> array, or a non-empty list of such dicts; got a {type(feeds).__name__}"
        )
    return [dict(f) for f in feeds]


def run_each(
    model: ir.Model | onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]], *, where: str = "model", outputs: Sequence[str] = ()
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on each sample in turn (one session), yielding each sample's ``outputs``
    (default: the graph outputs): for samples whose shapes differ (text of different lengths)."""
    session = _Session(model, outputs, where)
    for feeds in samples:
        yield session.run(feeds)


def run_samples(
    model: ir.Model | onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]], *, where: str = "model", outputs: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Run ``model`` on every sample (one session) and join each output along a new first axis;
    ``outputs`` names the values to return (intermediates too), default the graph outputs."""
    if len(samples) == 1:
        return run(model, samples[0], outputs=list(outputs) or None, where=where)
    session = _Session(model, outputs, where)
    results = [session.run(feeds) for feeds in samples]
    return {name: np.stack([r[name] for r in results]) for name in results[0]}


# ---------------------------------------------------------------------------- running


#: default-domain aliases and the domains ONNX Runtime's CPU provider implements
_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.training", "ai.onnx.preview.training", "com.ms.internal.nhwc"}


def check_runnable(model: ir.Model | onnx.ModelProto, where: str = "model") -> None:
    """Refuse, before ONNX Runtime does in many lines, ops from domains it does not know.

    Raises:
        GraphpressError: naming the node, its op and domain.
    """
    proto = model if isinstance(model, onnx.ModelProto) else None
    functions = {(f.domain, f.name) for f in proto.functions} if proto is not None else {(f.domain, f.name) for f in model.functions.values()}
    nodes = proto.graph.node if proto is not None else model.graph.all_nodes()
    for node in nodes:
        if node.domain not in _ORT_DOMAINS and (node.domain, node.op_type) not in functions:
            raise GraphpressError(
                f"{where}: node '{node.name}' is op '{node.op_type}' of domain '{node.domain}', which ONNX Runtime does not "
                "implement, so it cannot be checked numerically; leave out the numeric check (--verify) or give "
                "ONNX Runtime the custom op library"
            )


def _ort_error(e: Exception, where: str) -> GraphpressError:
    """One line from an ONNX Runtime failure (ORT's messages span lines and name C++ files)."""
    import re

    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(e)).strip()
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\S+\.(cc|h):\d+ \S+ ", "", text)
    return GraphpressError(f"{where}: ONNX Runtime cannot run it: {text[:300]}")


class _Session:
    """An ONNX Runtime session on a model, with its inputs checked before each run."""

    def __init__(
        self, model: ir.Model | onnx.ModelProto, outputs: Sequence[str] = (), where: str = "model", *, best: bool = False, threads: int | None = None
    ):
        import onnxruntime as ort

        self.where = where
        proto = _materialize(_proto_with_outputs(model, list(outputs)), model)
        opts = ort.SessionOptions()
        # Checks compare what our passes did, not what ORT's optimizer would do on top; ``best``
        # is ORT at its fastest (every graph optimization), for speed comparisons.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if best else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            check_runnable(proto, where)
            raise _ort_error(e, where) from e
        self.outputs = list(outputs) if outputs else [o.name for o in self.session.get_outputs()]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = self.session.get_inputs()
        names = [i.name for i in expected]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise GraphpressError(f"{self.where}: no sample given for input(s) {', '.join(missing)}; inputs: {', '.join(names)}")
        for spec in expected:
            arr = np.asarray(feeds[spec.name])
            want = _ORT_TYPES.get(spec.type)
            dims = list(spec.shape)
            wrong_dtype = want is not None and arr.dtype != want
            wrong_shape = arr.ndim != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, arr.shape))
            if wrong_dtype or wrong_shape:
                shown = "[" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in dims) + "]"
                raise GraphpressError(
                    f"{self.where}: input '{spec.name}' expects {want or spec.type} {shown}, was given {arr.dtype} "
                    f"{list(arr.shape)}; give sample inputs of that dtype and shape"
                )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        names = {i.name for i in self.session.get_inputs()}
        try:
            values = self.session.run(self.outputs, {k: v for k, v in feeds.items() if k in names})
        except Exception as e:
            raise _ort_error(e, self.where) from e
        return dict(zip(self.outputs, values))


_ORT_TYPES = {
    f"tensor({name})": np.dtype(dt)
    for name, dt in {
        "float": np.float32, "double": np.float64, "float16": np.float16, "int8": np.int8, "int16": np.int16,
        "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
        "uint64": np.uint64, "bool": np.bool_,
    }.items()
}  # fmt: skip


def _proto_with_outputs(model: ir.Model | onnx.ModelProto, extra: list[str]) -> onnx.ModelProto:
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    if extra:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        present = {o.name for o in proto.graph.output}
        for name in extra:
            if name not in present:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto


def run(
    model: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    outputs: list[str] | None = None,
    *,
    where: str = "model",
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` with ONNX Runtime (CPU, graph optimizations off).

    Args:
        model: the model; it is serialized, not changed.
        feeds: input name → array.
        outputs: value names to return (graph outputs or intermediates); default: graph outputs.
        where: what the model is, for error messages ("the input model", a file name).

    Returns:
        name → array, in the order asked for.
    """
    return _Session(model, list(outputs or []), where).run(feeds)


def output_similarity(reference: ir.Model, feeds: Mapping[str, np.ndarray]):
    """A metric (higher is better): the lowest cosine between ``reference``'s outputs and a candidate's on ``feeds``."""
    want = run(reference, feeds)

    def metric(model: ir.Model) -> float:
        got = run(model, feeds)
        cos = []
        for name, ref in want.items():
            a, b = ref.ravel().astype(np.float64), got[name].ravel().astype(np.float64)
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cos.append(float(a @ b / denom) if denom else float(np.array_equal(a, b)))
        return min(cos)

    return metric


# ---------------------------------------------------------------------------- comparing


def _diff(
    name: str, ref: np.ndarray, new: np.ndarray, family: str, min_cosine: float | None = None, precision: str | None = None
) -> OutputDiff:
    tol = tolerance_for(family, _judged_as(ref.dtype, precision))
    if min_cosine is not None and math.isinf(tol.atol):
        tol = dataclasses.replace(tol, min_cosine=min_cosine)
    if ref.shape != new.shape or ref.dtype != new.dtype:
        return OutputDiff(name, str(ref.dtype), list(ref.shape), math.inf, math.inf, -1.0, tol, False)
    if ref.dtype.kind in "USO":  # strings (ONNX's string tensors): equal or not
        equal = bool(np.array_equal(ref, new))
        return OutputDiff(name, "string", list(ref.shape), 0.0 if equal else math.inf, 0.0 if equal else math.inf,
                          1.0 if equal else 0.0, _EXACT, equal)  # fmt: skip
    r = ref.astype(np.float64).ravel()
    n = new.astype(np.float64).ravel()
    same = (r == n) | (np.isnan(r) & np.isnan(n))  # equal infinities and NaN where NaN agree
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(n - r))
    max_abs = float(np.nanmax(diff, initial=0.0)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_abs = math.inf
    scale = float(np.max(np.abs(r[~np.isnan(r)]), initial=0.0)) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    with np.errstate(over="ignore", invalid="ignore"):  # infinite outputs: the cosine is NaN, said as such
        nr, nn = np.linalg.norm(np.nan_to_num(r)), np.linalg.norm(np.nan_to_num(n))
        if nr == 0 and nn == 0:
            cosine = 1.0
        elif nr == 0 or nn == 0:
            cosine = 0.0
        else:
            cosine = float(np.dot(np.nan_to_num(r), np.nan_to_num(n)) / (nr * nn))
    with np.errstate(invalid="ignore"):
        within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(np.nan_to_num(r)))) if diff.size else True
    # a finite atol bounds every element: outputs within it pass whatever their cosine (values
    # near 0, e.g. a sigmoid map, have a meaningless direction); lossy families judge the cosine
    passed = within if not math.isinf(tol.atol) else cosine >= tol.min_cosine
    return OutputDiff(name, str(ref.dtype), list(ref.shape), max_abs, max_rel, cosine, tol, bool(passed))


def compare_outputs(
    ref: Mapping[str, np.ndarray],
    new: Mapping[str, np.ndarray],
    family: str,
    inputs_source: str = "given",
    *,
    min_cosine: float | None = None,
    precision: str | None = None,
) -> NumericReport:
    """Compare two output dicts (matched by name, falling back to position).

    Args:
        min_cosine: for lossy families (no elementwise bound), the cosine every output must
            keep instead of the family's default (an accuracy budget).
        precision: the least precise float dtype of the computation
            (:func:`lowest_float_precision`); float outputs are judged by the coarser of it
            and their own dtype.
    """
    names_new = list(new)
    diffs: list[OutputDiff] = []
    for i, (name, r) in enumerate(ref.items()):
        if name in new:
            n = new[name]
        elif len(names_new) == len(ref) and names_new[i] not in ref:  # renamed in place
            n = new[names_new[i]]
        else:  # an output went missing
            r = np.asarray(r) if not isinstance(r, (list, tuple)) else np.zeros(0)
            tol = tolerance_for(family, r.dtype)
            diffs.append(OutputDiff(name, str(r.dtype), list(r.shape), math.inf, math.inf, -1.0, tol, False))
            continue
        if isinstance(r, (list, tuple)) or isinstance(n, (list, tuple)):  # a sequence: element by element
            if not isinstance(r, (list, tuple)) or not isinstance(n, (list, tuple)) or len(r) != len(n):
                length = len(r) if isinstance(r, (list, tuple)) else -1
                diffs.append(OutputDiff(f"{name} (sequence)", "sequence", [length], math.inf, math.inf, -1.0, _EXACT, False))
                continue
            diffs.extend(_diff(f"{name}[{j}]", np.asarray(a), np.asarray(b), family, min_cosine, precision) for j, (a, b) in enumerate(zip(r, n)))
            continue
        diffs.append(_diff(name, np.asarray(r), np.asarray(n), family, min_cosine, precision))
    for name in names_new[len(ref) :]:  # outputs the reference does not have
        arr = np.asarray(new[name])
        diffs.append(OutputDiff(f"{name} (new)", str(arr.dtype), list(arr.shape), math.inf, math.inf, -1.0, tolerance_for(family, arr.dtype), False))
    return NumericReport(diffs, family, inputs_source)


def compare_models(
    reference: ir.Model | onnx.ModelProto,
    candidate: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    family: str = "cleanup",
    inputs_source: str = "given",
    locate: bool = True,
    reference_outputs: Mapping[str, np.ndarray] | None = None,
) -> NumericReport:
    """Run both models on ``feeds`` and compare every output under ``family``'s tolerances.

    Args:
        reference: the model before the change.
        candidate: the model after it.
        feeds: sample inputs.
        family: tolerance family (see :data:`TOLERANCES`).
        inputs_source: a note for the report on where ``feeds`` came from.
        locate: on failure, find the first diverging node (:func:`first_divergence`).
        reference_outputs: the reference's outputs if already computed.
    """
    ref = dict(reference_outputs) if reference_outputs is not None else run(reference, feeds)
    new = run(candidate, feeds)
    report = compare_outputs(ref, new, family, inputs_source)
    if not report.passed and locate:
        report.first_divergence = first_divergence(reference, candidate, feeds, family=family)
    return report


def _ordered_value_names(model: ir.Model | onnx.ModelProto) -> tuple[list[str], dict[str, tuple[str, str]]]:
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    names: list[str] = []
    producers: dict[str, tuple[str, str]] = {}
    for node in proto.graph.node:
        for out in node.output:
            if out:
                names.append(out)
                producers[out] = (node.name, node.op_type)
    return names, producers


def first_divergence(
    reference: ir.Model | onnx.ModelProto,
    candidate: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    family: str = "cleanup",
    precision: str | None = None,
) -> dict[str, Any] | None:
    """Name the first node of ``candidate`` whose output differs from the reference's value of that name.

    Returns ``{"node", "op_type", "value", "max_abs_diff", "cosine"}`` or ``None`` when no
    shared intermediate value differs (the divergence is then in renamed values; the
    failing graph outputs say where).
    """
    ref_names, _ = _ordered_value_names(reference)
    cand_names, producers = _ordered_value_names(candidate)
    ref_set = set(ref_names)
    shared = [n for n in cand_names if n in ref_set]
    for start in range(0, len(shared), DIVERGENCE_CHUNK):
        chunk = shared[start : start + DIVERGENCE_CHUNK]
        try:
            ref_vals = run(reference, feeds, chunk)
            new_vals = run(candidate, feeds, chunk)
        except Exception:  # an intermediate ORT cannot expose (e.g. sequence types)
            return None
        for name in chunk:
            d = _diff(name, np.asarray(ref_vals[name]), np.asarray(new_vals[name]), family, precision=precision)
            if not d.passed:
                node, op = producers[name]
                return {"node": node, "op_type": op, "value": name, "max_abs_diff": d.max_abs_diff, "cosine": d.cosine}
    return None
