"""Each cleanup pass on a graph built to need it; results checked structurally and numerically."""

import numpy as np
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir import numeric
from graphpress.passes import NumericInstrument, PassManager, build_passes
from tests.conftest import make_model, tensor

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def _run(proto, spec, expected, rtol=1e-6, atol=1e-6):
    """Run ``spec`` with numeric verification; the result's ``y`` must equal ``expected(x)``, the
    graph's math written in numpy (not the input model run again). Return (model, result)."""
    model = gp.load(proto)
    feeds = numeric.make_inputs(model, seed=1)
    inst = NumericInstrument(feeds)
    result = PassManager(build_passes(spec), [inst]).run(model)
    gp.verify(model)
    np.testing.assert_allclose(numeric.run(model, feeds)["y"], expected(feeds["x"]), rtol=rtol, atol=atol)
    return model, result


def _ops(model):
    return [n.op_type for n in model.graph]


def test_dce_removes_dead_nodes():
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["dead"]), helper.make_node("Tanh", ["dead"], ["dead2"])],
        [X],
        [Y],
    )
    model, result = _run(proto, "dce", lambda x: np.maximum(x, 0))
    assert _ops(model) == ["Relu"]
    assert result.records[0].stats["nodes_removed"] == 2


def test_eliminate_identity_and_no_ops():
    proto = make_model(
        [
            helper.make_node("Identity", ["x"], ["a"]),
            helper.make_node("Add", ["a", "zero"], ["b"]),
            helper.make_node("Mul", ["b", "one"], ["c"]),
            helper.make_node("Relu", ["c"], ["d"]),
            helper.make_node("Cast", ["x"], ["e"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["d", "e"], ["y"]),
        ],
        [X],
        [Y],
        [tensor("zero", np.float32(0.0)), tensor("one", np.float32(1.0))],
    )
    model, result = _run(proto, "eliminate_identity", lambda x: np.maximum(x, 0) + x)
    assert _ops(model) == ["Relu", "Add"]
    assert result.records[0].stats["nodes_removed"] == 4


def test_fold_constants():
    proto = make_model(
        [
            helper.make_node("Add", ["c1", "c2"], ["c3"]),
            helper.make_node("Mul", ["c3", "c2"], ["c4"]),
            helper.make_node("Add", ["x", "c4"], ["y"]),
        ],
        [X],
        [Y],
        [tensor("c1", np.arange(6, dtype=np.float32)), tensor("c2", np.full(6, 2.0, np.float32))],
    )
    model, result = _run(proto, "fold_constants", lambda x: x + (np.arange(6) + 2.0) * 2.0)
    assert _ops(model) == ["Add"]
    folded = next(iter(model.graph)).inputs[1].const_value.numpy()
    np.testing.assert_array_equal(folded, (np.arange(6) + 2.0) * 2.0)
    assert result.records[0].stats["nodes_removed"] == 2


def test_fold_constants_folds_a_split_of_a_constant_and_what_follows():
    # onnxscript's folder folds single-output nodes only; a constant shape split into parts
    # (AffineGrid's body splits its size input) must become constants, and the Reshape with them
    proto = make_model(
        [
            helper.make_node("Split", ["c", "sizes"], ["rows", "cols"], axis=0),
            helper.make_node("Concat", ["cols", "rows"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        [X],
        [Y],
        [tensor("c", np.array([2, 6], np.int64)), tensor("sizes", np.array([1, 1], np.int64))],
    )
    model, _ = _run(proto, "fold_constants", lambda x: x.reshape(6, 2))
    assert _ops(model) == ["Reshape"]
    np.testing.assert_array_equal(next(iter(model.graph)).inputs[1].const_value.numpy(), [6, 2])


def test_cse_merges_identical_nodes():
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["x"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [X],
        [Y],
    )
    model, _ = _run(proto, "cse", lambda x: 2 * np.maximum(x, 0))
    assert _ops(model) == ["Relu", "Add"]
    add = list(model.graph)[1]
    assert add.inputs[0] is add.inputs[1]


def test_topo_sort_orders_nodes():

    proto = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])], [X], [Y])
    model = gp.load(proto)
    relu = next(iter(model.graph))
    model.graph.remove(relu, safe=False)
    model.graph.append(relu)
    assert gp.ir.check(model)
    result = PassManager(build_passes("topo_sort")).run(model)
    assert result.records[0].modified and _ops(model) == ["Relu", "Neg"]
    assert gp.ir.check(model) == []


def test_simplify_shapes_collapses_reshapes():
    proto = make_model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["a"]),
            helper.make_node("Reshape", ["a", "s2"], ["b"]),
            helper.make_node("Unsqueeze", ["b", "ax0"], ["c"]),
            helper.make_node("Unsqueeze", ["c", "ax0"], ["y"]),
        ],
        [X],
        [Y],
        [
            tensor("s1", np.array([3, 4], np.int64)),
            tensor("s2", np.array([12], np.int64)),
            tensor("ax0", np.array([0], np.int64)),
        ],
    )
    model, result = _run(proto, "simplify_shapes", lambda x: x.reshape(1, 1, 12))
    assert [op for op in _ops(model) if op != "Constant"] == ["Reshape", "Unsqueeze"]
    assert result.records[0].stats["rewrites"] == 2


def test_cleanup_reaches_fixpoint_and_second_run_is_unmodified(mlp_proto):
    model = gp.load(mlp_proto)
    first = PassManager(build_passes("cleanup")).run(model)
    assert first.records[0].modified and first.records[0].stats["fixpoint_reached"] is True
    second = PassManager(build_passes("cleanup")).run(model)
    assert not second.records[0].modified, "modified must be exact: nothing left to clean"


