"""Activation epilogues: Conv/ConvTranspose/Gemm/MatMul followed by Relu/Clip/Sigmoid/HardSwish.

First the activations are brought to single ops (onnxscript's rules, all exact):
``Mul(x, HardSigmoid(x)) → HardSwish(x)``, ``x·Clip(x+3, 0, 6)/6 → HardSwish(x)``,
``Relu(Relu(x)) → Relu(x)``, ``Clip(Clip(x))`` and ``Relu``/``Clip`` pairs → one ``Clip`` with the
intersected range. Then every linear op whose only consumer is one of those activations is
grouped with it: both nodes get ``metadata_props["graphpress.fusion_group"]`` (the linear
node's name). The grouping changes no math; it records the kernels the backends must emit as
one. The TVM backend lowers each group to one fused kernel (``conv2d`` + bias + activation in
one loop nest, checked by the tests from the kernel names of the build).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules.common import (
    fuse_hardswish_rules,
    successive_clip_relu_rule,
    successive_clip_rule,
    successive_relu_clip_rule,
    successive_relu_rule,
)

from graphpress.passes.rewrite import Rule

__all__ = ["ACTIVATIONS", "EPILOGUE_RULES", "GROUP_KEY", "LINEAR_OPS", "group_epilogues"]

GROUP_KEY = "graphpress.fusion_group"
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "HardSwish"})

EPILOGUE_RULES: list[Rule] = [
    *(Rule.wrap(rule, f"hardswish_{i}") for i, rule in enumerate(fuse_hardswish_rules().rules)),
    Rule.wrap(successive_relu_rule, "relu_relu"),
    Rule.wrap(successive_clip_rule, "clip_clip"),
    Rule.wrap(successive_clip_relu_rule, "clip_relu"),
    Rule.wrap(successive_relu_clip_rule, "relu_clip"),
]


def group_epilogues(model: ir.Model) -> int:
    """Mark each linear op + activation pair; returns how many groups are new."""
    new = 0
    for graph in model.graphs():
        for node in graph:
            if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            uses = list(out.uses())
            if len(uses) != 1 or out.is_graph_output():
                continue
            act = uses[0].node
            if act.op_type not in ACTIVATIONS or act.domain not in ("", "ai.onnx"):
                continue
            group = node.name or f"{node.op_type}_{id(node)}"
            if node.metadata_props.get(GROUP_KEY) == group and act.metadata_props.get(GROUP_KEY) == group:
                continue
            node.metadata_props[GROUP_KEY] = group
            act.metadata_props[GROUP_KEY] = group
            new += 1
    return new
