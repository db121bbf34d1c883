"""Artifacts with dynamic dims (``--dynamic batch``): one build serves every size of them,
checked against ONNX Runtime at sizes the build never saw."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm.runtime import load as load_artifact
from graphpress.ir import from_torch, numeric


def _cnn(batch_dim="N"):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "G"),
        numpy_helper.from_array(np.array([-1, 8], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "G"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 5])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    return proto


def test_one_artifact_runs_every_batch_size_and_matches_onnxruntime(tmp_path):
    model = gp.load(_cnn())
    rng = np.random.default_rng(1)
    compiled = compile_model(model, "x86", samples=[{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}], dynamic=["batch"])
    assert compiled.meta["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert compiled.meta["build"]["dynamic_dims"] == {"batch": [["x", 0]]}
    assert "twice" in compiled.meta["build"]["check_vs_onnxruntime"]["inputs"]
    compiled.save(tmp_path / "art")
    reloaded = load_artifact(tmp_path / "art")
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        want = numeric.run(model, {"x": x})["y"]
        np.testing.assert_allclose(reloaded(x)[0], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(gp.GraphpressError, match=r"built for \['batch', 3, 16, 16\]"):
        reloaded(np.zeros((2, 3, 8, 8), np.float32))  # the static dims stay static


def test_a_dynamic_dim_the_model_does_not_have_is_named_with_the_ones_it_has():
    with pytest.raises(gp.GraphpressError, match=r"dynamic dim 'seq' .* symbolic dims: N \(x axis 0\)"):
        compile_model(gp.load(_cnn()), "x86", dynamic=["seq"])
    with pytest.raises(gp.GraphpressError, match="int8=on needs static shapes"):
        compile_model(gp.load(_cnn()), "x86", dynamic=["batch"], int8="on")


def test_inputs_sharing_a_dynamic_dim_must_agree_on_its_size():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    proto = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    proto.ir_version = 9
    compiled = compile_model(gp.load(proto), "x86", dynamic=["batch"])
    ones = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(compiled(ones, ones)[0], 2 * ones)
    with pytest.raises(gp.GraphpressError, match="input 'b' has shape"):
        compiled(ones, np.ones((2, 4), np.float32))


def test_a_torch_export_with_a_dynamic_batch_through_the_cli(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    model = from_torch(module, torch.randn(1, 3, 8, 8), dynamic_batch=True)
    path = tmp_path / "m.onnx"
    gp.save(model, path)
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", **{model.graph.inputs[0].name: x})
    art = tmp_path / "art"
    cli = [sys.executable, "-c", "import sys; from graphpress.cli import main; sys.exit(main())"]
    out = subprocess.run([*cli, "compile", str(path), "--target", "x86", "--dynamic", "batch", "--inputs", str(tmp_path / "x.npz"), "-o", str(art)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "dynamic dims" in out.stdout and "PASS" in out.stdout
    x3 = x[:3]
    np.savez(tmp_path / "x3.npz", **{model.graph.inputs[0].name: x3})
    run = subprocess.run([*cli, "run", str(art), "--inputs", str(tmp_path / "x3.npz"), "--output", str(tmp_path / "y.npz")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with torch.no_grad():
        want = module(torch.from_numpy(x3)).numpy()
    got = next(iter(np.load(tmp_path / "y.npz").values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    bad = subprocess.run([*cli, "compile", str(path), "--target", "x86", "--dynamic", "time", "-o", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "dynamic dim 'time'" in bad.stderr
