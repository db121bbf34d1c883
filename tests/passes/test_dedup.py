"""``dedup``: exact, layout-equivalent and checked near-duplicate weights, across subgraphs."""

from __future__ import annotations

import io
import warnings

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graphpress as gp
from graphpress.ir.numeric import make_inputs, run
from graphpress.passes import NumericInstrument, PassManager, build_passes
from graphpress.passes.dedup import Dedup
from tests.conftest import make_model, tensor


def _run_checked(model: ir.Model, spec: str, expected, feeds=None, rtol=1e-5, atol=1e-5):
    """Run ``spec`` with the numeric instrument (each pass within its family's tolerance); the
    result's outputs, in order, must match ``expected(feeds)``: what the model computes, from an
    independent reference (numpy, or the torch module it came from), not the input model run again."""
    feeds = feeds if feeds is not None else make_inputs(model, seed=0)
    inst = NumericInstrument(feeds, "test")
    result = PassManager(build_passes(spec), [inst]).run(model)
    got = list(run(model, feeds).values())
    want = expected(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return result.records[0].stats, inst.final


def _initializer_names(model: ir.Model) -> set[str]:
    return {name for g in model.graphs() for name in g.initializers}


def test_identical_large_weights_of_two_branches_merge_bit_exactly():
    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(256, 256)
            self.b = torch.nn.Linear(256, 256)
            self.b.load_state_dict(self.a.state_dict())  # same weights, two parameters

        def forward(self, x):
            return torch.relu(self.a(x)) + self.b(x * 2)

    module = TwoBranches().eval()
    model = gp.load(module, torch.randn(1, 256))
    before = _initializer_names(model)

    def torch_forward(feeds):
        with torch.no_grad():
            return [module(torch.from_numpy(x)).numpy() for x in feeds.values()]

    stats, final = _run_checked(model, "dedup", torch_forward)
    assert final.max_abs_diff == 0.0
    # 65,536-element weight and its bias: larger than onnxslim's / onnx-ir's default limits
    assert stats["merged"] == 2
    assert stats["bytes_saved"] == 256 * 256 * 4 + 256 * 4
    assert len(before) - len(_initializer_names(model)) == 2


def test_every_dtype_merges(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.standard_normal(2048).astype(np.float16),
        "bf16": rng.standard_normal(2048).astype(ml_dtypes.bfloat16),
        "i8": rng.integers(-128, 127, 2048).astype(np.int8),
        "f8": rng.standard_normal(2048).astype(ml_dtypes.float8_e4m3fn),
        "i4": rng.integers(-8, 7, 2048).astype(ml_dtypes.int4),
    }
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    outputs = []
    for key, arr in arrays.items():
        vals = []
        for copy in ("a", "b"):
            v = ir.Value(name=f"{key}_{copy}", const_value=ir.tensor(arr.copy(), name=f"{key}_{copy}"))
            graph.initializers.add(v)
            vals.append(v)
        for v in vals:
            node = ir.node("Cast", [v], attributes={"to": ir.DataType.FLOAT}, name=f"cast_{v.name}")
            graph.append(node)
            outputs.append(node.outputs[0])
    model = ir.Model(graph, ir_version=10)
    result = Dedup()(model)
    assert result.stats["merged"] == len(arrays)
    assert sorted(model.graph.initializers) == sorted(f"{k}_a" for k in arrays)
    for node in model.graph:
        key = node.name.split("_")[1]
        assert node.inputs[0].name == f"{key}_a"


def test_equal_digests_are_rechecked_byte_by_byte(monkeypatch):
    """A digest collision must not merge different tensors: the bytes are compared again."""
    import graphpress.passes.dedup as dedup_mod

    class Colliding:
        def __init__(self, *_):
            pass

        def digest(self):
            return b"same"

    monkeypatch.setattr(dedup_mod.hashlib, "sha256", Colliding)
    rng = np.random.default_rng(1)
    proto = make_model(
        [helper.make_node("Add", ["x", "A"], ["t"]), helper.make_node("Add", ["t", "B"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [tensor("A", rng.standard_normal(64).astype(np.float32)), tensor("B", rng.standard_normal(64).astype(np.float32))],
    )
    model = gp.load(proto)
    result = Dedup(layout=False)(model)
    assert not result.modified
    assert set(model.graph.initializers) == {"A", "B"}


def test_graph_inputs_and_outputs_are_never_merged():
    w = np.arange(12, dtype=np.float32)
    proto = make_model(
        [helper.make_node("Add", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "V"], ["y"]), helper.make_node("Identity", ["U"], ["u"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [12]), helper.make_tensor_value_info("W", TensorProto.FLOAT, [12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [12]), helper.make_tensor_value_info("U", TensorProto.FLOAT, [12])],
        [tensor("W", w), tensor("V", w), tensor("U", w)],
    )
    model = gp.load(proto)
    result = Dedup()(model)
    # W is a graph input (overridable default), U a graph output: V has nothing to merge with
    assert not result.modified
    assert set(model.graph.initializers) == {"W", "V", "U"}


def _if_model() -> onnx.ModelProto:
    """Main-graph weight M; the If's branches each hold a copy of M and a copy of S (S only in branches)."""
    rng = np.random.default_rng(2)
    m = rng.standard_normal(2048).astype(np.float32)
    s = rng.standard_normal(2048).astype(np.float32)

    def branch(tag: str, sign: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["x", f"M_{tag}"], [f"t_{tag}"]), helper.make_node("Add", [f"t_{tag}", f"S_{tag}"], [f"o_{tag}"])],
            f"branch_{tag}",
            [],
            [helper.make_tensor_value_info(f"o_{tag}", TensorProto.FLOAT, [2048])],
            [tensor(f"M_{tag}", m * sign if sign != 1 else m), tensor(f"S_{tag}", s)],
        )

    return make_model(
        [
            helper.make_node("Add", ["x", "M"], ["xm"]),
            helper.make_node("ReduceSum", ["xm"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 1.0)),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2048])],
        [tensor("M", m), tensor("zero", np.array(0.0, dtype=np.float32))],
    )


def _if_reference(feeds):
    """Both branches compute x*M + S (from their own copies of M and S): the If's result whichever is taken."""
    proto = _if_model()
    m = numpy_helper.to_array(proto.graph.initializer[0])
    branch = proto.graph.node[-1].attribute[0].g
    m_copy, s = (numpy_helper.to_array(t) for t in branch.initializer)
    np.testing.assert_array_equal(m_copy, m)
    return [feeds["x"] * m + s]


def test_subgraph_copies_use_the_outer_weight_and_siblings_share_a_lifted_one():
    model = gp.load(_if_model())
    assert len(_initializer_names(model)) == 6
    for sign in (1.0, -1.0):  # both branches taken
        feeds = {"x": np.full(2048, sign, dtype=np.float32)}
        copy = gp.load(_if_model())
        stats, final = _run_checked(copy, "dedup", _if_reference, feeds, rtol=0, atol=0)
        assert final.max_abs_diff == 0.0
    assert stats["merged"] == 3
    # M once (main graph), S once, lifted to the main graph so both branches see it
    names = _initializer_names(copy)
    assert len(names) == 3 and {"M", "zero"} < names and names & {"S_then", "S_else"}
    assert set(copy.graph.initializers) == names
    proto = gp.ir.io.to_proto(copy)
    onnx.checker.check_model(proto, full_check=True)


def _tiny_gpt() -> tuple[torch.nn.Module, torch.Tensor]:
    from graphpress.models.zoo import TinyGPT

    torch.manual_seed(0)
    module = TinyGPT().eval()
    return module, torch.randint(0, 512, (1, 16))


def _tiny_gpt_legacy() -> tuple[bytes, np.ndarray]:
    module, ids = _tiny_gpt()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids,), buf, dynamo=False, opset_version=17, input_names=["ids"])
    return buf.getvalue(), ids.numpy()


