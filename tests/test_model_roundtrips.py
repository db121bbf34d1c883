"""Round trips on real models: load -> cleanup (verified) -> save -> ONNX Runtime, compared with torch.

Models: ResNet-18 and MobileNetV2 (defined in graphpress.models, random weights), the
trained digits CNN, all-MiniLM-L6-v2 with its real weights; exported with torch's dynamo
exporter (through graphpress.load) and with the legacy TorchScript exporter.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.cli import main
from graphpress.models import mobilenet_v2, resnet18
from graphpress.passes import InvariantInstrument, NumericInstrument, PassManager, build_passes

pytestmark = pytest.mark.slow

# fp32 end-to-end tolerance versus torch eager (different kernels, same math)
TORCH_ATOL, TORCH_RTOL = 1e-4, 1e-4


def _cleanup_and_run(model, feeds, want, tmp_path, expect_fewer=True):
    """Cleanup (verified), save, run the file with ONNX Runtime: its output must match ``want``,
    torch eager's output of the module the model came from (not the input model run again)."""
    before = gp.summarize(model)
    inst = NumericInstrument(feeds, "test")
    result = PassManager(build_passes("cleanup"), [InvariantInstrument(), inst]).run(model)
    assert inst.final.max_abs_diff <= 1e-5
    after = gp.summarize(model)
    assert after.nodes < before.nodes if expect_fewer else after.nodes <= before.nodes
    assert after.macs == before.macs
    path = gp.save(model, tmp_path / "clean.onnx")
    assert onnx.load(path).ir_version <= 10
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = sess.run(None, feeds)
    np.testing.assert_allclose(outputs[0], want, atol=TORCH_ATOL, rtol=TORCH_RTOL)
    return outputs, result


@pytest.mark.parametrize("factory", [resnet18, mobilenet_v2], ids=["resnet18", "mobilenetv2"])
def test_cnn_dynamo_export_round_trip(factory, tmp_path):
    torch.manual_seed(0)
    module = factory(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    model = gp.load(module, x)
    assert "layer1.0.conv1.weight" in model.graph.initializers or "features.0.0.weight" in model.graph.initializers
    with torch.no_grad():
        want = module(x).numpy()
    _cleanup_and_run(model, {"x": x.numpy()}, want, tmp_path)


@pytest.mark.parametrize("factory", [resnet18, mobilenet_v2], ids=["resnet18", "mobilenetv2"])
def test_legacy_exporter_file_round_trip(factory, tmp_path):
    torch.manual_seed(0)
    module = factory(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    f = tmp_path / "legacy.onnx"
    torch.onnx.export(module, (x,), str(f), dynamo=False, opset_version=13, do_constant_folding=False, input_names=["input"])
    model = gp.load(f)
    assert model.opset_imports[""] == 13  # kept as exported
    with torch.no_grad():
        want = module(x).numpy()
    # the legacy exporter folds most constants itself: cleanup may have nothing left to do
    _cleanup_and_run(model, {"input": x.numpy()}, want, tmp_path, expect_fewer=False)


def test_trained_cnn_keeps_accuracy(cnn_onnx, digits_cnn, tmp_path):
    from graphpress.models.cnn import accuracy

    module, data = digits_cnn
    model = gp.load(cnn_onnx)
    with torch.no_grad():
        ref = module(torch.from_numpy(data.x_test)).numpy()
    (logits,), _ = _cleanup_and_run(model, {"x": data.x_test}, ref, tmp_path)
    assert accuracy(logits, data.y_test) == accuracy(ref, data.y_test)


def test_minilm_real_weights_round_trip(minilm_onnx, tmp_path):
    feeds = dict(np.load(minilm_onnx.with_suffix(".npz")))
    ref = np.load(minilm_onnx.with_suffix(".ref.npy"))
    model = gp.load(minilm_onnx)
    (emb,), result = _cleanup_and_run(model, feeds, ref, tmp_path)  # ref: torch's embeddings (conftest)
    assert result.records[0].stats["nodes_removed"] > 100
    cos = float((emb * ref).sum() / (np.linalg.norm(emb) * np.linalg.norm(ref)))
    assert cos > 0.99999


def test_minilm_cli_optimize_verify(minilm_onnx, tmp_path, capsys):
    """The issue's acceptance check: optimize MiniLM with cleanup --verify, ORT runs it, max abs diff <= 1e-5."""
    out, rep = tmp_path / "minilm.clean.onnx", tmp_path / "r.json"
    npz = minilm_onnx.with_suffix(".npz")
    argv = ["optimize", str(minilm_onnx), "-o", str(out), "--passes", "cleanup", "--verify", "--inputs", str(npz), "--report", str(rep)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(rep.read_text())
    assert report["verification"]["passed"] and report["verification"]["max_abs_diff"] <= 1e-5
    feeds = dict(np.load(npz))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(minilm_onnx), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(sess.run(None, feeds)[0] - ref).max() <= 1e-5
