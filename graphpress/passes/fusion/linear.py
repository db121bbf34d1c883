"""Linear-algebra and layout rewrites: MatMul + Add → Gemm, Transpose into Gemm, collapsed
Transpose/Reshape chains, Pad folded into Conv and pooling pads.

* ``Add(MatMul(A, B), C) → Gemm(A, B, C)`` when A and B have rank 2 (Gemm's contract; C must
  broadcast to ``[M, N]``). ``Transpose(A)``/``Transpose(B)`` before it become ``transA``/``transB``.
  Gemm computes ``A·B + C`` with one rounding per output less than MatMul then Add.
* ``Transpose(Transpose(x, p), q) = Transpose(x, p∘q)`` (identity when ``p∘q`` is), and
  ``Reshape(Reshape(x, s1), s2) = Reshape(x, s2)`` when ``s2`` has no 0 or -1 that refers to
  ``s1``: exact (data movement only).
* ``Conv(Pad(x, p)) = Conv(x, pads=pads+p)`` for constant zero padding of spatial axes
  (onnxscript's rule); ``AveragePool(Pad(x, p, 0)) = AveragePool(x, pads+p, count_include_pad=1)``
  (the zeros are counted in the average in both) and ``MaxPool(Pad(x, p, -inf)) =
  MaxPool(x, pads+p)`` (pooling pads are -inf). Refused with ``ceil_mode=1`` (the last window
  may start inside the explicit padding but never inside pooling pads, so the output size can
  differ), for non-constant pad modes or other pad values. Exact.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter.rules.common import (
    fuse_pad_into_conv_rule,
    matmul_add_to_gemm_rule,
    normalize_pad_format_conv_rule,
    reshape_reshape_rule,
    transpose_a_matmul_add_to_gemm_rule,
    transpose_ab_matmul_add_to_gemm_rule,
    transpose_b_matmul_add_to_gemm_rule,
    transpose_transpose_rule,
)

from graphpress.passes.rewrite import Rule

__all__ = ["LINEAR_RULES", "PAD_RULES"]


def _pad_pool_pattern(pool_type: str):
    def target(op, x, pads):
        padded = op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["pad_out"])
        return getattr(op, pool_type)(padded, _allow_other_attributes=True, _outputs=["pool_out"])

    return target


def _pad_pool_check(pool_type: str):
    want = 0.0 if pool_type == "AveragePool" else -np.inf

    def check(context, x, pads, pad_out, pool_out, **_) -> str | None:
        pad, pool = pad_out.producer(), pool_out.producer()
        mode = pad.attributes.get_string("mode", "constant")
        if mode != "constant":
            return f"Pad '{pad.name}' has mode '{mode}'; only constant padding folds into {pool_type}"
        if pads.const_value is None:
            return f"Pad '{pad.name}' pads are not constant"
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            return f"Pad '{pad.name}' has an axes input; not supported"
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2] is not None:
            if pad.inputs[2].const_value is None:
                return f"Pad '{pad.name}' value is not constant"
            value = float(pad.inputs[2].const_value.numpy().reshape(-1)[0])
        if value != want:
            return f"Pad '{pad.name}' pads with {value}, but {pool_type} treats its pads as {want}; folding would change the result"
        p = pads.const_value.numpy().astype(np.int64)
        rank = len(p) // 2
        if np.any(p < 0):
            return f"Pad '{pad.name}' has negative pads (a crop)"
        if np.any(p[[0, 1, rank, rank + 1]] != 0):
            return f"Pad '{pad.name}' pads the batch or channel axis"
        if pool.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return f"{pool_type} '{pool.name}' uses auto_pad"
        if pool.attributes.get_int("ceil_mode", 0):
            return f"{pool_type} '{pool.name}' has ceil_mode=1; the output size could change"
        if len(pool.outputs) > 1:
            return f"{pool_type} '{pool.name}' also outputs indices"
        own = list(pool.attributes.get_ints("pads", [0] * (2 * (rank - 2))))
        if pool_type == "AveragePool" and not pool.attributes.get_int("count_include_pad", 0) and any(own):
            return f"AveragePool '{pool.name}' has its own pads with count_include_pad=0; merged pads would be counted differently"
        kernel = list(pool.attributes.get_ints("kernel_shape", []))
        merged = _merge_pads(own, p)
        if len(kernel) != rank - 2 or any(m >= kernel[i % len(kernel)] for i, m in enumerate(merged)):
            return f"merged pads {merged} would not be smaller than {pool_type} '{pool.name}' kernel {kernel}, which ONNX requires"
        return None

    return check


def _merge_pads(own: list[int], p: np.ndarray) -> list[int]:
    """Pool pads ``[begins..., ends...]`` plus a Pad's spatial pads (``[all begins..., all ends...]``)."""
    rank = len(p) // 2
    spatial = rank - 2
    return [int(own[i] + p[2 + i]) for i in range(spatial)] + [int(own[spatial + i] + p[rank + 2 + i]) for i in range(spatial)]


