"""Decomposed LayerNormalization and GELU → the ONNX ops.

LayerNormalization over the last axis (``Pow(d, 2)`` or ``Mul(d, d)``, ``Div(d, std)`` or
``Mul(d, Reciprocal(std))``, then the scale and an optional bias; ``keepdims`` may be implicit,
as the legacy torch exporter writes it; the bias step is onnxscript's rule)::

    mean = ReduceMean(x, [-1]);  d = x - mean;  var = ReduceMean(d², [-1])
    y = d / sqrt(var + eps) * scale + bias  =  LayerNormalization(x, scale, bias, axis=-1, epsilon=eps)

GELU, exact (erf) form and tanh approximation, in the operand orders exporters write
(``0.5·x·(1+…)``, ``x·(0.5·(1+…))``, ``(x·(1+…))·0.5``; ``x/√2`` or ``x·(1/√2)``; ``x³`` as
``Pow(x, 3)`` or ``x·x·x``)::

    gelu(x)      = 0.5·x·(1 + erf(x/√2))                       = Gelu(x)                      (opset 20)
    gelu_tanh(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))  = Gelu(x, approximate="tanh")

Constants must match to a relative 1e-4; the ops need opset 20, older models are refused with
the reason (graphpress loads models at opset 20).
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._layer_norm import LAYER_NORM_COMPUTE_TYPES, _layer_norm_with_bias_rule

from graphpress.passes.rewrite import Rule

__all__ = ["GELU_RULES", "LAYER_NORM_RULES", "NORMALIZATION_RULES"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_inner(op, x):
    return op.Add(op.Erf(pattern.OrValue([op.Div(x, _SQRT2), op.Mul(x, 1.0 / _SQRT2)])), 1.0)


def _tanh_inner(op, x):
    cube = pattern.OrValue([op.Pow(x, 3.0), op.Mul(op.Mul(x, x), x)])
    return op.Add(op.Tanh(op.Mul(op.Add(x, op.Mul(cube, 0.044715)), _SQRT_2_OVER_PI)), 1.0)


_OUTER = {
    "half_x_first": lambda op, x, t: op.Mul(op.Mul(x, 0.5), t),
    "half_inner": lambda op, x, t: op.Mul(x, op.Mul(t, 0.5)),
    "half_last": lambda op, x, t: op.Mul(op.Mul(x, t), 0.5),
}


def _gelu_check(context, x, **_) -> str | None:
    version = context.model.opset_imports.get("", 0) if context.model is not None else 20
    if version < 20:
        return f"Gelu needs opset 20; the model imports opset {version}"
    if x.dtype is not None and not x.dtype.is_floating_point():
        return f"Gelu input is {x.dtype}"
    return None


def _gelu_rules(form: str, inner, approximate: str) -> list[Rule]:
    def replacement(op, x, **_):
        return op.Gelu(x, approximate=approximate) if approximate != "none" else op.Gelu(x)

    def target_for(outer):
        def target(op, x):
            return outer(op, x, inner(op, x))

        return target

    return [Rule(f"gelu_{form}_{order}", target_for(outer), replacement, _gelu_check) for order, outer in _OUTER.items()]


GELU_RULES: list[Rule] = [*_gelu_rules("erf", _erf_inner, "none"), *_gelu_rules("tanh", _tanh_inner, "tanh")]

def _mean(op, x):
    return op.ReduceMean(x, [-1], _allow_other_attributes=True)


def _layer_norm(op, x, scale, epsilon):
    d = op.Sub(x, _mean(op, x))
    var = _mean(op, pattern.OrValue([op.Mul(d, d), op.Pow(d, 2)]))
    std = op.Sqrt(op.Add(var, epsilon))
    return op.Mul(pattern.OrValue([op.Div(d, std), op.Mul(d, op.Reciprocal(std))]), scale)


def _layer_norm_check(context, x, epsilon, **_) -> str | None:
    for node in context.nodes:
        if node.op_type == "ReduceMean" and not node.attributes.get_int("keepdims", 1):
            return f"ReduceMean '{node.name}' has keepdims=0"
        if node.op_type == "ReduceMean" and node.attributes.get_int("noop_with_empty_axes", 0):
            return f"ReduceMean '{node.name}' has noop_with_empty_axes=1"
    if x.dtype not in LAYER_NORM_COMPUTE_TYPES:
        return f"LayerNormalization computes in float/double; the input is {x.dtype}"
    eps = epsilon.const_value
    if eps is None or eps.numpy().size != 1:
        return "epsilon is not a constant scalar"
    return None


def _layer_norm_rewrite(op, x, scale, epsilon, **_):
    return op.LayerNormalization(x, scale, axis=-1, epsilon=float(epsilon.const_value.numpy().reshape(-1)[0]), stash_type=x.dtype)


LAYER_NORM_RULES: list[Rule] = [
    Rule("layer_norm", _layer_norm, _layer_norm_rewrite, _layer_norm_check),
    Rule.wrap(_layer_norm_with_bias_rule, "layer_norm_bias"),
]

NORMALIZATION_RULES: list[Rule] = [*LAYER_NORM_RULES, *GELU_RULES]
