"""A deliberately wrong user pass (scales the first MatMul/Conv weight by 1.01): --verify must catch it."""

import numpy as np
import onnx_ir as ir

from graphpress.passes import Pass, PassResult, register


@register
class ScaleWeight(Pass):
    name = "test_scale_weight"
    family = "exact"
    description = "multiply one weight by 1.01 (a bug on purpose)"

    def call(self, model):
        for node in model.graph:
            if node.op_type in ("MatMul", "Conv", "Gemm") and node.inputs[1].const_value is not None:
                w = node.inputs[1]
                w.const_value = ir.Tensor(w.const_value.numpy() * np.float32(1.01), name=w.name)
                return PassResult(model, True, {"scaled": 1})
        return PassResult(model, False, {"scaled": 0})
