"""Fold affine ops (BatchNormalization, constant Mul/Add) into the linear op before them.

BatchNormalization after Conv/ConvTranspose/Gemm/MatMul (per output channel ``c``;
``s_c = gamma_c / sqrt(var_c + eps)``)::

    BN(W x + B) = s * (W x + B - mean) + beta = (W * s) x + ((B - mean) * s + beta)

so ``W' = W * s`` along the output-channel axis (axis 0 of a Conv weight, axis 1 of a
ConvTranspose weight, the output axis of a Gemm/MatMul weight) and
``B' = (B - mean) * s + beta``. Conv/ConvTranspose/Gemm use onnxscript's rules; MatMul + BN is
ours and applies to rank-2 MatMuls only (there the BN channel axis 1 is the weight's output
axis; for rank >= 3 it is a row axis of the activation and cannot be folded), producing
``Gemm(x, W', B')``.

Conv followed by a constant per-channel (or scalar) Mul or Add::

    (W x + B) * s = (W * s) x + B * s          (s of shape [C,1,...,1], [1,C,1,...], [1] or [])
    (W x + B) + a = W x + (B + a)

The rewrites are exact in real arithmetic; in fp32 the products are rounded once ahead of
time instead of at run time, hence the ``fusion`` tolerance family.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from graphpress.passes.rewrite import Rule

__all__ = ["AFFINE_RULES", "BATCHNORM_RULES"]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _channel_vector(arr: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``arr`` as a length-``channels`` vector if it broadcasts only along axis 1 of a rank-``rank`` tensor."""
    if arr.ndim > rank:
        return None
    shape = (1,) * (rank - arr.ndim) + arr.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(arr.reshape(-1) if arr.size > 1 else arr.reshape(1), (channels,)).astype(arr.dtype)


def _conv_affine_check(kind: str):
    def check(context, x, w, const, conv_out, **_) -> str | None:
        conv = conv_out.producer()
        weight = _const(w)
        if weight is None:
            return f"Conv '{conv.name}' weight is not a constant"
        if len(conv.inputs) > 2 and conv.inputs[2] is not None and _const(conv.inputs[2]) is None:
            return f"Conv '{conv.name}' bias is not a constant"
        value = _const(const)
        if value is None:
            return f"the {kind} operand is not a constant"
        if value.dtype != weight.dtype:
            return f"the {kind} operand is {value.dtype}, the Conv weight {weight.dtype}"
        if _channel_vector(value, weight.ndim, weight.shape[0]) is None:
            return f"the {kind} operand of shape {list(value.shape)} is not per output channel of a {weight.ndim}-D Conv output"
        return None

    return check


def _conv_mul_pattern(op, x, w, const):
    return op.Mul(op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"]), const)


def _conv_add_pattern(op, x, w, const):
    return op.Add(op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"]), const)


def _conv_parts(w: ir.Value, const: ir.Value, conv_out: ir.Value):
    conv = conv_out.producer()
    weight = _const(w)
    vec = _channel_vector(_const(const), weight.ndim, weight.shape[0])
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = _const(bias_value)
    return conv, weight, vec, bias


def _conv_mul_rewrite(op, x, w, const, conv_out):
    conv, weight, s, bias = _conv_parts(w, const, conv_out)
    inputs = [x, op.initializer(ir.tensor(weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))), f"{w.name}_scaled")]
    if bias is not None:
        inputs.append(op.initializer(ir.tensor((bias * s).astype(bias.dtype)), f"{conv.inputs[2].name}_scaled"))
    return op.Conv(*inputs, **conv.attributes)


def _conv_add_rewrite(op, x, w, const, conv_out):
    conv, weight, a, bias = _conv_parts(w, const, conv_out)
    base = bias if bias is not None else np.zeros(weight.shape[0], dtype=weight.dtype)
    new_bias = op.initializer(ir.tensor((base + a).astype(weight.dtype)), f"{conv.name}_bias_shifted")
    return op.Conv(x, w, new_bias, **conv.attributes)


def _matmul_bn_pattern(op, x, w, gamma, beta, mean, var):
    return op.BatchNormalization(op.MatMul(x, w), gamma, beta, mean, var, _allow_other_attributes=True, _outputs=["bn_out"])


def _matmul_bn_check(context, x, w, gamma, beta, mean, var, bn_out, **_) -> str | None:
    bn = bn_out.producer()
    weight = _const(w)
    if weight is None or weight.ndim != 2:
        return "the MatMul weight is not a constant 2-D tensor"
    if x.shape is None or len(x.shape) != 2:
        return f"the MatMul input has rank {len(x.shape) if x.shape is not None else 'unknown'}; BN folds into the weight only for rank 2"
    if any(_const(v) is None for v in (gamma, beta, mean, var)):
        return f"BatchNormalization '{bn.name}' parameters are not constants"
    if bn.attributes.get_int("training_mode", 0):
        return f"BatchNormalization '{bn.name}' is in training mode"
    return None


def _matmul_bn_rewrite(op, x, w, gamma, beta, mean, var, bn_out):
    bn = bn_out.producer()
    eps = bn.attributes.get_float("epsilon", 1e-5)
    weight = _const(w)
    scale = _const(gamma) / np.sqrt(_const(var) + eps)
    new_w = op.initializer(ir.tensor((weight * scale[None, :]).astype(weight.dtype)), f"{w.name}_bn")
    new_b = op.initializer(ir.tensor((_const(beta) - _const(mean) * scale).astype(weight.dtype)), f"{bn.name}_bias")
    return op.Gemm(x, new_w, new_b)


BATCHNORM_RULES: list[Rule] = [
    Rule.wrap(fuse_batchnorm_into_conv_rule, "conv_batchnorm"),
    Rule.wrap(fuse_batchnorm_into_conv_transpose_rule, "conv_transpose_batchnorm"),
    Rule.wrap(fuse_batchnorm_into_gemm_rule, "gemm_batchnorm"),
    Rule("matmul_batchnorm", _matmul_bn_pattern, _matmul_bn_rewrite, _matmul_bn_check),
]

AFFINE_RULES: list[Rule] = [
    *BATCHNORM_RULES,
    Rule("conv_mul_const", _conv_mul_pattern, _conv_mul_rewrite, _conv_affine_check("Mul")),
    Rule("conv_add_const", _conv_add_pattern, _conv_add_rewrite, _conv_affine_check("Add")),
]
