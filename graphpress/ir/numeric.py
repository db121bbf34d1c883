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

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import GraphpressError
from graphpress.ir.io import to_proto

__all__ = [
    "TOLERANCES",
    "NumericReport",
    "OutputDiff",
    "Tolerance",
    "compare_models",
    "compare_outputs",
    "first_divergence",
    "load_inputs",
    "make_inputs",
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
        "float16": Tolerance(1e-3, 1e-3, 0.999),
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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

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
                f"input '{value.name}' has no declared shape; give sample inputs with --inputs X.npz"
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
            raise GraphpressError(f"input '{spec['name']}' has dtype {dtype}; give sample inputs with --inputs X.npz")
        feeds[spec["name"]] = arr
    return feeds


def load_inputs(path: str | os.PathLike, model: ir.Model) -> dict[str, np.ndarray]:
    """Read sample inputs from an ``.npz`` whose keys are the model's input names."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError as e:
        raise GraphpressError(f"{path}: no such file; give an .npz of sample inputs") from e
    except Exception as e:
        raise GraphpressError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:120]})") from e
    wanted = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise GraphpressError(
            f"{path}: missing input(s) {', '.join(missing)}; the .npz keys must be the model's input names: {', '.join(wanted)}"
        )
    return {n: arrays[n] for n in wanted}


# ---------------------------------------------------------------------------- running


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Compare what our passes did, not what ORT's optimizer would do on top.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = min(4, os.cpu_count() or 1)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _proto_with_outputs(model: ir.Model | onnx.ModelProto, extra: list[str]) -> onnx.ModelProto:
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    if extra:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        present = {o.name for o in proto.graph.output}
        for name in extra:
            if name not in present:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto


def _materialize(proto: onnx.ModelProto, model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """Read external data into ``proto`` so ORT can run it from memory."""
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return proto
    base_dir = ""
    if isinstance(model, ir.Model):
        for value in model.graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                base_dir = value.const_value.base_dir
                break
    onnx.load_external_data_for_model(proto, base_dir)
    return proto


def run(
    model: ir.Model | onnx.ModelProto, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` with ONNX Runtime (CPU, graph optimizations off).

    Args:
        model: the model; it is serialized, not changed.
        feeds: input name → array.
        outputs: value names to return (graph outputs or intermediates); default: graph outputs.

    Returns:
        name → array, in the order asked for.
    """
    proto = _materialize(_proto_with_outputs(model, list(outputs or [])), model)
    sess = _session(proto)
    names = list(outputs) if outputs else [o.name for o in sess.get_outputs()]
    values = sess.run(names, dict(feeds))
    return dict(zip(names, values))


# ---------------------------------------------------------------------------- comparing


def _diff(name: str, ref: np.ndarray, new: np.ndarray, family: str) -> OutputDiff:
    tol = tolerance_for(family, ref.dtype)
    if ref.shape != new.shape or ref.dtype != new.dtype:
        return OutputDiff(name, str(ref.dtype), list(ref.shape), math.inf, math.inf, -1.0, tol, False)
    r = ref.astype(np.float64).ravel()
    n = new.astype(np.float64).ravel()
    both_nan = np.isnan(r) & np.isnan(n)
    diff = np.where(both_nan, 0.0, np.abs(n - r))
    max_abs = float(np.nanmax(diff, initial=0.0)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_abs = math.inf
    scale = float(np.max(np.abs(r[~np.isnan(r)]), initial=0.0)) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    nr, nn = np.linalg.norm(np.nan_to_num(r)), np.linalg.norm(np.nan_to_num(n))
    if nr == 0 and nn == 0:
        cosine = 1.0
    elif nr == 0 or nn == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(np.nan_to_num(r), np.nan_to_num(n)) / (nr * nn))
    with np.errstate(invalid="ignore"):
        within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(np.nan_to_num(r)))) if diff.size else True
    passed = cosine >= tol.min_cosine and (within or math.isinf(tol.atol))
    return OutputDiff(name, str(ref.dtype), list(ref.shape), max_abs, max_rel, cosine, tol, bool(passed))


def compare_outputs(
    ref: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], family: str, inputs_source: str = "given"
) -> NumericReport:
    """Compare two output dicts (matched by name, falling back to position)."""
    names_new = list(new)
    diffs: list[OutputDiff] = []
    for i, (name, r) in enumerate(ref.items()):
        if name in new:
            n = new[name]
        elif i < len(names_new):
            n = new[names_new[i]]
        else:
            tol = tolerance_for(family, r.dtype)
            diffs.append(OutputDiff(name, str(r.dtype), list(r.shape), math.inf, math.inf, -1.0, tol, False))
            continue
        diffs.append(_diff(name, np.asarray(r), np.asarray(n), family))
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
            d = _diff(name, np.asarray(ref_vals[name]), np.asarray(new_vals[name]), family)
            if not d.passed:
                node, op = producers[name]
                return {"node": node, "op_type": op, "value": name, "max_abs_diff": d.max_abs_diff, "cosine": d.cosine}
    return None
