"""External data: torch's default ``model.onnx`` + ``model.onnx.data`` in, self-contained
outputs out, from any directory; references checked on load; large models streamed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.cli import main
from graphpress.errors import GraphpressError, ModelLoadError
from graphpress.ir.numeric import run


def _ort(path: Path, feeds, cwd: Path | None = None):
    """Run a model file with ORT from another working directory (relative paths must not matter)."""
    old = os.getcwd()
    os.chdir(cwd or "/")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    finally:
        os.chdir(old)


def _external_refs(path: Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    refs = set()
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            refs |= {e.value for e in t.external_data if e.key == "location"}
    return refs


@pytest.fixture
def torch_export(tmp_path) -> Path:
    """What torch 2.13's ``torch.onnx.export`` writes by default: model.onnx + model.onnx.data."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    src = tmp_path / "export"
    src.mkdir()
    path = src / "model.onnx"
    torch.onnx.export(module, (torch.randn(1, 16),), str(path), verbose=False)
    assert (src / "model.onnx.data").exists(), "torch 2.13 writes external data by default"
    return path


def test_optimize_output_is_self_contained_and_loads_anywhere(tmp_path, torch_export, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.opt.onnx"
    before = {p.name: p.read_bytes() for p in torch_export.parent.iterdir()}
    assert main(["optimize", str(torch_export), "-o", str(out), "--passes", "cleanup,fuse", "--verify"]) == 0, capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in torch_export.parent.iterdir()} == before  # input untouched
    assert _external_refs(out) == set() and sorted(p.name for p in out_dir.iterdir()) == ["model.opt.onnx"]
    x = {_ort_input(torch_export): np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
    ref = _ort(torch_export, x)[0]
    # the input's weights file gone: the output must not need it
    shutil.rmtree(torch_export.parent)
    moved = tmp_path / "elsewhere" / "m.onnx"
    moved.parent.mkdir()
    shutil.move(out, moved)
    np.testing.assert_allclose(_ort(moved, x)[0], ref, rtol=1e-5, atol=1e-6)


def _ort_input(path: Path) -> str:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name


def test_external_data_output_has_its_own_data_file(tmp_path, torch_export, capsys):
    out = tmp_path / "o" / "m.onnx"
    out.parent.mkdir()
    assert main(["optimize", str(torch_export), "-o", str(out), "--passes", "cleanup", "--external-data"]) == 0, capsys.readouterr().err
    assert _external_refs(out) == {"m.onnx.data"}
    name = _ort_input(torch_export)
    x = {name: np.ones((1, 16), np.float32)}
    ref = _ort(torch_export, x)[0]
    os.rename(torch_export.parent, tmp_path / "gone")
    np.testing.assert_allclose(_ort(out, x, cwd=tmp_path)[0], ref, rtol=1e-5, atol=1e-6)
    # and written again over itself (old .onnx + .data replaced as a pair)
    os.rename(tmp_path / "gone", torch_export.parent)
    assert main(["optimize", str(torch_export), "-o", str(out), "--passes", "dce", "--external-data"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_allclose(_ort(out, x)[0], ref, rtol=1e-5, atol=1e-6)
    # a self-contained save over it removes the data file nothing refers to any more
    assert main(["optimize", str(torch_export), "-o", str(out), "--passes", "dce"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    np.testing.assert_allclose(_ort(out, x)[0], ref, rtol=1e-5, atol=1e-6)


def test_dump_ir_files_are_self_contained(tmp_path, torch_export):
    dump = tmp_path / "dump"
    assert main(["optimize", str(torch_export), "-o", str(tmp_path / "o.onnx"), "--passes", "cleanup,fuse", "--dump-ir", str(dump)]) == 0
    files = sorted(dump.iterdir())
    assert [p.name for p in files][0] == "00_input.onnx" and len(files) == 3
    assert all(_external_refs(p) == set() for p in files)


def test_load_from_another_working_directory(tmp_path, torch_export, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = gp.load(Path("export") / "model.onnx")
    monkeypatch.chdir("/")
    x = {model.graph.inputs[0].name: np.ones((1, 16), np.float32)}
    np.testing.assert_allclose(run(model, x)[model.graph.outputs[0].name], _ort(torch_export, x)[0], rtol=1e-6)


@pytest.mark.parametrize(
    "passes",
    ["cleanup,fuse,quantize:mode=dynamic", "quantize:mode=static", "quantize:mode=static;method=mse", "quantize:mode=fp16", "prune:ratio=0.25", "prune:ratio=0.5;tolerance=0.2"],
)
def test_passes_that_copy_the_model_find_its_data_from_any_directory(tmp_path, torch_export, monkeypatch, capsys, passes):
    """Quantizing (ORT's quantizer reads a copy), pruning (checked on copies) and the numeric check
    of each pass copy the model through its proto, which names the data file relative to the
    model's directory: run from another directory, each copy must still find the weights."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(torch_export), "-o", str(out), "--passes", passes]) == 0, capsys.readouterr().err
    x = {_ort_input(torch_export): np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)}
    got, ref = _ort(out, x)[0], _ort(torch_export, x)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    if passes.startswith("quantize"):  # the quantized model still computes the function
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95
    assert not os.listdir(elsewhere)


def test_compile_finds_the_data_from_any_directory(tmp_path, torch_export, monkeypatch, capsys):
    """``compile`` prepares a copy of the model and hands TVM's importer a proto: both read the
    weights from the model's directory, not the working one."""
    pytest.importorskip("tvm")
    monkeypatch.chdir("/")
    out = tmp_path / "artifact"
    assert main(["compile", str(torch_export), "--target", "x86", "-o", str(out), "--no-measure"]) == 0, capsys.readouterr().err
    from graphpress.backends import tvm as gtvm

    name = _ort_input(torch_export)
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    got = next(iter(gtvm.load(out).run_named(**{name: x}).values()))
    np.testing.assert_allclose(got, _ort(torch_export, {name: x})[0], rtol=1e-5, atol=1e-5)


def test_save_refuses_the_inputs_data_file(tmp_path, torch_export):
    model = gp.load(torch_export)
    data = torch_export.parent / "model.onnx.data"
    digest = data.read_bytes()
    with pytest.raises(GraphpressError, match="holds the input model's external data"):
        gp.save(model, data)
    # "model.onnx" + ".data" is the input's data file too
    other = torch_export.parent / "copy.onnx"
    with pytest.raises(GraphpressError, match="is the input model"):
        gp.save(model, torch_export)
    gp.save(model, other)
    assert data.read_bytes() == digest


def _external_model(tmp_path: Path, location: str, data: bytes | None, length: int | None = None) -> Path:
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    tensor = onnx.numpy_helper.from_array(w, "W")
    onnx.external_data_helper.set_external_data(tensor, location, offset=0, length=length if length is not None else w.nbytes)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])], [tensor],
    )  # fmt: skip
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    proto.ir_version = 10
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    if data is not None:
        (tmp_path / location).write_bytes(data)
    return path


@pytest.mark.parametrize(
    "location, data, length, message",
    [
        ("m.data", None, None, "initializer 'W' keeps its weights in 'm.data', which is missing"),
        ("../secret.bin", b"\0" * 256, None, "outside the model's directory"),
        ("m.data", b"\0" * 100, None, "needs bytes 0..256 of 'm.data', which holds 100"),
        ("m.data", b"\0" * 256, 128, "declares 128 bytes of external data but its dtype and shape need 256"),
    ],
)
def test_bad_external_data_is_refused_on_load(tmp_path, location, data, length, message):
    sub = tmp_path / "model"
    sub.mkdir()
    if location.startswith("../") and data is not None:
        (tmp_path / location[3:]).write_bytes(data)
        data = None
    path = _external_model(sub, location, data, length)
    with pytest.raises(ModelLoadError, match=message):
        gp.load(path)
    assert main(["inspect", str(path)]) == 2


def test_large_model_streams_through_load_passes_and_save(tmp_path):
    """A model over 2 GB (three 750 MB weights in a sparse data file): loaded, run through
    passes that do not need every weight at once, saved with its own data file, while the
    process's anonymous memory stays far below the model size."""
    script = textwrap.dedent(
        """
        import os, sys, threading, time
        import numpy as np, onnx
        import graphpress as gp
        from graphpress.passes import InvariantInstrument, PassManager, build_passes

        d = sys.argv[1]
        rows, cols = 8192, 24000  # 750 MiB of float32 each
        n = 3
        data = os.path.join(d, "big.onnx.data")
        with open(data, "wb") as f:
            f.truncate(rows * cols * 4 * n)  # sparse: costs no disk until written
            for i in range(n):
                f.seek(i * rows * cols * 4)
                f.write(np.full(cols, i + 1, np.float32).tobytes())  # row 0 of each weight
        nodes, inits, prev = [], [], "x"
        for i in range(n):
            t = onnx.TensorProto(name=f"W{i}", data_type=onnx.TensorProto.FLOAT, dims=[rows, cols])
            for key, value in (("location", "big.onnx.data"), ("offset", str(i * rows * cols * 4)), ("length", str(rows * cols * 4))):
                t.external_data.add(key=key, value=value)
            t.data_location = onnx.TensorProto.EXTERNAL
            inits.append(t)
            nodes.append(onnx.helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"mm{i}"))
            nodes.append(onnx.helper.make_node("Identity", [f"h{i}"], [f"i{i}"], name=f"id{i}"))
            nodes.append(onnx.helper.make_node("Slice", [f"i{i}", "starts", "ends", "axes"], [f"s{i}"], name=f"sl{i}"))
            prev = f"s{i}"
        inits += [onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("starts", [0]), ("ends", [rows]), ("axes", [1]))]
        graph = onnx.helper.make_graph(nodes, "big", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, rows])],
                                       [onnx.helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, rows])], inits)
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
        proto.ir_version = 10
        with open(os.path.join(d, "big.onnx"), "wb") as f:
            f.write(proto.SerializeToString())

        peak = [0]
        stop = threading.Event()
        def watch():
            while not stop.is_set():
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                time.sleep(0.005)
        base = 0
        with open("/proc/self/status") as f:
            base = next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))
        threading.Thread(target=watch, daemon=True).start()
        model = gp.load(os.path.join(d, "big.onnx"))
        result = PassManager(build_passes("eliminate_identity,dce,topo_sort"), [InvariantInstrument()]).run(model)
        out = os.path.join(d, "out", "big.out.onnx")
        os.mkdir(os.path.dirname(out))
        gp.save(model, out)  # over 2 GB: its own data file, by default
        stop.set()
        size = os.path.getsize(out + ".data")
        saved = gp.load(out)
        w = saved.graph.initializers["W2"].const_value.numpy()
        print(result.records[0].stats.get("nodes_removed", result.records[0].modified), size, peak[0] - base, float(w[0, 0]), float(w[1, 0]))
        """
    )
    if shutil.disk_usage(tmp_path).free < 12 << 30:
        pytest.skip("needs about 12 GiB of free disk")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    removed, size, peak, w00, w10 = proc.stdout.split()
    assert int(size) >= 3 * 8192 * 24000 * 4 > 2**31
    assert float(w00) == 3.0 and float(w10) == 0.0  # the bytes were copied, not made up
    assert int(peak) < 400 << 20, f"anonymous memory grew by {int(peak) >> 20} MiB for a 2250 MiB model"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
