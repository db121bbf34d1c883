"""The CLI contract: exit 0 on success; exit 2 with one line on stderr for bad input; the input
file is never modified and no output file exists after a failure."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphpress.cli import main
from tests.conftest import make_model

PLUGINS = str(Path(__file__).parent / "plugins")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fail(capsys, argv, inputs, outputs, message):
    """Run the CLI expecting exit 2, the message on one stderr line, inputs untouched, no outputs."""
    before = {p: _digest(p) for p in inputs if p.exists()}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("graphpress: error: ")
    assert message in lines[0], lines[0]
    for p, digest in before.items():
        assert _digest(p) == digest, f"{p} was modified"
    for p in outputs:
        assert not p.exists(), f"{p} should not exist"
    leftovers = [p for p in outputs[0].parent.glob(".*.tmp")] if outputs else []
    assert not leftovers
    return lines[0]


def test_inspect_table_and_json(capsys, mlp_path):
    assert main(["inspect", str(mlp_path)]) == 0
    out = capsys.readouterr().out
    assert "MatMul" in out and "params" in out
    assert main(["inspect", str(mlp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["nodes"] == 5 and data["params"] == 8 * 16 + 16 + 16 * 4
    assert data["macs"] == 8 * 16 + 16 * 4


def test_optimize_writes_model_and_report(capsys, tmp_path, mlp_proto, mlp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    digest = _digest(mlp_path)
    code = main(["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup", "--verify", "--report", str(rep)])
    assert code == 0, capsys.readouterr().err
    assert _digest(mlp_path) == digest
    report = json.loads(rep.read_text())
    assert report["before"]["nodes"] == 5 and report["after"]["nodes"] == 4
    assert report["verification"]["performed"]
    assert report["passes"][0]["name"] == "cleanup" and report["passes"][0]["modified"]
    # the written file computes the MLP: relu(x @ W1 + b1) @ W2, written in numpy
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in mlp_proto.graph.initializer}
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"], rtol=1e-5, atol=1e-5)


def test_optimize_with_inputs_npz(capsys, tmp_path, mlp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.full((1, 8), 0.5, np.float32))
    rep = tmp_path / "r.json"
    argv = ["optimize", str(mlp_path), "-o", str(tmp_path / "o.onnx"), "--passes", "cleanup", "--verify", "--inputs", str(npz), "--report", str(rep)]
    assert main(argv) == 0
    assert json.loads(rep.read_text())["verification"]["inputs"] == str(npz)


def test_optimize_quantizes_for_the_target_it_is_given(capsys, tmp_path, mlp_path):
    """``--target x86:avx2``: a CPU without an int8 dot product, whose vpmaddubsw sums pairs of
    products in int16: the static quantizer gives the weights 7 bits (no pair can saturate,
    for ONNX Runtime's AVX2 kernels and graphpress's); without a target they take all 8. A
    target that does not exist: one line, exit 2, nothing written."""
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))

    def weights(out):
        model = onnx.load(out)
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return [init[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(0, np.uint8)).dtype == np.int8]

    for target in (None, "x86:avx2"):
        out = tmp_path / f"q{target is not None}.onnx"
        argv = ["optimize", str(mlp_path), "-o", str(out), "--passes", "quantize:mode=static", "--inputs", str(npz)] + (["--target", target] if target else [])
        assert main(argv) == 0, capsys.readouterr().err
        ws = weights(out)
        assert len(ws) == 2, ws
        widest = max(int(np.abs(w.astype(np.int32)).max()) for w in ws)
        assert (widest <= 64) if target else (widest >= 127), (target, widest)
    _fail(capsys, ["optimize", str(mlp_path), "-o", str(tmp_path / "bad.onnx"), "--passes", "cleanup", "--target", "x86:avx9"],
          [mlp_path], [tmp_path / "bad.onnx"], "x86:avx9")  # fmt: skip


def test_missing_file(capsys, tmp_path):
    out = tmp_path / "o.onnx"
    _fail(capsys, ["optimize", str(tmp_path / "nope.onnx"), "-o", str(out), "--passes", "cleanup"], [], [out], "nope.onnx: no such file")


def test_not_onnx(capsys, tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("hello, I am a text file\n" * 20)
    out = tmp_path / "o.onnx"
    _fail(capsys, ["optimize", str(bad), "-o", str(out), "--passes", "cleanup"], [bad], [out], "not an ONNX model")


def test_truncated_protobuf(capsys, tmp_path, mlp_path):
    cut = tmp_path / "cut.onnx"
    data = mlp_path.read_bytes()
    cut.write_bytes(data[: len(data) - 37])
    out = tmp_path / "o.onnx"
    _fail(capsys, ["optimize", str(cut), "-o", str(out), "--passes", "cleanup"], [cut], [out], "cut.onnx")


def test_unknown_pass(capsys, tmp_path, mlp_path):
    out = tmp_path / "o.onnx"
    line = _fail(capsys, ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup,frobnicate"], [mlp_path], [out], "unknown pass 'frobnicate'")
    assert "valid passes: cleanup" in line


def test_unknown_option(capsys, tmp_path, mlp_path):
    out = tmp_path / "o.onnx"
    line = _fail(capsys, ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup:speed=11"], [mlp_path], [out], "pass 'cleanup' has no option 'speed'")
    assert "valid options: max_iterations" in line


def test_bad_option_value(capsys, tmp_path, mlp_path):
    out = tmp_path / "o.onnx"
    _fail(capsys, ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup:max_iterations=lots"], [mlp_path], [out], "'lots' is not a int")
    _fail(capsys, ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup:max_iterations=-1"], [mlp_path], [out], "below the minimum 1")


def test_unwritable_output(capsys, tmp_path, mlp_path):
    out = tmp_path / "missing-dir" / "o.onnx"
    _fail(capsys, ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup"], [mlp_path], [out], "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_output_dir(capsys, tmp_path, mlp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _fail(capsys, ["optimize", str(mlp_path), "-o", str(ro / "o.onnx"), "--passes", "cleanup"], [mlp_path], [ro / "o.onnx"], "not writable")
    finally:
        ro.chmod(0o700)


def test_output_over_input_is_refused(capsys, mlp_path):
    _fail(capsys, ["optimize", str(mlp_path), "-o", str(mlp_path), "--passes", "cleanup"], [mlp_path], [], "is the input model")


def test_verify_failure(capsys, tmp_path, mlp_path, monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    line = _fail(
        capsys,
        ["optimize", str(mlp_path), "-o", str(out), "--passes", "cleanup,scale_weight_pass", "--verify", "--report", str(rep)],
        [mlp_path],
        [out, rep],
        "pass 'test_scale_weight' changed the outputs",
    )
    assert "first diverging node 'mm1' (MatMul)" in line


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "inspect", str(tmp_path / "nope.onnx")])


def test_console_script_entry_point(tmp_path, mlp_path):
    exe = Path(sys.executable).parent / "graphpress"
    proc = subprocess.run([str(exe), "inspect", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("missing.onnx: no such file; give the path of an .onnx model or a .pt2 torch program")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([str(exe), "passes"], capture_output=True, text=True)
    assert proc.returncode == 0 and "cleanup" in proc.stdout


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_is_verified(tmp_path):
    """`make demo`: the digits CNN with prune-int8 and smallest, MiniLM with int8, all compiled for
    x86; each within its budget on held-out samples (checked here again on the artifacts with
    ONNX Runtime), a page per job, the table's sizes read off the files."""
    from graphpress.demo import run_demo

    result = run_demo(output_dir=str(tmp_path), epochs=4)
    assert [r["job"] for r in result["rows"]] == ["digits-cnn prune-int8", "digits-cnn smallest", "minilm int8"]
    assert all(r["passed"] for r in result["rows"]), result["rows"]
    small = result["rows"][1]
    assert small["bytes_after"] * 8 < small["bytes_before"], small  # smallest: packed, several times smaller
    for page in result["reports"]:
        text = Path(page).read_text()
        assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    for artifact in result["artifacts"]:
        assert (Path(artifact) / "graphpress.json").is_file()
    assert all(r["graphpress_ms"] and r["ort_fp32_ms"] for r in result["rows"])
    # the prune-int8 artifact on the held-out digits (the last quarter), against ONNX Runtime on the exported CNN
    from graphpress.backends.tvm.runtime import load as load_artifact
    from graphpress.models.cnn import digits_data
    from graphpress.pipelines import split_samples

    data = digits_data()
    held = split_samples([{"x": data.x_test}])[1][0]["x"]
    labels = data.y_test[len(data.x_test) - len(held) :]
    session = ort.InferenceSession(str(tmp_path / "digits-cnn.onnx"), providers=["CPUExecutionProvider"])
    original = (session.run(None, {session.get_inputs()[0].name: held})[0].argmax(1) == labels).mean()
    artifact = load_artifact(result["artifacts"][0])
    got = np.asarray(artifact(held)[0]).argmax(1)
    assert (got == labels).mean() >= original - 0.01


def test_inspect_counts_macs_for_the_input_shape_given(tmp_path, capsys):
    """A Conv over symbolic height/width: without shapes the MACs count them as 1 and say so;
    with --input-shape they are the real figure, computed here by hand."""
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")],
    )
    src = tmp_path / "conv.onnx"
    onnx.save(proto, src)
    assert main(["inspect", str(src), "--json", "--input-shape", "x=1x3x32x32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs"] == 32 * 32 * 8 * 3 * 3 * 3 and summary["symbolic_dims"] == []
    assert main(["inspect", str(src)]) == 0
    assert "note: symbolic dims batch, h, w count as 1 in the MACs" in capsys.readouterr().out
    assert main(["inspect", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["symbolic_dims"] == ["batch", "h", "w"]
    assert main(["inspect", str(src), "--input-shape", "y=1x3"]) == 2
    assert "'y', which is not an input; inputs: x" in capsys.readouterr().err
