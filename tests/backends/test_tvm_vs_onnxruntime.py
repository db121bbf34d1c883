"""``compile`` measures the artifact against ONNX Runtime running the model the user gave (and,
for a quantized model, its fp32 counterpart), reports both speed-ups, warns when it is slower
and refuses with ``require_faster``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.errors import GraphpressError
from graphpress.ir.io import to_proto
from tests.conftest import make_model, tensor


def _chain(depth: int, width: int = 256) -> ir.Model:
    """x[8, width] -> ``depth`` MatMul+Tanh layers -> y: ``depth`` = 0 is a single Tanh."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(depth):
        inits.append(tensor(f"w{i}", (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)))
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        last = f"t{i}"
    nodes.append(helper.make_node("Tanh", [last], ["y"]))
    return gp.load(make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, width])], inits,
    ))  # fmt: skip


def test_the_report_times_the_artifact_against_onnxruntime_on_the_model_given():
    import tvm

    compiled = compile_model(_chain(4), "x86")
    speed = compiled.meta["build"]["vs_onnxruntime"]
    assert speed["threads"] == tvm.get_global_func("runtime.NumThreads")()
    assert speed["model_as_given"] == "fp32" and "speedup_vs_fp32" not in speed
    assert speed["artifact_ms"] > 0 and speed["onnxruntime_ms"] > 0
    assert speed["speedup"] == pytest.approx(speed["onnxruntime_ms"] / speed["artifact_ms"], rel=1e-2, abs=1e-3)  # rounded to 3 decimals
    assert speed["slower"] == (speed["speedup"] < 1.0)
    assert ("slower" if speed["slower"] else "faster") in speed["verdict"]
    assert "vs_onnxruntime" not in compile_model(_chain(1), "x86", measure=False).meta["build"]


def test_require_faster_refuses_an_artifact_slower_than_the_baseline():
    """The baseline is what the user had: here a single Tanh against 24 matrix products, so the
    artifact is slower beyond any timing noise; with the model itself as the baseline it is not
    refused for that reason (whatever the measurement says, it is reported)."""
    heavy = _chain(24)
    with pytest.raises(GraphpressError, match=r"slower than ONNX Runtime on the model as given .*--require-faster"):
        compile_model(heavy, "x86", baseline=_chain(0), require_faster=True)
    compiled = compile_model(heavy, "x86", baseline=_chain(0))  # measured, reported, not refused
    assert compiled.meta["build"]["vs_onnxruntime"]["slower"]
    assert compiled.meta["build"]["vs_onnxruntime"]["speedup"] < 0.5


def test_a_quantized_model_is_also_measured_against_its_fp32_counterpart():
    from graphpress.passes import PassManager, build_passes
    from graphpress.passes.context import PassContext

    model = _chain(3)
    rng = np.random.default_rng(1)
    context = PassContext(samples=[{"x": rng.standard_normal((8, 256)).astype(np.float32)} for _ in range(4)])
    PassManager(build_passes("quantize:mode=static"), context=context).run(model)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)
    speed = compile_model(model, "x86").meta["build"]["vs_onnxruntime"]
    assert speed["model_as_given"] == "int8 (quantized)"
    assert speed["onnxruntime_fp32_ms"] > 0
    assert speed["speedup_vs_fp32"] == pytest.approx(speed["onnxruntime_fp32_ms"] / speed["artifact_ms"], rel=1e-2, abs=1e-3)  # rounded to 3 decimals
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)  # the model given is not changed


def test_cli_compile_prints_both_latencies_and_writes_them_to_the_report(tmp_path, capsys):
    from graphpress.cli import main

    src, art, rep = tmp_path / "m.onnx", tmp_path / "m.tvm", tmp_path / "r.json"
    onnx.save(to_proto(_chain(2)), src)
    assert main(["compile", str(src), "--target", "x86", "-o", str(art), "--report", str(rep)]) == 0
    out = capsys.readouterr()
    line = next(s for s in out.out.splitlines() if s.startswith("speed vs ONNX Runtime"))
    speed = json.loads(rep.read_text())["build"]["vs_onnxruntime"]
    assert f"artifact {speed['artifact_ms']:.3f} ms" in line and f"{speed['onnxruntime_ms']:.3f} ms" in line
    assert ("warning: the artifact is slower" in out.err) == speed["slower"]
    assert main(["compile", str(src), "--target", "aarch64", "-o", str(tmp_path / "a"), "--require-faster"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--require-faster" in err[0] and not (tmp_path / "a").exists()
