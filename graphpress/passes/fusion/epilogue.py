"""Activation epilogues: single-op activations after Conv/ConvTranspose/Gemm/MatMul.

The activations are brought to single ops (onnxscript's rules, all exact):
``Mul(x, HardSigmoid(x)) → HardSwish(x)``, ``x·Clip(x+3, 0, 6)/6 → HardSwish(x)``,
``Relu(Relu(x)) → Relu(x)``, ``Clip(Clip(x))`` and ``Relu``/``Clip`` pairs → one ``Clip`` with the
intersected range. Nothing is tagged for the backends: TVM's own operator fusion already compiles a
linear op and the elementwise ops after it (bias, activation) into one kernel. Measured: ResNet-18,
MobileNetV2 and a conv/relu6/hardswish/sigmoid test model compile to identical kernel lists with
and without grouping tags (tests/backends/test_tvm_fusion.py checks the kernels).
"""

from __future__ import annotations

from onnxscript.rewriter.rules.common import (
    fuse_hardswish_rules,
    successive_clip_relu_rule,
    successive_clip_rule,
    successive_relu_clip_rule,
    successive_relu_rule,
)

from graphpress.passes.rewrite import Rule

__all__ = ["ACTIVATIONS", "EPILOGUE_RULES", "LINEAR_OPS"]

LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "HardSwish"})

EPILOGUE_RULES: list[Rule] = [
    *(Rule.wrap(rule, f"hardswish_{i}") for i, rule in enumerate(fuse_hardswish_rules().rules)),
    Rule.wrap(successive_relu_rule, "relu_relu"),
    Rule.wrap(successive_clip_rule, "clip_clip"),
    Rule.wrap(successive_clip_relu_rule, "clip_relu"),
    Rule.wrap(successive_relu_clip_rule, "relu_clip"),
]

