"""The rewrite-rule API: rules with reasons, explain, commutative matching, provenance, the
bounded fixpoint, QDQ refusal, user modules by import path, and the graphsurgeon adapter."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphpress as gp
from graphpress.cli import main
from graphpress.ir import numeric
from graphpress.passes import InvariantInstrument, NumericInstrument, PassManager, build_passes, get
from graphpress.passes.fusion.affine import AFFINE_RULES
from graphpress.passes.rewrite import PROVENANCE_KEY, Rule, explain, rule_pass
from tests.conftest import make_model, tensor

F = TensorProto.FLOAT


def _vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _neg_neg(op, x):
    return op.Neg(op.Neg(x))


def _abs(op, x):
    return op.Abs(x)


def _refuse_small(context, x, **_):
    if x.shape is not None and x.shape[-1] < 4:
        return f"input '{x.name}' has only {x.shape[-1]} columns"
    return None


NEG_NEG = Rule("test_neg_neg_abs", _neg_neg, _abs, _refuse_small)  # wrong on purpose: checks provenance, not math


def _proto(cols):
    return make_model(
        [helper.make_node("Neg", ["x"], ["n1"], name="n1"), helper.make_node("Neg", ["n1"], ["y"], name="n2")],
        [_vi("x", [2, cols])],
        [_vi("y", None)],
    )


def test_rule_rewrites_stamps_provenance_and_counts():
    model = gp.load(_proto(8))
    rules_pass = rule_pass("test_neg_neg_pass", [NEG_NEG], family="exact")
    result = rules_pass().call(model)
    assert result.modified and result.stats["test_neg_neg_abs"] == 1 and result.stats["rounds"] == 2
    (node,) = list(model.graph)
    assert node.op_type == "Abs" and node.metadata_props[PROVENANCE_KEY] == "test_neg_neg_abs"


def test_check_reason_and_explain():
    model = gp.load(_proto(2))
    assert not get("test_neg_neg_pass")().call(model).modified
    root = model.graph.node("n2")
    why = explain(NEG_NEG, root, model)
    assert why == "rule 'test_neg_neg_abs' does not match at node 'n2' (Neg): check refused: input 'x' has only 2 columns"
    assert "not the root" in explain(NEG_NEG, model.graph.node("n1"), model) or "mismatch" in explain(NEG_NEG, model.graph.node("n1"), model)
    assert "matches" in explain(NEG_NEG, gp.load(_proto(8)).graph.node("n2"))


def test_explain_names_the_structural_mismatch():
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")],
        [_vi("x", [2, 8])],
        [_vi("y", None)],
    )
    model = gp.load(proto)
    why = explain(NEG_NEG, model.graph.node("neg"), model)
    assert "pattern mismatch" in why and "Neg" in why and "Relu" in why


def test_rule_names_are_unique():
    with pytest.raises(ValueError, match="already used"):
        Rule("test_neg_neg_abs", _abs, _neg_neg)


def _sub_add(op, x, c):
    return op.Add(op.Sub(x, x), c)


def _just_c(op, x, c):
    return op.Identity(c)


def test_commutative_matching_of_add():
    rule = Rule("test_zero_plus_c", _sub_add, _just_c)
    proto = make_model(
        [helper.make_node("Sub", ["x", "x"], ["z"]), helper.make_node("Add", ["c", "z"], ["y"])],  # operands swapped
        [_vi("x", [3]), _vi("c", [3])],
        [_vi("y", None)],
    )
    model = gp.load(proto)
    cls = rule_pass("test_commute_pass", [rule])
    assert cls().call(model).stats["test_zero_plus_c"] == 1
    model = gp.load(proto)
    assert not rule_pass("test_no_commute_pass", [rule], commute=False)().call(model).modified


def test_fixpoint_bound_is_reported():
    result = get("test_neg_neg_pass")(max_iterations=1).call(gp.load(_proto(8)))
    assert result.stats["rounds"] == 1 and result.stats["fixpoint_reached"] is False


def _abs_neg(op, x):
    return op.Neg(op.Abs(x))


def _neg_abs(op, x):
    return op.Abs(op.Neg(x))


def test_rules_that_undo_each_other_fail_instead_of_hanging():
    from graphpress.errors import GraphpressError

    proto = make_model([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])], [_vi("x", [2, 8])], [_vi("y", None)])
    ping = Rule("test_ping", _abs_neg, _neg_abs)
    pong = Rule("test_pong", _neg_abs, _abs_neg)
    with pytest.raises(GraphpressError, match="do not converge"):
        rule_pass("test_pingpong", [ping, pong])().call(gp.load(proto))


def _qdq_conv_mul_proto():
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
            helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
            helper.make_node("Mul", ["c", "k"], ["m"], name="scale"),
            helper.make_node("QuantizeLinear", ["m", "s2", "zp"], ["yq"], name="q_out"),
            helper.make_node("DequantizeLinear", ["yq", "s2", "zp"], ["y"], name="dq_out"),
        ],
        [_vi("x", [1, 2, 5, 5])],
        [_vi("y", None)],
        [
            tensor("s", np.array(0.02, np.float32)),
            tensor("s2", np.array(0.05, np.float32)),
            tensor("zp", np.array(128, np.uint8)),
            tensor("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
            tensor("k", (rng.random((1, 4, 1, 1)) + 0.5).astype(np.float32)),
        ],
    )


def test_qdq_group_refuses_with_reason_and_keeps_numerics_bit_exact():
    proto = _qdq_conv_mul_proto()
    model = gp.load(proto)
    feeds = numeric.make_inputs(model, seed=0)
    check = NumericInstrument(feeds, "random")
    result = PassManager(build_passes("fuse"), [InvariantInstrument(), check]).run(model)
    assert [n.op_type for n in model.graph].count("Mul") == 1
    assert "conv_mul_const" not in result.records[0].stats
    np.testing.assert_array_equal(numeric.run(model, feeds)["y"], numeric.run(gp.load(proto), feeds)["y"])
    rule = next(r for r in AFFINE_RULES if r.name == "conv_mul_const")
    why = explain(rule, model.graph.node("scale"), model)
    assert "check refused" in why and "QuantizeLinear 'q_out'" in why and "QDQ group" in why


def test_same_rule_applies_without_qdq():
    proto = _qdq_conv_mul_proto()
    del proto.graph.node[4:6]
    del proto.graph.node[0:2]
    proto.graph.node[0].input[0] = "x"
    proto.graph.output[0].name = "m"
    model = gp.load(proto)
    result = PassManager(build_passes("fuse")).run(model)
    assert result.records[0].stats["conv_mul_const"] == 1


def test_graphsurgeon_function_runs_as_a_pass(mlp_proto, mlp_path, tmp_path):
    import onnx_graphsurgeon as gs

    from graphpress.passes.graphsurgeon import graphsurgeon_pass

    @graphsurgeon_pass(name="test_gs_drop_identity")
    def drop_identity(graph: gs.Graph) -> None:
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            src, dst = node.inputs[0], node.outputs[0]
            for consumer in list(dst.outputs):
                consumer.inputs[consumer.inputs.index(dst)] = src
            node.outputs.clear()

    model = gp.load(mlp_path)
    feeds = numeric.make_inputs(model, seed=0)
    check = NumericInstrument(feeds)
    result = PassManager(build_passes("test_gs_drop_identity"), [InvariantInstrument(), check]).run(model)
    assert result.records[0].modified and result.records[0].stats["nodes_removed"] == 1
    assert [n.op_type for n in model.graph] == ["MatMul", "Add", "Relu", "MatMul"]
    # the second MatMul now reads the Relu: the MLP's math, written in numpy
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in mlp_proto.graph.initializer}
    want = np.maximum(feeds["x"] @ w["W1"] + w["b1"], 0) @ w["W2"]
    np.testing.assert_allclose(numeric.run(model, feeds)["y"], want, rtol=1e-5, atol=1e-5)
    # nothing left to do: not modified
    assert not PassManager(build_passes("test_gs_drop_identity")).run(model).records[0].modified


def test_user_rule_module_loads_by_import_path(mlp_path, tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "userrules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "relu_id.py").write_text(
        "from graphpress.passes.rewrite import Rule, rule_pass\n"
        "def target(op, x):\n    return op.Identity(op.Relu(x))\n"
        "def replacement(op, x):\n    return op.Relu(x)\n"
        "PASS = rule_pass('user_relu_identity', [Rule('user_relu_identity', target, replacement)], family='exact')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(mlp_path), "-o", str(out), "--passes", "userrules.relu_id", "--verify"]) == 0, capsys.readouterr().err
    assert "Identity" not in [n.op_type for n in gp.load(out).graph]