def test_tied_embedding_of_a_legacy_export_is_stored_once(tmp_path):
    data, ids = _tiny_gpt_legacy()
    module, _ = _tiny_gpt()  # the same weights (seed 0): torch's logits are the reference
    model = gp.load(onnx.load_from_string(data))

    def torch_forward(feeds):
        with torch.no_grad():
            return [module(torch.from_numpy(feeds["ids"])).numpy()]

    stats, final = _run_checked(model, "dedup", torch_forward, {"ids": ids}, rtol=1e-4, atol=1e-4)
    assert final.max_abs_diff <= 1e-5
    assert stats["transposed"] == 1
    (merge,) = [m for m in stats["merges"] if m["kind"] == "transpose"]
    assert merge["kept"] == "wte.weight" and merge["bytes"] == 512 * 64 * 4
    out = gp.save(model, tmp_path / "gpt.onnx")
    plain = gp.save(gp.load(onnx.load_from_string(data)), tmp_path / "plain.onnx")
    assert plain.stat().st_size - out.stat().st_size >= 512 * 64 * 4 - 1024
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # ORT loads what we wrote


def test_same_bytes_in_another_shape_become_a_reshape():
    w = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["z", "V"], ["b"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 64]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 32])],
        [tensor("W", w), tensor("V", w.reshape(64, 32))],
    )
    model = gp.load(proto)
    stats, final = _run_checked(model, "dedup", lambda f: [f["x"] @ w, f["z"] @ w.reshape(64, 32)])
    assert final.max_abs_diff <= 1e-5  # same values; ORT runs a computed weight with another kernel
    assert stats["reshaped"] == 1 and stats["bytes_saved"] == w.nbytes - 16
    assert [n.op_type for n in model.graph].count("Reshape") == 1


def _near_model(noise: float) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    v = w + noise * rng.standard_normal((64, 64)).astype(np.float32)
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["a", "V"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
        [tensor("W", w), tensor("V", v)],
    )


def test_near_duplicates_are_opt_in_and_checked():
    assert not Dedup()(gp.load(_near_model(1e-4))).modified  # off by default

    model = gp.load(_near_model(1e-4))
    w = numpy_helper.to_array(_near_model(1e-4).graph.initializer[0]).astype(np.float64)
    # V is replaced by W: x @ W @ W (x @ W @ V differs by ~1e-4 relative: more than allowed here)
    stats, final = _run_checked(model, "dedup:near=0.001", lambda f: [f["x"] @ w @ w], rtol=1e-5, atol=1e-4)
    assert stats["near_merged"] == 1 and set(model.graph.initializers) == {"W"}
    assert final.min_cosine > 0.9999

    # a check that cannot be met refuses the merge, with the reason, and leaves the model as it was
    model = gp.load(_near_model(1e-4))
    ref = run(model, make_inputs(model, seed=0))
    result = Dedup(near=0.001, min_cosine=1.0)(model)
    assert not result.modified
    assert "min_cosine" in result.stats["near_refused"][0]["reason"]
    np.testing.assert_array_equal(run(model, make_inputs(model, seed=0))["y"], ref["y"])

    # far apart: not a candidate
    assert not Dedup(near=0.001)(gp.load(_near_model(0.1))).modified


def test_near_option_is_validated():
    from graphpress.errors import SpecError

    with pytest.raises(SpecError, match="near"):
        build_passes("dedup:near=2")
