
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.errors import GraphpressError, ModelLoadError
from graphpress.ir import io as gio
from graphpress.ir.numeric import run
from tests.conftest import make_model


def _ort(path_or_bytes, feeds):
    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_load_path_bytes_proto_and_ir_agree(mlp_path, mlp_proto):
    x = {"x": np.ones((1, 8), np.float32)}
    ref = _ort(str(mlp_path), x)[0]
    for source in (mlp_path, str(mlp_path), mlp_path.read_bytes(), mlp_proto):
        model = gp.load(source)
        assert isinstance(model, ir.Model)
        np.testing.assert_array_equal(run(model, x)["y"], ref)
    model = gp.load(mlp_proto)
    assert gp.load(model) is model


def _old_reduce_sum():
    return make_model(
        [helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])],
        opset=11,
        ir_version=6,
    )


def test_loading_keeps_the_models_opset(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_old_reduce_sum(), path)
    model = gp.load(path)
    assert model.opset_imports[""] == 11 and gio.CONVERTED_FROM_KEY not in model.meta
    node = next(n for n in model.graph if n.op_type == "ReduceSum")
    assert list(node.attributes["axes"].as_ints()) == [1]  # as written: an attribute until opset 13
    out = gp.save(model, tmp_path / "same.onnx")
    assert onnx.load(out).opset_import[0].version == 11


def test_old_opset_is_converted_on_request_or_when_a_pass_needs_it(tmp_path):
    from graphpress.passes import PassManager, build_passes

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "old.onnx"
    onnx.save(_old_reduce_sum(), path)
    model = gp.load(path, opset=gio.DEFAULT_OPSET)
    assert model.opset_imports[""] == gio.DEFAULT_OPSET and model.meta[gio.CONVERTED_FROM_KEY] == 11
    # ReduceSum's axes moved from an attribute to an input in opset 13
    node = next(n for n in model.graph if n.op_type == "ReduceSum")
    assert "axes" not in node.attributes and len(node.inputs) == 2
    np.testing.assert_array_equal(run(model, {"x": x})["y"], x.sum(1, keepdims=True))
    # a pass that needs opset 20 gets the model converted just before it runs; cleanup does not
    model = gp.load(path)
    records = PassManager(build_passes("cleanup,prune:ratio=0.5")).run(model).records
    assert "converted_opset" not in records[0].stats and records[1].stats["converted_opset"] == "11 -> 20"
    assert model.opset_imports[""] == 20
    np.testing.assert_array_equal(run(model, {"x": x})["y"], x.sum(1, keepdims=True))


def test_save_is_readable_by_ort_with_ir_version_capped(tmp_path, mlp_path):
    model = gp.load(mlp_path)
    model.ir_version = 14  # what onnx 1.23 writes by default; ORT 1.31 rejects it
    out = gp.save(model, tmp_path / "out.onnx")
    saved = onnx.load(out)
    assert saved.ir_version <= gio.MAX_IR_VERSION
    _ort(str(out), {"x": np.ones((1, 8), np.float32)})
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "out.onnx"]


def test_save_external_data_round_trip(tmp_path, mlp_path):
    model = gp.load(mlp_path)
    out = gp.save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    proto = onnx.load(out, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = {"x": np.ones((1, 8), np.float32)}
    np.testing.assert_array_equal(_ort(str(out), x)[0], _ort(str(mlp_path), x)[0])
    # and graphpress reads external data back lazily, relative to the file
    again = gp.load(out)
    np.testing.assert_array_equal(run(again, x)["y"], _ort(str(mlp_path), x)[0])


def test_save_refuses_to_overwrite_input(mlp_path):
    before = mlp_path.read_bytes()
    model = gp.load(mlp_path)
    with pytest.raises(GraphpressError, match="is the input model"):
        gp.save(model, mlp_path)
    assert mlp_path.read_bytes() == before


def test_save_to_missing_directory_fails_cleanly(tmp_path, mlp_path):
    with pytest.raises(GraphpressError, match="does not exist"):
        gp.save(gp.load(mlp_path), tmp_path / "nope" / "out.onnx")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"this is not a protobuf \xff\xfe\x00garbage", "not an ONNX model"),
        (b"", "not an ONNX model"),
    ],
)
def test_load_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        gp.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_truncated_file(tmp_path, mlp_path):
    data = mlp_path.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|not an ONNX"):
        gp.load(path)


def test_graphsurgeon_round_trip(mlp_proto):
    graph = gs.import_onnx(mlp_proto)
    model = gp.load(graph)
    assert [n.op_type for n in model.graph] == ["MatMul", "Add", "Relu", "Identity", "MatMul"]
    back = gio.to_graphsurgeon(model)
    assert isinstance(back, gs.Graph)
    assert [n.op for n in back.nodes] == ["MatMul", "Add", "Relu", "Identity", "MatMul"]


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, a, b):
        return self.bn(self.lin(a)) * b


def test_torch_module_keeps_parameter_names_and_dynamic_batch():
    m = TwoInputs()
    m.train()
    a, b = torch.randn(1, 4), torch.randn(1, 3)
    model = gp.load(m, (a, b), dynamic_batch=True)
    assert m.training, "the module's training flag is restored"
    names = set(model.graph.initializers)
    assert {"lin.weight", "lin.bias", "bn.weight", "bn.running_mean"} <= names
    assert [v.name for v in model.graph.inputs] == ["a", "b"]
    assert not isinstance(model.graph.inputs[0].shape[0], int)
    m.eval()
    a5, b5 = torch.randn(5, 4), torch.randn(5, 3)
    out = run(model, {"a": a5.numpy(), "b": b5.numpy()})
    np.testing.assert_allclose(next(iter(out.values())), m(a5, b5).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_module_without_inputs_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="example_inputs"):
        gp.load(TwoInputs())


def test_unsupported_source_type():
    with pytest.raises(ModelLoadError, match="cannot load a int"):
        gp.load(42)
