"""Attributing a failed lossless check: rounding within tolerance that an untouched node
amplified is accepted and named; a node that computes something else is not."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.errors import NumericMismatchError
from graphpress.ir import numeric
from graphpress.ir.divergence import attribute_divergence
from graphpress.passes import NumericInstrument, Pass, PassManager, PassResult
from tests.conftest import make_model, tensor

X = np.linspace(0.0, 3.0, 64, dtype=np.float32).reshape(1, 64)


def _sin_model(offset: float, last_op: str = "Sin"):
    """y = last_op(x + offset): an offset near 1500 makes Sin ill-conditioned in float32."""
    return make_model(
        [helper.make_node("Add", ["x", "c"], ["h"], name="add"), helper.make_node(last_op, ["h"], ["y"], name="sin")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [tensor("c", np.array([offset], np.float32))],
    )




def test_amplified_rounding_is_explained():
    reference, candidate = gp.load(_sin_model(1500.0)), gp.load(_sin_model(float(np.nextafter(np.float32(1500), np.float32(2000)))))
    ref, new = numeric.run(reference, {"x": X}), numeric.run(candidate, {"x": X})
    assert not numeric.compare_outputs(ref, new, "cleanup").passed  # 1 ulp of 1500, through Sin
    found = attribute_divergence(reference, candidate, {"x": X}, family="cleanup")
    assert found.explained and [a["node"] for a in found.amplified_by] == ["sin"]


def test_a_node_that_computes_something_else_is_not_explained():
    reference, candidate = gp.load(_sin_model(1500.0)), gp.load(_sin_model(float(np.nextafter(np.float32(1500), np.float32(2000))), "Cos"))
    found = attribute_divergence(reference, candidate, {"x": X}, family="cleanup")
    assert not found.explained and "computes something else" in found.reason


class _NudgeConstant(Pass):
    """Moves the constant by one float32 ulp: within cleanup's tolerance where it is used."""

    name = "test_nudge_constant"
    family = "cleanup"

    def call(self, model):
        value = model.graph.initializers["c"]
        old = value.const_value.numpy()
        value.const_value = ir.Tensor(np.nextafter(old, np.float32(np.inf)).astype(np.float32), name="c")
        return PassResult(model, True, {})


class _BreakSin(Pass):
    name = "test_break_sin"
    family = "cleanup"

    def call(self, model):
        node = model.graph.node("sin")
        cos = ir.node("Cos", [node.inputs[0]], name="sin")
        model.graph.insert_after(node, cos)
        ir.convenience.replace_all_uses_with(node.outputs[0], cos.outputs[0], replace_graph_outputs=True)
        cos.outputs[0].name = "y"
        model.graph.remove(node, safe=True)
        return PassResult(model, True, {})


def test_instrument_accepts_amplified_rounding_and_names_the_node():
    model = gp.load(_sin_model(1500.0))
    inst = NumericInstrument({"x": X})
    result = PassManager([_NudgeConstant()], [inst]).run(model)
    assert result.records[0].verification["amplified_by"][0]["node"] == "sin"
    assert inst.final.passed and inst.final.amplified_by and inst.final.max_abs_diff > 1e-5


def test_instrument_still_refuses_a_wrong_rewrite():
    model = gp.load(_sin_model(1500.0))
    with pytest.raises(NumericMismatchError, match="pass 'test_break_sin' changed the outputs"):
        PassManager([_BreakSin()], [NumericInstrument({"x": X})]).run(model)
