"""Scaled dot-product attention → one ``graphpress::ScaledDotProductAttention`` node.

The pattern (what torch's exporters write for eager attention; ``Kt`` is K already transposed)::

    S = MatMul(Q, Kt) · scale        (Mul by a constant scalar, or Div by one)
    S = S + mask                     (optional additive mask, any broadcastable shape)
    P = Softmax(S, axis=-1)
    Y = MatMul(P, V)

becomes one call of a model-local ONNX function ``graphpress.ScaledDotProductAttention(Q, Kt,
V, scale[, mask])`` whose body is exactly the matched nodes, so the rewrite is exact.
ONNX Runtime runs model-local functions (it inlines them and applies its own fusions); the TVM
backend inlines them before lowering. Later passes see one attention node per head group
instead of five ops, and ``summarize`` counts its MACs as attention.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from graphpress.passes.rewrite import Rule

__all__ = ["ATTENTION_RULES", "SDPA_DOMAIN", "SDPA_OP"]

SDPA_DOMAIN = "graphpress"
SDPA_OP = "ScaledDotProductAttention"


def _scores(op, q, kt, scale):
    s = op.MatMul(q, kt)
    return pattern.OrValue([op.Mul(s, scale), op.Div(s, scale)])


def _sdpa_masked(op, q, kt, v, scale, mask):
    return op.MatMul(op.Softmax(op.Add(_scores(op, q, kt, scale), mask), axis=-1), v)


def _sdpa(op, q, kt, v, scale):
    return op.MatMul(op.Softmax(_scores(op, q, kt, scale), axis=-1), v)


def _check(context, q, kt, v, scale, **_) -> str | None:
    if scale.const_value is None or scale.const_value.numpy().size != 1:
        return "the attention scale is not a constant scalar"
    if not np.isfinite(scale.const_value.numpy()).all():
        return "the attention scale is not finite"
    for name, value in (("Q", q), ("K^T", kt), ("V", v)):
        if value.shape is not None and len(value.shape) < 2:
            return f"{name} has rank {len(value.shape)}; attention needs rank >= 2"
    return None


def _replace_masked(op, q, kt, v, scale, mask, **_):
    return op.ScaledDotProductAttention(q, kt, v, scale, mask, _domain=SDPA_DOMAIN)


def _replace(op, q, kt, v, scale, **_):
    return op.ScaledDotProductAttention(q, kt, v, scale, _domain=SDPA_DOMAIN)


ATTENTION_RULES: list[Rule] = [
    Rule("sdpa_masked", _sdpa_masked, _replace_masked, _check, as_function=True),
    Rule("sdpa", _sdpa, _replace, _check, as_function=True),
]
