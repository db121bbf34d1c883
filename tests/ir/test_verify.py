import numpy as np
import onnx_ir as ir
import pytest

import graphpress as gp
from graphpress.errors import InvariantError
from graphpress.ir import check


def test_valid_model_passes(mlp_proto):
    gp.verify(gp.load(mlp_proto))


def test_out_of_order_nodes_are_reported(mlp_proto):
    model = gp.load(mlp_proto)
    nodes = list(model.graph)
    model.graph.remove(nodes[0], safe=False)
    model.graph.append(nodes[0])
    problems = check(model)
    assert any("not in topological order" in p and "add1" in p for p in problems)


def test_dangling_use_and_all_violations_in_one_error(mlp_proto):
    model = gp.load(mlp_proto)
    relu = next(n for n in model.graph if n.op_type == "Relu")
    model.graph.remove(relu, safe=False)  # Identity still uses its output
    init = model.graph.initializers["b1"]
    init.const_value = ir.Tensor(np.zeros(16, np.float64), name="b1")  # dtype no longer FLOAT
    init.dtype = ir.DataType.FLOAT
    with pytest.raises(InvariantError) as info:
        gp.verify(model, where="after pass 'x'")
    err = info.value
    assert len(err.violations) >= 2
    assert any("relu1" in v and "dangling" in v for v in err.violations)
    assert any("'b1' is declared FLOAT but holds DOUBLE" in v for v in err.violations)
    assert str(err).startswith("after pass 'x':")


def test_unregistered_value_is_reported(mlp_proto):
    model = gp.load(mlp_proto)
    stray = ir.Value(name="stray", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 16]))
    add = next(n for n in model.graph if n.op_type == "Add")
    add.replace_input_with(1, stray)
    assert any("'stray'" in p and "unregistered" in p for p in check(model))


def test_duplicate_value_names_are_reported(mlp_proto):
    model = gp.load(mlp_proto)
    nodes = list(model.graph)
    nodes[1].outputs[0].name = "h0"  # same as MatMul's output
    assert any("defined twice" in p for p in check(model))
