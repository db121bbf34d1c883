"""The ``fuse`` rules, one graph built to need each: structure after, and ORT outputs before vs after
(fp32 allclose rtol 1e-5 / atol 1e-6, or bit-exact where the rewrite only moves data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.ir import numeric
from graphpress.passes import InvariantInstrument, PassManager, build_passes
from graphpress.passes.fusion import SDPA_DOMAIN, SDPA_OP
from graphpress.passes.rewrite import PROVENANCE_KEY
from tests.conftest import make_model, tensor

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def _vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _r(*shape, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def fuse(proto, *, exact=False, spec="fuse", feeds=None):
    """Run ``spec`` (invariants checked) and compare ORT outputs with the input model's."""
    original = gp.load(proto)
    model = gp.load(proto)
    feeds = feeds or numeric.make_inputs(model, seed=3)
    result = PassManager(build_passes(spec), [InvariantInstrument()]).run(model)
    gp.verify(model)
    before, after = numeric.run(original, feeds), numeric.run(model, feeds)
    for name, ref in before.items():
        if exact:
            np.testing.assert_array_equal(after[name], ref)
        else:
            np.testing.assert_allclose(after[name], ref, rtol=1e-5, atol=1e-6)
    return model, result.records[0].stats


def ops(model):
    return [n.op_type for n in model.graph]


def _bn_inits(prefix, c):
    return [
        tensor(f"{prefix}_g", _r(c, positive=True)),
        tensor(f"{prefix}_b", _r(c)),
        tensor(f"{prefix}_m", _r(c)),
        tensor(f"{prefix}_v", _r(c, positive=True)),
    ]


def _bn(x, y, prefix):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y], name=f"{prefix}_bn", epsilon=1e-3)


@pytest.mark.parametrize("transpose", [False, True])
def test_conv_and_conv_transpose_batchnorm_fold(transpose):
    op = "ConvTranspose" if transpose else "Conv"
    w = _r(4, 6, 3, 3) if transpose else _r(6, 4, 3, 3)
    proto = make_model(
        [helper.make_node(op, ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), _bn("c", "y", "n")],
        [_vi("x", [1, 4, 8, 8])],
        [_vi("y", None)],
        [tensor("w", w), tensor("b", _r(6)), *_bn_inits("n", 6)],
    )
    model, stats = fuse(proto)
    assert ops(model) == [op]
    assert stats["conv_transpose_batchnorm" if transpose else "conv_batchnorm"] == 1
    assert model.graph.node(0).metadata_props[PROVENANCE_KEY] in ("conv_batchnorm", "conv_transpose_batchnorm")


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_gemm_and_matmul_batchnorm_fold(op):
    inputs = ["x", "w", "b"] if op == "Gemm" else ["x", "w"]
    proto = make_model(
        [helper.make_node(op, inputs, ["h"], name="lin"), _bn("h", "y", "n")],
        [_vi("x", [3, 5])],
        [_vi("y", None)],
        [tensor("w", _r(5, 7)), tensor("b", _r(7)), *_bn_inits("n", 7)],
    )
    model, stats = fuse(proto)
    assert ops(model) == ["Gemm"]
    assert stats[f"{op.lower()}_batchnorm"] == 1


def test_matmul_batchnorm_refuses_rank3_with_reason():
    from graphpress.passes.fusion.affine import BATCHNORM_RULES
    from graphpress.passes.rewrite import explain

    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="lin"), _bn("h", "y", "n")],
        [_vi("x", [2, 7, 5])],
        [_vi("y", None)],
        [tensor("w", _r(5, 7)), *_bn_inits("n", 7)],
    )
    model, stats = fuse(proto)
    assert "BatchNormalization" in ops(model)
    rule = next(r for r in BATCHNORM_RULES if r.name == "matmul_batchnorm")
    why = explain(rule, next(n for n in model.graph if n.op_type == "BatchNormalization"), model)
    assert "rank 3" in why and "check refused" in why


