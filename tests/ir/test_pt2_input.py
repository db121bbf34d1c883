"""Saved torch programs (``torch.export.save``, ``.pt2``) as input: loaded into the IR, checked
against the program itself, and through the CLI to an optimized ONNX file and a compiled
artifact whose outputs match torch's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.cli import main
from graphpress.errors import ModelLoadError
from graphpress.ir.io import to_proto


def _program(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)
    ).eval()
    x = torch.randn(1, 3, 12, 12)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(module, (x,)), str(path))
    return module, x, path


def test_a_saved_program_loads_and_computes_what_torch_does(tmp_path):
    module, x, path = _program(tmp_path)
    model = gp.load(path)
    session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    other = torch.randn(1, 3, 12, 12)  # not the program's example input
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    np.testing.assert_allclose(got, module(other).detach().numpy(), atol=1e-5, rtol=1e-4)


def test_cli_optimizes_and_compiles_a_saved_program(tmp_path):
    module, x, path = _program(tmp_path)
    out = tmp_path / "net.onnx"
    assert main(["optimize", str(path), "-o", str(out), "--passes", "cleanup,fold_batchnorm,fuse", "--verify"]) == 0
    optimized = gp.load(out)
    assert not any(n.op_type == "BatchNormalization" for n in optimized.graph)
    assert main(["compile", str(path), "--target", "x86", "-o", str(tmp_path / "net.x86")]) == 0
    from graphpress.backends.tvm import load as load_artifact

    artifact = load_artifact(tmp_path / "net.x86")
    np.testing.assert_allclose(artifact(x.numpy())[0], module(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_a_file_that_is_not_a_program_gets_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="bad.pt2: not a torch.export program"):
        gp.load(bad)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt2: not a torch.export program" in err[0], err
