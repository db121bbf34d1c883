"""unroll_recurrent: LSTM/GRU/RNN unrolled into per-step ops compute what ONNX Runtime's own
recurrent kernels compute, for every direction, layout and optional input; the TVM backend
lowers them through it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.ir import to_proto
from graphpress.passes import InvariantInstrument, PassManager, build_passes

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op: str, *, direction="forward", layout=0, bias=True, initial=True, peephole=False, clip=None,
           linear_before_reset=0, activations=None, alphas=None, outputs=3, seed=0) -> onnx.ModelProto:  # fmt: skip
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    state_shape = [BATCH, nd, HIDDEN] if layout else [nd, BATCH, HIDDEN]
    inits = [onnx.numpy_helper.from_array((0.5 * rng.standard_normal((nd, g * HIDDEN, INPUT))).astype(np.float32), "W"),
             onnx.numpy_helper.from_array((0.5 * rng.standard_normal((nd, g * HIDDEN, HIDDEN))).astype(np.float32), "R")]  # fmt: skip
    ins = ["x", "W", "R"]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(onnx.numpy_helper.from_array((0.3 * rng.standard_normal((nd, 2 * g * HIDDEN))).astype(np.float32), "B"))
    ins.append("B" if bias else "")
    ins.append("")  # sequence_lens
    if initial:
        ins.append("h0")
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        if op == "LSTM":
            ins.append("c0")
            graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state_shape))
    elif op == "LSTM" and peephole:
        ins += ["", ""]
    if peephole:
        inits.append(onnx.numpy_helper.from_array((0.3 * rng.standard_normal((nd, 3 * HIDDEN))).astype(np.float32), "P"))
        ins.append("P")
    attrs = {"hidden_size": HIDDEN, "direction": direction}
    if layout:
        attrs["layout"] = layout
    if clip is not None:
        attrs["clip"] = clip
    if op == "GRU" and linear_before_reset:
        attrs["linear_before_reset"] = 1
    if activations:
        attrs["activations"] = activations
    if alphas:
        attrs["activation_alpha"] = alphas
    names = ["Y", "Y_h", "Y_c"][: min(outputs, 3 if op == "LSTM" else 2)]
    node = helper.make_node(op, ins, names, name="rnn", **attrs)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    proto = helper.make_model(helper.make_graph([node], "g", graph_inputs, outs, inits), opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    return proto


def _feeds(proto: onnx.ModelProto, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32) for i in proto.graph.input}


def _ort(proto: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _reference(proto: onnx.ModelProto, feeds) -> list[np.ndarray]:
    """ONNX Runtime's recurrent kernels. ORT refuses layout=1 (batch first): the same node with
    layout=0 on transposed inputs, its outputs transposed back (ONNX's definition of layout)."""
    node = proto.graph.node[0]
    if not any(a.name == "layout" and a.i == 1 for a in node.attribute):
        return _ort(proto, feeds)
    twin = onnx.ModelProto.FromString(proto.SerializeToString())
    tn = twin.graph.node[0]
    keep = [a for a in tn.attribute if a.name != "layout"]
    del tn.attribute[:]
    tn.attribute.extend(keep)
    for vi in twin.graph.input:
        dims = vi.type.tensor_type.shape.dim
        a, b = dims[0].dim_value, dims[1].dim_value
        dims[0].dim_value, dims[1].dim_value = b, a
    swapped = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in feeds.items()}
    outs = _ort(twin, swapped)
    return [np.transpose(o, (2, 0, 1, 3)) if o.ndim == 4 else np.transpose(o, (1, 0, 2)) for o in outs]


CASES = [
    ("LSTM", {}), ("LSTM", {"direction": "reverse"}), ("LSTM", {"direction": "bidirectional"}), ("LSTM", {"layout": 1}),
    ("LSTM", {"layout": 1, "direction": "bidirectional"}), ("LSTM", {"bias": False, "initial": False}),
    ("LSTM", {"peephole": True}), ("LSTM", {"clip": 0.7}), ("LSTM", {"outputs": 1}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Softsign"], "alphas": [0.3, 0.05, 0.0]}),
    ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}),
    ("GRU", {"direction": "reverse", "layout": 1}), ("GRU", {"bias": False, "initial": False}),
    ("RNN", {}), ("RNN", {"direction": "bidirectional"}), ("RNN", {"activations": ["Relu"], "layout": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("op", "kw"), CASES, ids=[f"{op}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for op, kw in CASES])
def test_unrolled_equals_onnxruntimes_recurrent_kernel(op, kw):
    proto = _model(op, **kw)
    feeds = _feeds(proto)
    model = gp.load(proto)
    result = PassManager(build_passes("unroll_recurrent,cleanup"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats["unrolled"] == 1
    assert not any(n.op_type in GATES for n in model.graph)
    got = _ort(to_proto(model), feeds)
    for want, have in zip(_reference(proto, feeds), got):
        assert want.shape == have.shape
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


def test_a_dynamic_sequence_length_is_left_for_the_backend_to_name():
    proto = _model("LSTM")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "seq"
    model = gp.load(proto)
    result = PassManager(build_passes("unroll_recurrent"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats == {"unrolled": 0, "left": ["rnn"]}


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_x86_compiles_recurrent_models_and_matches_onnxruntime(op):
    proto = _model(op, direction="bidirectional")
    feeds = _feeds(proto)
    compiled = compile_model(gp.load(proto), "x86")
    for want, have in zip(_ort(proto, feeds), compiled(**feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


def _node_test(name: str):
    import contextlib
    import io
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return next(c for c in node.collect_testcases() if c.name == name)


@pytest.mark.parametrize("name", ["test_scan9_sum", "test_scan9_multi_state", "test_loop11"])
def test_scan_and_loop_unrolled_reproduce_onnxs_expected_outputs(name):
    case = _node_test(name)
    inputs, expected = case.data_sets[0]
    proto = onnx.ModelProto.FromString(case.model.SerializeToString())
    feeds = dict(zip([i.name for i in proto.graph.input], inputs))
    if name == "test_loop11":  # the trip count and condition are inputs: constants, as the backend freezes them
        for fixed in ("trip_count", "cond"):
            proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(feeds.pop(fixed)), fixed))
            keep = [i for i in proto.graph.input if i.name != fixed]
            del proto.graph.input[:]
            proto.graph.input.extend(keep)
    model = gp.load(proto)
    result = PassManager(build_passes("unroll_recurrent,cleanup"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats["unrolled"] == 1
    assert not any(n.op_type in ("Scan", "Loop") for n in model.graph)
    for want, have in zip(expected, _ort(to_proto(model), feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)


def test_opset_8_scan_is_left_alone():
    model = gp.load(_node_test("test_scan_sum").model)
    result = PassManager(build_passes("unroll_recurrent"), [InvariantInstrument()]).run(model)
    assert result.records[0].stats["unrolled"] == 0 and model.opset_imports[""] == 8  # not converted either
