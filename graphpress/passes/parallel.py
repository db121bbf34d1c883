"""Convolutions that read the same input with the same window, merged into one.

Two (or more) ``Conv`` nodes of one input, with equal attributes, one group and constant weights
(a spectrogram's cosine and sine filters, an Inception block's 1x1 branches) compute one
convolution to the concatenated output channels::

    Conv(X, W1, B1), Conv(X, W2, B2)  ->  Split(Conv(X, [W1; W2], [B1; B2]), [c1, c2], axis=1)

The input is read once instead of once per branch, the weights are packed once, and the
compiled kernel's output channels (``c1 + c2``) fill whole vectors more often than each
branch's (openWakeWord's mel spectrogram: 2 x 257 channels, each padded to 272 for 16-float
vectors, become 514 padded to 528). Every value is the same sum in the same order: the
outputs are bit for bit those of the separate convolutions.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from graphpress.ir.edit import replace_value
from graphpress.passes.base import Pass, PassResult
from graphpress.passes.recurrent import _Builder
from graphpress.passes.registry import register

__all__ = ["MergeParallelConvs"]


def _key(node: ir.Node) -> tuple | None:
    """What must be equal for two convolutions of one input to merge, or None when this one
    cannot (a grouped one, a weight or bias that is not a constant)."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    weight = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or weight.const_value is None or (bias is not None and bias.const_value is None):
        return None
    if node.attributes.get_int("group", 1) != 1 or len(node.outputs) != 1:
        return None
    attrs = tuple(sorted((name, repr(attr.value)) for name, attr in node.attributes.items()))
    w = weight.const_value
    return (node.inputs[0], attrs, tuple(w.shape[1:]), w.dtype)


def _merge(model: ir.Model, convs: list[ir.Node], index: int) -> None:
    first = convs[0]
    b = _Builder(first, f"{first.name or 'Conv'}/merged_parallel{index}", model.opset_imports.get("", 0))
    weights = [c.inputs[1].const_value.numpy() for c in convs]
    sizes = [w.shape[0] for w in weights]
    biases = [c.inputs[2].const_value.numpy() if len(c.inputs) > 2 and c.inputs[2] is not None else np.zeros(n, w.dtype) for c, w, n in zip(convs, weights, sizes)]
    inputs = [first.inputs[0], b.const(np.concatenate(weights)), b.const(np.concatenate(biases).astype(weights[0].dtype))]
    attrs = {name: attr.value for name, attr in first.attributes.items()}
    y = b.op("Conv", inputs, **attrs)
    parts = b.split(y, sizes, axis=1)
    b.replace(model, [parts[0]])  # the nodes go in before the first convolution, which they replace
    for conv, part in zip(convs[1:], parts[1:]):
        replace_value(conv.outputs[0], part)
        conv.graph.remove(conv, safe=True)


@register
class MergeParallelConvs(Pass):
    """Merge convolutions of the same input, window and attributes into one, split after."""

    name = "merge_parallel_convs"
    family = "fusion"
    description = "Conv nodes of one input with equal attributes and constant weights as one Conv to their channels, then Split"

    def call(self, model: ir.Model) -> PassResult:
        if model.opset_imports.get("", 0) < 13:  # Split takes its sizes as an input from opset 13
            return PassResult(model, False, {"merged": 0})
        groups: dict[tuple, list[ir.Node]] = defaultdict(list)
        for node in model.graph:
            key = _key(node)
            if key is not None:
                groups[key].append(node)
        merged = 0
        for convs in groups.values():
            if len(convs) > 1:
                _merge(model, convs, merged)
                merged += len(convs)
        return PassResult(model, merged > 0, {"merged": merged})