@pytest.mark.parametrize("kind,const", [("Mul", _r(1, 6, 1, 1)), ("Mul", np.float32(0.5)), ("Add", _r(6, 1, 1)), ("Add", _r(1))])
def test_conv_mul_add_constant_folding(kind, const):
    proto = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), helper.make_node(kind, ["c", "k"], ["y"], name="aff")],
        [_vi("x", [1, 4, 5, 5])],
        [_vi("y", None)],
        [tensor("w", _r(6, 4, 3, 3)), tensor("b", _r(6)), tensor("k", np.asarray(const, np.float32))],
    )
    model, stats = fuse(proto)
    assert ops(model) == ["Conv"]
    assert stats[f"conv_{kind.lower()}_const"] == 1


def test_conv_mul_refuses_non_channel_constant():
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Mul", ["c", "k"], ["y"], name="aff")],
        [_vi("x", [1, 4, 5, 5])],
        [_vi("y", None)],
        [tensor("w", _r(6, 4, 3, 3)), tensor("k", _r(1, 1, 3, 3))],
    )
    model, _ = fuse(proto)
    assert ops(model) == ["Conv", "Mul"]


def test_matmul_add_to_gemm_and_transpose_folding():
    proto = make_model(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["h"]),
            helper.make_node("Add", ["b", "h"], ["y"]),  # bias first: commutative matching
        ],
        [_vi("x", [3, 5]), _vi("w", [7, 5])],
        [_vi("y", None)],
        [tensor("b", _r(7))],
    )
    model, stats = fuse(proto)
    assert ops(model) == ["Gemm"]
    assert model.graph.node(0).attributes.get_int("transB") == 1


def test_transpose_and_reshape_chains_collapse_exactly():
    proto = make_model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 1, 3, 2]),
            helper.make_node("Reshape", ["t2", "s1"], ["r1"]),
            helper.make_node("Reshape", ["r1", "s2"], ["y"]),
        ],
        [_vi("x", [2, 3, 4, 5])],
        [_vi("y", None)],
        [tensor("s1", np.array([6, 20], np.int64)), tensor("s2", np.array([2, 60], np.int64))],
    )
    model, _ = fuse(proto, exact=True)
    assert ops(model) == ["Transpose", "Reshape"]


def test_pad_folds_into_conv_and_pools():
    pads = np.array([0, 0, 1, 1, 0, 0, 0, 1], np.int64)
    proto = make_model(
        [
            helper.make_node("Pad", ["x", "p"], ["xp"]),
            helper.make_node("Conv", ["xp", "w"], ["c"]),
            helper.make_node("Pad", ["c", "p"], ["cp"]),
            helper.make_node("AveragePool", ["cp"], ["a"], kernel_shape=[2, 2]),
            helper.make_node("Pad", ["a", "p", "ninf"], ["ap"]),
            helper.make_node("MaxPool", ["ap"], ["y"], kernel_shape=[2, 2]),
        ],
        [_vi("x", [1, 2, 9, 9])],
        [_vi("y", None)],
        [tensor("p", pads), tensor("w", _r(3, 2, 3, 3)), tensor("ninf", np.array(-np.inf, np.float32))],
    )
    model, stats = fuse(proto)
    assert ops(model) == ["Conv", "AveragePool", "MaxPool"]
    assert stats["pad_averagepool"] == 1 and stats["pad_maxpool"] == 1
    assert list(model.graph.node(1).attributes.get_ints("pads")) == [1, 1, 0, 1]


