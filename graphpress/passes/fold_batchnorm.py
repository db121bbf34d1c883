"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

Math (per output channel ``c``; ``std = sqrt(var + eps)``)::

    Y    = W * X + B
    Y_BN = gamma * (Y - mean) / std + beta
         = (W * gamma/std) * X + ((B - mean) * gamma/std + beta)

so ``W' = W * (gamma / std)`` (scaled along the output-channel axis: axis 0 of a Conv
weight, axis 1 of a ConvTranspose weight, the output axis of a Gemm/MatMul weight) and
``B' = (B - mean) * gamma / std + beta``. The rules are the ``fuse`` pass's
(:mod:`graphpress.passes.fusion.affine`: onnxscript's ``fuse_batchnorm_into_*`` rules wrapped,
plus MatMul); they apply only when W, B and the four BatchNorm tensors are constants and the
Conv output has no other consumer.

TVM's Relax pipeline does not fold BatchNorm (it stays as subtract/divide/multiply/add after
each conv), so the TVM backend runs this pass before lowering. The full ``fuse`` pass
(issue #4) includes it.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphpress.passes.base import PassResult, graph_counts
from graphpress.passes.fusion.affine import BATCHNORM_RULES
from graphpress.passes.registry import register
from graphpress.passes.rewrite import RewritePass

__all__ = ["FoldBatchNorm"]


@register
class FoldBatchNorm(RewritePass):
    """Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul weights and bias.

    The rules are the ``fuse`` pass's own (:data:`graphpress.passes.fusion.affine.BATCHNORM_RULES`):
    one BatchNorm folder, with provenance on the nodes it writes and the QDQ guard.
    """

    name = "fold_batchnorm"
    family = "fusion"
    description = "fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul weights"
    rules = tuple(BATCHNORM_RULES)

    def call(self, model: ir.Model) -> PassResult:
        before = graph_counts(model)[0]
        result = super().call(model)
        if result.modified:
            common_passes.RemoveUnusedNodesPass()(model)
        stats = {**result.stats, "folded_bn": sum(result.stats.get(r.name, 0) for r in self.rules)}
        stats["nodes_removed"] = before - graph_counts(model)[0]
        return PassResult(model, result.modified, stats)