def _pad_pool_rewrite(pool_type: str):
    def rewrite(op, x, pads, pad_out, pool_out):
        pool = pool_out.producer()
        p = pads.const_value.numpy().astype(np.int64)
        own = list(pool.attributes.get_ints("pads", [0] * (len(p) - 4)))
        merged = _merge_pads(own, p)
        attrs = {k: v for k, v in pool.attributes.items() if k != "pads"}
        extra = {"count_include_pad": 1} if pool_type == "AveragePool" else {}
        attrs = {k: v for k, v in attrs.items() if k not in extra}
        return getattr(op, pool_type)(x, pads=merged, **attrs, **extra)

    return rewrite


PAD_RULES: list[Rule] = [
    Rule.wrap(normalize_pad_format_conv_rule, "conv_pad_format"),
    Rule.wrap(fuse_pad_into_conv_rule, "pad_conv"),
    *(
        Rule(f"pad_{pool.lower()}", _pad_pool_pattern(pool), _pad_pool_rewrite(pool), _pad_pool_check(pool))
        for pool in ("AveragePool", "MaxPool")
    ),
]

def _gemm_bias_check(trans_a: bool, trans_b: bool):
    """Gemm's C must broadcast to ``[M, N]`` one way; Add broadcasts both ways.

    onnxscript 0.7.2's MatMul+Add rules check only the ranks of A and B: ``Add(MatMul(a[1,1],
    b[1,14]), c[47,1,37,1])`` became a Gemm ONNX Runtime rejects ("Invalid bias shape for
    broadcast"; found by ``make fuzz``, NNSmith seed 492).
    """

    def check(context, input_a, input_b, input_c, **_) -> str | None:
        shapes = [v.shape for v in (input_a, input_b, input_c)]
        if any(s is None for s in shapes) or len(shapes[0]) != 2 or len(shapes[1]) != 2:
            return "the shapes of A, B or C are not known"
        a, b, c = shapes
        out = [a[1] if trans_a else a[0], b[0] if trans_b else b[1]]
        if len(c) > 2:
            return f"C has rank {len(c)}; Gemm's bias has rank 2 at most"
        for dim, target in zip(reversed(list(c)), reversed(out)):
            if dim != 1 and dim != target:
                return f"C's shape {list(c)} does not broadcast to the Gemm output [{out[0]}, {out[1]}]"
        return None

    return check


LINEAR_RULES: list[Rule] = [
    Rule.wrap(transpose_transpose_rule, "transpose_transpose"),
    Rule.wrap(reshape_reshape_rule, "reshape_reshape"),
    Rule.wrap(transpose_ab_matmul_add_to_gemm_rule, "transpose_ab_matmul_add_gemm", check=_gemm_bias_check(True, True)),
    Rule.wrap(transpose_a_matmul_add_to_gemm_rule, "transpose_a_matmul_add_gemm", check=_gemm_bias_check(True, False)),
    Rule.wrap(transpose_b_matmul_add_to_gemm_rule, "transpose_b_matmul_add_gemm", check=_gemm_bias_check(False, True)),
    Rule.wrap(matmul_add_to_gemm_rule, "matmul_add_gemm", check=_gemm_bias_check(False, False)),
    *PAD_RULES,
]
