"""graphpress.ir.edit: initializers under names no other value of the graph has."""

import numpy as np
import onnx_ir as ir

from graphpress.ir.edit import add_initializer, graph_names, unique_name


def _graph() -> ir.Graph:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    relu = ir.node("Relu", [x], name="relu")
    relu.outputs[0].name = "w"  # a node output named as the initializer will want to be
    graph = ir.Graph([x], relu.outputs, nodes=[relu], name="g")
    add_initializer(graph, "w_1", np.zeros(2, np.float32))
    return graph


def test_names_taken_once_give_the_names_a_scan_per_addition_gives():
    """A loop passing the names taken once (as ``bypass_float_qdq`` does for its 710 bounds) gets
    the same names as one scanning the graph at every addition: none an input, an initializer
    or a node output already has, nor one added before."""
    scanned, once = _graph(), _graph()
    taken = graph_names(once)
    assert {"x", "w", "w_1"} <= taken
    names = [(add_initializer(scanned, "w", np.ones(2, np.float32)).name, add_initializer(once, "w", np.ones(2, np.float32), taken).name) for _ in range(3)]
    assert names == [("w_2", "w_2"), ("w_3", "w_3"), ("w_4", "w_4")]
    assert set(scanned.initializers) == set(once.initializers) == {"w_1", "w_2", "w_3", "w_4"}
    assert unique_name(once, "x", taken) == "x_1" and "x_1" in taken  # the name returned is taken from now on
