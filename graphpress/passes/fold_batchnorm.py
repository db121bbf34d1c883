"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

Math (per output channel ``c``; ``std = sqrt(var + eps)``)::

    Y    = W * X + B
    Y_BN = gamma * (Y - mean) / std + beta
         = (W * gamma/std) * X + ((B - mean) * gamma/std + beta)

so ``W' = W * (gamma / std)`` (scaled along the output-channel axis: axis 0 of a Conv
weight, axis 1 of a ConvTranspose weight, the output axis of a Gemm weight) and
``B' = (B - mean) * gamma / std + beta``. The rules are onnxscript's
(``fuse_batchnorm_into_{conv,conv_transpose,gemm}_rule``); they apply only when W, B and
the four BatchNorm tensors are constants and the Conv output has no other consumer.

TVM's Relax pipeline does not fold BatchNorm (it stays as subtract/divide/multiply/add after
each conv), so the TVM backend runs this pass before lowering. The full ``fuse`` pass
(issue #4) includes it.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from graphpress.passes.base import Pass, PassResult, graph_counts
from graphpress.passes.registry import register

__all__ = ["FOLD_BATCHNORM_RULES", "FoldBatchNorm"]

FOLD_BATCHNORM_RULES: list[pattern.RewriteRule] = [
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
]


@register
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm weights and bias."""

    name = "fold_batchnorm"
    family = "fusion"
    description = "fold BatchNormalization into Conv/ConvTranspose/Gemm weights"

    def call(self, model: ir.Model) -> PassResult:
        before = graph_counts(model)[0]
        folded = pattern.RewriteRuleSet(FOLD_BATCHNORM_RULES).apply_to_model(model)
        if folded:
            common_passes.RemoveUnusedNodesPass()(model)
        return PassResult(model, folded > 0, {"folded_bn": folded, "nodes_removed": before - graph_counts(model)[0]})
