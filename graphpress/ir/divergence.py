"""Why outputs differ: a wrong rewrite, or rounding that an ill-conditioned node amplified.

A lossless pass may change the last bits of a value within its tolerance -- a constant folded
by the reference evaluator instead of the runtime's kernel, a transposed weight summed in
another order -- and a node downstream that the pass did not touch can magnify that:
``Sin`` of values near 1500, ``Ceil`` or ``Round`` next to a rounding boundary, a long
``ReduceSum`` in float16. The outputs then differ beyond tolerance although no rewrite is
wrong. :func:`attribute_divergence` tells the two apart, node by node:

1. ``N`` is the first node whose output differs beyond tolerance
   (:func:`graphpress.ir.numeric.first_divergence`).
2. ``N`` is *right* when its inputs are within tolerance of the reference's and either the
   pass left it as it was (same op, attributes and inputs) or the reference's node ``N``,
   run alone on the candidate's own inputs, reproduces the candidate's output of ``N``
   within tolerance. Otherwise ``N`` is where the candidate computes something else: the
   divergence is real.
3. The candidate is run again with ``N``'s outputs replaced by the reference's values. If
   every graph output now matches, the whole difference came in through ``N``: amplified
   rounding. If not, the next divergence is examined the same way (a few steps at most).

Only values the two models share by name can be examined; a divergence in renamed values is
reported as not explained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import one_line
from graphpress.ir.io import _materialize, to_proto
from graphpress.ir.numeric import _diff, compare_outputs, first_divergence, run

__all__ = ["Attribution", "attribute_divergence"]

_CUT = "__graphpress_cut"


@dataclasses.dataclass
class Attribution:
    """The outcome of :func:`attribute_divergence`.

    Attributes:
        explained: every difference beyond tolerance is rounding amplified by nodes that
            compute correctly on their own inputs.
        amplified_by: those nodes: ``{"node", "op_type", "value", "max_abs_diff"}``.
        reason: when not explained, why (the node that computes something else, or what
            could not be examined).
    """

    explained: bool
    amplified_by: list[dict[str, Any]]
    reason: str = ""


def _proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return onnx.ModelProto.FromString(model.SerializeToString())
    return _materialize(to_proto(model), model)


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in proto.graph.node for out in node.output if out}


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape))


def _constants(proto: onnx.ModelProto) -> set[str]:
    return {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}


def _alone(node: onnx.NodeProto, inputs: Mapping[str, np.ndarray], constant: set[str], like: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Run ``node`` by itself on ``inputs`` (ONNX Runtime, the opsets of ``like``); the inputs
    named in ``constant`` are initializers, as in the model (kernels take other paths for
    constant operands, e.g. a ReduceSum's axes)."""
    names = list(dict.fromkeys(i for i in node.input if i))
    graph = onnx.helper.make_graph(
        [node], "alone", [_value_info(n, np.asarray(inputs[n])) for n in names if n not in constant],
        [onnx.ValueInfoProto(name=o) for o in node.output if o],
        [onnx.numpy_helper.from_array(np.asarray(inputs[n]), n) for n in names if n in constant],
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=list(like.opset_import), functions=list(like.functions))
    model.ir_version = like.ir_version
    return run(model, {n: inputs[n] for n in names if n not in constant})


def _same_node(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    """The pass left the node as it was: same op, attributes and input names.

    Such a node is right by construction, whatever running it alone gives: kernels may sum
    in another order for operands laid out differently (a float16 ReduceSum run alone on the
    same values differed by 2 in 223 here)."""
    return (a.op_type, a.domain, list(a.input), sorted(x.SerializeToString() for x in a.attribute)) == (
        b.op_type, b.domain, list(b.input), sorted(x.SerializeToString() for x in b.attribute),
    )  # fmt: skip


def _cut(proto: onnx.ModelProto, value: str, array: np.ndarray) -> None:
    """Make ``value`` a graph input (its producer's output renamed away)."""
    for node in proto.graph.node:
        for i, out in enumerate(node.output):
            if out == value:
                node.output[i] = value + _CUT
    proto.graph.input.append(_value_info(value, array))


def attribute_divergence(
    reference: ir.Model | onnx.ModelProto,
    candidate: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    family: str,
    precision: str | None = None,
    max_steps: int = 4,
) -> Attribution:
    """Explain a failed comparison of ``candidate`` with ``reference`` on ``feeds`` (see the module docstring)."""
    ref = _proto(reference)
    cut = _proto(candidate)
    ref_out = run(ref, feeds)
    feeds = dict(feeds)
    amplified: list[dict[str, Any]] = []
    ref_nodes = _producers(ref)
    for _ in range(max_steps):
        fd = first_divergence(ref, cut, feeds, family=family, precision=precision)
        if fd is None:
            return Attribution(False, amplified, "the difference is in values the two models do not share by name")
        value = fd["value"]
        node = ref_nodes.get(value)
        cand_node = _producers(cut).get(value)
        if node is None or cand_node is None:
            return Attribution(False, amplified, f"value '{value}' has no producer in one of the models")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return Attribution(False, amplified, f"node '{node.name}' ({node.op_type}) has subgraphs")
        inputs = [i for i in node.input if i]
        try:
            cand_in = run(cut, feeds, inputs)
            ref_in = run(ref, feeds, inputs)
            cand_vals = run(cut, feeds, [o for o in cand_node.output if o])
            alone = _alone(node, cand_in, _constants(cut), ref)
        except Exception as e:  # noqa: BLE001 - a value ORT cannot expose, an op it cannot run alone
            return Attribution(False, amplified, f"node '{node.name}' ({node.op_type}) cannot be run alone ({one_line(e, 120)})")
        for name in inputs:
            if not _diff(name, np.asarray(ref_in[name]), np.asarray(cand_in[name]), family, precision=precision).passed:
                return Attribution(False, amplified, f"input '{name}' of node '{node.name}' differs beyond tolerance")
        untouched = _same_node(node, cand_node)
        for name in alone:
            if not untouched and not _diff(name, np.asarray(cand_vals[name]), np.asarray(alone[name]), family, precision=precision).passed:
                return Attribution(False, amplified, f"node '{cand_node.name}' ({cand_node.op_type}) computes something else than the reference's node on the same inputs")
        amplified.append({k: fd[k] for k in ("node", "op_type", "value", "max_abs_diff")})
        ref_vals = run(ref, feeds, [o for o in node.output if o])
        for name, array in ref_vals.items():
            _cut(cut, name, np.asarray(array))
            feeds[name] = np.asarray(array)
        if compare_outputs(ref_out, run(cut, feeds), family, precision=precision).passed:
            return Attribution(True, amplified)
    return Attribution(False, amplified, f"still different after {max_steps} amplifying nodes")