def test_pad_into_maxpool_refuses_zero_padding():
    proto = make_model(
        [helper.make_node("Pad", ["x", "p"], ["xp"]), helper.make_node("MaxPool", ["xp"], ["y"], kernel_shape=[2, 2])],
        [_vi("x", [1, 2, 6, 6])],
        [_vi("y", None)],
        [tensor("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
    )
    model, _ = fuse(proto, exact=True)
    assert ops(model) == ["Pad", "MaxPool"]


def _layer_norm_nodes(x, y, explicit_keepdims):
    kd = {"keepdims": 1} if explicit_keepdims else {}
    return [
        helper.make_node("ReduceMean", [x, "axes"], ["mean"], **kd),
        helper.make_node("Sub", [x, "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "axes"], ["var"], **kd),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["ns"]),
        helper.make_node("Add", ["ns", "beta"], [y]),
    ]


@pytest.mark.parametrize("explicit_keepdims", [True, False])
def test_layer_norm_fusion_keeps_tiny_epsilon(explicit_keepdims):
    proto = make_model(
        _layer_norm_nodes("x", "y", explicit_keepdims),
        [_vi("x", [2, 5, 16])],
        [_vi("y", None)],
        [
            tensor("axes", np.array([-1], np.int64)),
            tensor("two", np.array(2.0, np.float32)),
            tensor("eps", np.array(1e-12, np.float32)),
            tensor("gamma", _r(16)),
            tensor("beta", _r(16)),
        ],
    )
    model, stats = fuse(proto, spec="cleanup,fuse")
    assert ops(model) == ["LayerNormalization"]
    ln = model.graph.node(0)
    assert ln.attributes.get_float("epsilon") == pytest.approx(1e-12)  # cleanup must not drop `+ 1e-12`
    assert len(ln.inputs) == 3


@pytest.mark.parametrize("form", ["half_x_first", "half_inner", "half_last"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forms(form, approximate):
    if approximate == "none":
        inner = [helper.make_node("Div", ["x", "sqrt2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]), helper.make_node("Add", ["e", "one"], ["t"])]
    else:
        inner = [
            helper.make_node("Pow", ["x", "three"], ["x3"]),
            helper.make_node("Mul", ["c", "x3"], ["cx3"]),
            helper.make_node("Add", ["x", "cx3"], ["u"]),
            helper.make_node("Mul", ["k", "u"], ["ku"]),
            helper.make_node("Tanh", ["ku"], ["e"]),
            helper.make_node("Add", ["one", "e"], ["t"]),
        ]
    outer = {
        "half_x_first": [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["hx", "t"], ["y"])],
        "half_inner": [helper.make_node("Mul", ["half", "t"], ["ht"]), helper.make_node("Mul", ["x", "ht"], ["y"])],
        "half_last": [helper.make_node("Mul", ["x", "t"], ["xt"]), helper.make_node("Mul", ["xt", "half"], ["y"])],
    }[form]
    consts = {
        "sqrt2": math.sqrt(2),
        "one": 1.0,
        "half": 0.5,
        "three": 3.0,
        "c": 0.044715,
        "k": math.sqrt(2 / math.pi),
    }
    proto = make_model(inner + outer, [_vi("x", [4, 33])], [_vi("y", None)], [tensor(k, np.array(v, np.float32)) for k, v in consts.items()])
    model, stats = fuse(proto)
    assert ops(model) == ["Gelu"]
    assert model.graph.node(0).attributes.get_string("approximate", "none") == approximate
    assert stats[f"gelu_{'erf' if approximate == 'none' else 'tanh'}_{form}"] == 1


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("scale_op", ["Mul", "Div"])
def test_attention_becomes_one_function_node_ort_runs(masked, scale_op):
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node(scale_op, ["s", "scale"], ["ss"]),
    ]
    if masked:
        nodes.append(helper.make_node("Add", ["mask", "ss"], ["sm"]))
    nodes += [helper.make_node("Softmax", ["sm" if masked else "ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [_vi("q", [1, 2, 6, 8]), _vi("kt", [1, 2, 8, 6]), _vi("v", [1, 2, 6, 8])] + ([_vi("mask", [1, 1, 1, 6])] if masked else [])
    proto = make_model(nodes, inputs, [_vi("y", None)], [tensor("scale", np.array(0.125 if scale_op == "Mul" else 8.0, np.float32))])
    model, stats = fuse(proto, exact=True)
    assert ops(model) == [SDPA_OP]
    node = model.graph.node(0)
    assert node.domain == SDPA_DOMAIN and len(node.inputs) == (5 if masked else 4)
    assert [n.op_type for n in model.functions[node.op_identifier()]] == [n.op_type for n in nodes if n.op_type != "Constant"]
    assert stats["sdpa_masked" if masked else "sdpa"] == 1
    assert gp.load(gp.ir.to_proto(model)).functions  # the function survives serialization


def test_activation_epilogues_are_grouped():
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Add", ["c", "three"], ["c3"]),
            helper.make_node("Clip", ["c3", "zero", "six"], ["cl"]),
            helper.make_node("Mul", ["cl", "c"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["hs"]),  # x * relu6(x + 3) / 6
            helper.make_node("Flatten", ["hs"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["gm"], name="gemm"),
            helper.make_node("Sigmoid", ["gm"], ["y"]),
        ],
        [_vi("x", [1, 2, 4, 4])],
        [_vi("y", None)],
        [
            tensor("w", _r(3, 2, 3, 3)),
            tensor("three", np.array(3.0, np.float32)),
            tensor("zero", np.array(0.0, np.float32)),
            tensor("six", np.array(6.0, np.float32)),
            tensor("g", _r(12, 5)),
        ],
    )
    model, stats = fuse(proto)
    assert ops(model) == ["Conv", "HardSwish", "Flatten", "Gemm", "Sigmoid"]
    # the backends get no grouping tags: TVM fuses a linear op with its epilogue by itself
    assert not any("graphpress.fusion_group" in n.metadata_props for n in model.graph)
    # fusing again changes nothing, and the pass says so
    result = PassManager(build_passes("fuse")).run(model)
    assert not result.records[0].modified


def test_fuse_pass_is_listed_with_options():
    from graphpress.passes import get

    cls = get("fuse")
    assert cls.family == "fusion"
    assert not cls(attention=False).options.attention


def test_matmul_add_becomes_gemm_only_when_the_bias_broadcasts_to_m_n():
    """Add broadcasts both ways, Gemm's C one way: a bias of rank 4 stays an Add (onnxscript's
    rule fused it into a Gemm ONNX Runtime rejects; found by the fuzzer, NNSmith seed 492)."""
    from onnx import TensorProto, helper

    from graphpress.ir import numeric
    from graphpress.passes import NumericInstrument, PassManager, build_passes
    from tests.conftest import make_model

    def model(bias_shape):
        return gp.load(make_model(
            [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Add", ["c", "m"], ["y"])],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 2]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 5]),
             helper.make_tensor_value_info("c", TensorProto.FLOAT, bias_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ))  # fmt: skip

    for shape, fused in (([4, 1, 3, 1], False), ([1, 5], True), ([5], True), ([3, 1], True), ([3, 5], True)):
        m = model(shape)
        feeds = numeric.make_inputs(m, seed=0)
        PassManager(build_passes("fuse"), [NumericInstrument(feeds)]).run(m)
        assert any(n.op_type == "Gemm" for n in m.graph) == fused, shape


@pytest.mark.parametrize("opset", [11, 14])
def test_fuse_never_writes_an_op_newer_than_the_models_opset(opset):
    # x * HardSigmoid(x, 1/6, 1/2) is HardSwish(x), an opset-14 op: an opset-11 model (kept at
    # its opset on load, as a Paddle export ships) keeps the two ops
    proto = make_model(
        [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1.0 / 6, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"])],
        [_vi("x", [2, 8])], [_vi("y", [2, 8])], opset=opset,
    )  # fmt: skip
    model, _ = fuse(proto)
    assert model.opset_imports[""] == opset
    assert ops(model) == (["HardSwish"] if opset >= 14 else ["HardSigmoid", "Mul"])