def test_fold_batchnorm_into_conv_is_numerically_equal():
    """W' = W * gamma/std, B' = (B - mean) * gamma/std + beta; checked under the fusion tolerance."""
    rng = np.random.default_rng(0)
    c = 4
    w = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    mean = rng.standard_normal(c).astype(np.float32)
    var = rng.uniform(0.5, 1.5, c).astype(np.float32)
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [Y],
        [tensor("w", w), tensor("b", b), tensor("gamma", gamma), tensor("beta", beta), tensor("mean", mean), tensor("var", var)],
    )
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3)

    def conv_bn(x):  # 3x3 convolution, padding 1, then inference batch norm, in float64
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)]), (3, 3), axis=(2, 3))
        conv = np.einsum("nchwij,ocij->nohw", windows, w.astype(np.float64)) + b[:, None, None]
        return (conv - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]

    model, result = _run(proto, "fold_batchnorm", conv_bn, rtol=1e-4, atol=1e-5)  # the fusion tolerance
    assert _ops(model) == ["Conv"]
    assert result.records[0].stats["folded_bn"] == 1
    assert result.records[0].verification["family"] == "fusion"
    conv = next(iter(model.graph))
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy(), w * scale[:, None, None, None], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(conv.inputs[2].const_value.numpy(), (b - mean) * scale + beta, rtol=1e-6, atol=1e-6)


def test_expand_that_adds_dimensions_is_kept_before_a_binary_op():
    """Sub(Expand(x[], [1]), y[]) is [1]; without the Expand it would be [] (onnxscript 0.7.2's
    rule dropped it: found by the fuzzer, NNSmith seed 14). An Expand that broadcasting makes
    redundant is still removed."""
    proto = make_model(
        [
            helper.make_node("Expand", ["x", "shape1"], ["e"], name="expand"),
            helper.make_node("Sub", ["e", "y"], ["out"], name="sub"),
            helper.make_node("Expand", ["v", "shape4"], ["ev"], name="expand_noop"),
            helper.make_node("Add", ["ev", "w"], ["out2"], name="add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, []), helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1]), helper.make_tensor_value_info("out2", TensorProto.FLOAT, [4])],
        [tensor("shape1", np.array([1], np.int64)), tensor("shape4", np.array([4], np.int64))],
    )  # fmt: skip
    model = gp.load(proto)
    feeds = {"x": np.array(2.0, np.float32), "y": np.array(0.5, np.float32), "v": np.ones(1, np.float32), "w": np.arange(4, dtype=np.float32)}
    inst = NumericInstrument(feeds)
    PassManager(build_passes("simplify_shapes"), [inst]).run(model)
    ops = [n.name for n in model.graph]
    assert "expand" in ops and "expand_noop" not in ops
    assert numeric.run(model, feeds)["out"].shape == (1,)


def test_two_outputs_of_one_value_both_survive_cleanup():
    """cse makes two identical Casts one (the second output becomes an Identity); onnx-ir
    1.1.0's identity elimination then renamed the value and one graph output vanished
    (found by the fuzzer, NNSmith seed 76). And a missing output fails the numeric check."""
    proto = make_model(
        [
            helper.make_node("ArgMax", ["x"], ["a"], axis=1, name="argmax"),
            helper.make_node("Cast", ["a"], ["y1"], to=TensorProto.FLOAT, name="c1"),
            helper.make_node("Cast", ["a"], ["y2"], to=TensorProto.FLOAT, name="c2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2])],
    )
    model = gp.load(proto)
    inst = NumericInstrument(numeric.make_inputs(model, seed=0))
    PassManager(build_passes("cleanup"), [inst]).run(model)
    assert [o.name for o in model.graph.outputs] == ["y1", "y2"]
    assert sum(n.op_type == "Cast" for n in model.graph) == 1  # still merged, behind an Identity
    out = numeric.run(model, numeric.make_inputs(model, seed=0))
    assert list(out) == ["y1", "y2"]
    ref = {"y1": np.zeros(2, np.float32), "y2": np.zeros(2, np.float32)}
    assert not numeric.compare_outputs(ref, {"y1": np.zeros(2, np.float32)}, "exact").passed


def test_identity_from_an_outer_graph_stays_in_a_subgraph():
    """An If branch returning an outer value through Identity keeps it: renaming the outer
    value to the branch output's name would break the outer graph."""
    then_g = helper.make_graph([helper.make_node("Identity", ["z"], ["t_out"])], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["z"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [3])])
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["z"], name="relu"), helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if")],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
    )
    model = gp.load(proto)
    feeds = {"c": np.array(True), "x": np.array([-1.0, 0.5, 2.0], np.float32)}
    PassManager(build_passes("eliminate_identity"), [NumericInstrument(feeds)]).run(model)
    assert [o.name for o in model.graph.outputs] == ["y", "z"]
    out = numeric.run(model, feeds)
    assert out["z"].tolist() == out["y"].tolist() == [0.0, 0.5, 2.0]


def test_an_if_with_a_constant_condition_becomes_its_branch():
    """If(c) with c a constant: cleanup inlines the branch c selects (TVM's importer and the
    passes then see plain ops); the result is that branch's math, checked with numpy."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    x = np.array([-2.0, -0.5, 0.5, 3.0], np.float32)
    for cond, op, want in ((True, "Relu", np.maximum(x, 0)), (False, "Neg", -x)):
        proto = make_model(
            [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
            [tensor("c", np.array(cond))],
        )
        model = gp.load(proto)
        PassManager(build_passes("cleanup")).run(model)
        assert [n.op_type for n in model.graph] == [op]
        np.testing.assert_array_equal(numeric.run(model, {"x": x})["y"], want)
