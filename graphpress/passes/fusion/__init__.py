"""The ``fuse`` pass: every fusion rule of graphpress, run as one rule set to a fixpoint.

=========================  ===========================================================
module                     rules
=========================  ===========================================================
:mod:`.affine`             BatchNormalization into Conv/ConvTranspose/Gemm/MatMul;
                           constant per-channel Mul/Add into Conv
:mod:`.linear`             MatMul+Add → Gemm (with transA/transB), Transpose/Transpose,
                           Reshape/Reshape, Pad into Conv/AveragePool/MaxPool
:mod:`.normalization`      decomposed LayerNormalization, GELU (erf and tanh forms)
:mod:`.attention`          scaled dot-product attention → one function node
:mod:`.epilogue`           HardSwish/Relu/Clip canonicalization
=========================  ===========================================================

Every rule is a :class:`graphpress.passes.rewrite.Rule`: it refuses with a reason (see
:func:`graphpress.passes.rewrite.explain`), stamps its name on the nodes it creates, and refuses
matches inside a QDQ group (reading a ``DequantizeLinear``, feeding a ``QuantizeLinear``).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphpress.passes.base import PassResult, option
from graphpress.passes.fusion.affine import AFFINE_RULES, BATCHNORM_RULES
from graphpress.passes.fusion.attention import ATTENTION_RULES, SDPA_DOMAIN, SDPA_OP
from graphpress.passes.fusion.epilogue import EPILOGUE_RULES
from graphpress.passes.fusion.linear import LINEAR_RULES
from graphpress.passes.fusion.normalization import NORMALIZATION_RULES
from graphpress.passes.registry import register
from graphpress.passes.rewrite import RewritePass

__all__ = [
    "AFFINE_RULES",
    "ATTENTION_RULES",
    "BATCHNORM_RULES",
    "EPILOGUE_RULES",
    "FUSION_RULES",
    "LINEAR_RULES",
    "NORMALIZATION_RULES",
    "SDPA_DOMAIN",
    "SDPA_OP",
    "Fuse",
]

FUSION_RULES = [*AFFINE_RULES, *LINEAR_RULES, *NORMALIZATION_RULES, *EPILOGUE_RULES, *ATTENTION_RULES]


@register
class Fuse(RewritePass):
    """All fusion rules to a bounded fixpoint."""

    name = "fuse"
    family = "fusion"
    description = "fold BN/affine ops, MatMul+Add->Gemm, LayerNorm, GELU, attention, Pad, activation epilogues"
    rules = tuple(FUSION_RULES)

    @dataclasses.dataclass
    class Options:
        max_iterations: int = option(8, help="rounds of rule application before giving up on a fixpoint", min=1, max=1000)
        attention: bool = option(True, help="fuse scaled dot-product attention into one function node")

    def call(self, model: ir.Model) -> PassResult:
        if not self.options.attention:
            self.rules = tuple(r for r in FUSION_RULES if r not in ATTENTION_RULES)
        return super().call(model)
