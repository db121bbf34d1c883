"""SmoothQuant: move the activations' outlier channels into the weights before int8.

Transformer activations carry a few input channels far larger than the rest (all-MiniLM-L6-v2's
LayerNorm outputs); one int8 scale per activation tensor spends its 256 steps on them and
rounds the other channels coarsely. SmoothQuant (Xiao et al., ICML 2023) divides each input
channel ``k`` of a matrix product's activation by ``s_k`` and multiplies row ``k`` of the
constant weight by it, which leaves ``x @ W`` unchanged in exact arithmetic:

    s_k = max|x_k| ** alpha / max|W_k,:| ** (1 - alpha)

``alpha`` moves the difficulty: 0 leaves the activation as it is, 1 makes every activation
channel equally wide and puts the whole spread into the weight rows, which per-output-channel
weight scales cannot absorb (they scale columns). All products reading one activation share one
``s`` (the maximum of their weight rows), and one ``Mul`` by ``1/s`` in front of them; other
readers of the activation (a residual addition) still read it unchanged.

Used by ``quantize:smooth=ALPHA`` before quantizing (:mod:`.quantization`); the activation
ranges come from the calibration samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.ir.edit import add_initializer, unique_name

__all__ = ["smooth_activations"]


def _weight_rows(node: ir.Node) -> tuple[np.ndarray, int] | None:
    """``(weight, axis of its input channels)`` of a MatMul/Gemm whose right operand is a constant
    2-D float weight and whose left operand is not transposed; else None."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    const = node.inputs[1].const_value
    if const is None or node.inputs[1].is_graph_input():  # an input's default can be overridden
        return None
    w = const.numpy()
    if w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get_int("transA", 0):
            return None
        return w, 1 if attrs.get_int("transB", 0) else 0
    return w, 0


def smooth_activations(
    model: ir.Model, samples: list[Mapping[str, np.ndarray]], alpha: float, *, ops: Iterable[str] = ("MatMul", "Gemm"), exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """Smooth, in place, the activation of every ``ops`` node (not in ``exclude``) with a constant
    2-D float weight, from the ranges the activations take on ``samples`` (of any shapes).
    Returns ``{"smoothed_activations": n, "smoothed_layers": m, "largest_factor": f,
    "nodes": [the inserted Mul nodes' names]}``: the quantizer must leave those in float (a
    per-tensor int8 ``1/s`` would round the outlier channels' small factors away)."""
    from graphpress.ir.numeric import run_each

    ops, exclude = set(ops), set(exclude)
    groups: dict[str, list[tuple[ir.Node, np.ndarray, int]]] = {}
    values: dict[str, ir.Value] = {}
    for node in model.graph:
        if node.op_type not in ops or node.name in exclude or node.inputs[0] is None:
            continue
        rows = _weight_rows(node)
        if rows is None:
            continue
        x = node.inputs[0]
        groups.setdefault(x.name, []).append((node, *rows))
        values[x.name] = x
    if not groups or not samples:
        return {"smoothed_activations": 0, "smoothed_layers": 0, "nodes": []}
    ranges: dict[str, np.ndarray | None] = {}
    for taken in run_each(model, samples, outputs=list(groups)):  # one sample at a time: lengths may differ
        for name, x in taken.items():
            x = np.abs(np.asarray(x, np.float32))
            if name in ranges and (ranges[name] is None or ranges[name].shape[0] != x.shape[-1]):
                ranges[name] = None
            elif x.size:
                top = x.reshape(-1, x.shape[-1]).max(axis=0)
                ranges[name] = np.maximum(ranges[name], top) if name in ranges else top
    smoothed, layers, largest, nodes = 0, 0, 1.0, []
    for name, members in groups.items():
        act = ranges.get(name)
        k = members[0][1].shape[members[0][2]]
        if act is None or act.shape[0] != k or any(w.shape[axis] != k for _, w, axis in members):
            continue  # a broadcast the scale cannot follow
        wmax = np.max([np.abs(w).max(axis=1 - axis) for _, w, axis in members], axis=0)
        ok = (act > 0) & (wmax > 0) & np.isfinite(act)
        s = np.ones(k, np.float64)
        s[ok] = act[ok] ** alpha / wmax[ok] ** (1 - alpha)
        s = np.clip(s, 1e-5, 1e5).astype(np.float32)
        source = values[name]
        inverse = add_initializer(model.graph, f"{name}_smooth_scale", (np.float32(1) / s).astype(np.float32))
        mul = ir.node("Mul", [source, inverse], name=unique_name(model.graph, f"{name}_smooth"))
        mul.outputs[0].name = unique_name(model.graph, f"{name}_smoothed")
        if source.type is not None:  # unknown stays unknown (an unset type cannot be serialized)
            mul.outputs[0].type, mul.outputs[0].shape = source.type, source.shape
        model.graph.insert_before(members[0][0], mul)
        nodes.append(mul.name)
        for node, w, axis in members:
            scaled = w * (s[:, None] if axis == 0 else s[None, :])
            old = node.inputs[1]
            node.replace_input_with(1, add_initializer(model.graph, f"{old.name}_smoothed", scaled.astype(np.float32)))
            node.replace_input_with(0, mul.outputs[0])
            if not old.uses() and old.name in model.graph.initializers and not old.is_graph_input():
                del model.graph.initializers[old.name]
            layers += 1
        smoothed += 1
        largest = max(largest, float(s.max()), float(1 / s.min()))
    return {"smoothed_activations": smoothed, "smoothed_layers": layers, "largest_factor": largest, "nodes": nodes}
