"""The three benchmark models through the TVM backend: x86 matches ONNX Runtime within
rtol 1e-4 / atol 1e-5, and aarch64 (under qemu) matches x86 within the same bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.backends import tvm as gtvm
from graphpress.backends.tvm.qemu import arm_env_ready, run_aarch64
from graphpress.ir.numeric import run
from graphpress.models import mobilenet_v2, resnet18

pytestmark = pytest.mark.slow
ATOL, RTOL = 1e-5, 1e-4


def _cnn(factory, size):
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    return gp.load(factory().eval(), x), {"x": x.numpy()}


def _minilm(minilm_onnx, seq):
    from graphpress.models.minilm import load_minilm, tokenize

    if seq == 128:
        return gp.load(minilm_onnx), dict(np.load(minilm_onnx.with_suffix(".npz")))
    toks = tokenize(["arm and x86 agree"], seq_len=seq)
    model = gp.load(load_minilm(), (toks["input_ids"], toks["attention_mask"]))
    return model, {k: v.numpy() for k, v in toks.items()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "minilm"])
def test_x86_matches_onnxruntime(name, minilm_onnx):
    if name == "minilm":
        model, feeds = _minilm(minilm_onnx, 128)
    else:
        model, feeds = _cnn(resnet18 if name == "resnet18" else mobilenet_v2, 224)
    compiled = gtvm.compile_model(model, "x86")
    ref = run(model, feeds)
    got = compiled.run_named(**feeds)
    for key, value in ref.items():
        np.testing.assert_allclose(got[key], value, atol=ATOL, rtol=RTOL)


@pytest.mark.skipif(not arm_env_ready(), reason="no qemu-aarch64 / arm env (make arm-env)")
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "minilm"])
def test_aarch64_matches_x86(name, minilm_onnx, tmp_path):
    # smaller inputs than the x86 test: unscheduled aarch64 code under qemu is slow
    if name == "minilm":
        model, feeds = _minilm(minilm_onnx, 32)
    else:
        model, feeds = _cnn(resnet18 if name == "resnet18" else mobilenet_v2, 64)
    x86 = gtvm.compile_model(model, "x86").run_named(**feeds)
    artifact = gtvm.compile_model(model, "aarch64").save(tmp_path / f"{name}.arm")
    arm = run_aarch64(artifact, feeds)
    for key, value in x86.items():
        np.testing.assert_allclose(arm[key], value, atol=ATOL, rtol=RTOL)
