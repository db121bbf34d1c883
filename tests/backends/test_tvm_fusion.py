"""Fused graphs on the TVM backend: one kernel per linear op and its activation, and the fused
attention function node compiles and matches ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.backends import tvm as gtvm
from graphpress.ir.numeric import run
from graphpress.passes import InvariantInstrument, PassManager, build_passes
from graphpress.passes.fusion import SDPA_OP

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def _private_tuning_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRESS_CACHE", str(tmp_path / "cache"))


class _Epilogues(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8)
        self.c3 = torch.nn.Conv2d(8, 4, 1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 6)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.nn.functional.relu6(self.b2(self.c2(x)))
        x = torch.nn.functional.hardswish(self.c3(x))
        return torch.sigmoid(self.fc(x.flatten(1)))


def test_each_linear_op_and_its_activation_compile_to_one_tvm_kernel():
    """After fuse (BatchNorm folded, relu6/hardswish as single ops), TVM's operator fusion puts each
    Conv/Gemm and its activation into one kernel; nothing tags them for it. The kernels are
    counted from the build's kernel names, the outputs compared with the torch module."""
    module = _Epilogues().eval()
    x = torch.randn(1, 3, 8, 8)
    model = gp.load(module, x)
    PassManager(build_passes("cleanup,fuse,cleanup"), [InvariantInstrument()]).run(model)
    assert [n.op_type for n in model.graph if n.op_type in ("BatchNormalization", "Relu", "Clip", "HardSwish", "Sigmoid")] == [
        "Relu", "Clip", "HardSwish", "Sigmoid"]  # fmt: skip

    compiled = gtvm.compile_model(model, "x86", shipped_databases=False)
    kernels = compiled.meta["build"]["kernel_names"]
    conv_kernels = [k for k in kernels if "conv2d" in k]
    # one kernel per conv, each with its activation (TVM names fused kernels after their ops)
    assert len(conv_kernels) == 3, kernels
    # relu; relu6 (max(x, 0) is relu, then minimum); hardswish (x * min(max(x/6 + 1/2, 0), 1))
    activations = ("relu", "clip", "minimum", "maximum")
    assert all(any(a in k for a in activations) for k in conv_kernels), kernels
    assert sum("relu" in k for k in conv_kernels) == 2 and sum("minimum" in k for k in conv_kernels) == 2, kernels
    assert any("matmul" in k and "sigmoid" in k for k in kernels), kernels
    # no activation left as a kernel of its own
    assert not [k for k in kernels if "conv2d" not in k and "matmul" not in k and any(a in k for a in (*activations, "sigmoid"))], kernels
    want = module(x).detach().numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=RTOL, atol=ATOL)


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).reshape(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * 0.35 + mask
        return torch.softmax(scores, dim=-1) @ v


def test_fused_attention_compiles_and_matches_ort():
    x, mask = torch.randn(1, 6, 16), torch.zeros(1, 1, 1, 6)
    mask[..., -2:] = -1e4
    model = gp.load(_Attention().eval(), (x, mask))
    PassManager(build_passes("cleanup,fuse"), [InvariantInstrument()]).run(model)
    assert [n.op_type for n in model.graph].count(SDPA_OP) == 1
    compiled = gtvm.compile_model(model, "x86", shipped_databases=False)
    assert compiled.meta["build"]["prepare"]["inlined_functions"] == 1
    feeds = {"x": x.numpy(), "mask": mask.numpy()}
    feeds = dict(zip([i.name for i in model.graph.inputs], feeds.values()))
    ref = next(iter(run(model, feeds).values()))
    np.testing.assert_allclose(compiled(*feeds.values())[0], ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ref, _Attention().eval()(x, mask).detach().numpy(), rtol=1e-5, atol=1e-6)
