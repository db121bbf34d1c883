"""Recipes under one budget (`graphpress.compress`, `graphpress compress`) and `bench`: the budget is
checked here on the held-out rows with ONNX Runtime, independently of the pipeline's own check."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.errors import GraphpressError
from graphpress.ir.io import to_proto
from graphpress.pipelines import Budget, parse_budget, split_samples


@pytest.fixture(scope="module")
def digits_mlp():
    """A digits MLP trained for a few epochs, its test rows and labels."""
    from graphpress.models.cnn import digits_data, fit

    data = digits_data()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    fit(module, data, epochs=4)
    model = gp.load(module.eval(), torch.from_numpy(data.x_test[:1]), dynamic_batch=True)
    name = model.graph.inputs[0].name
    return model, name, data.x_test, data.y_test


def _ort_logits(model, name, x) -> np.ndarray:
    session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def _held_out_agreement(original, compressed, name, x) -> float:
    """Top-1 agreement on the rows compress held out (its last quarter), computed here."""
    _, held = split_samples([{name: x}])
    rows = held[0][name]
    return float((_ort_logits(original, name, rows).argmax(1) == _ort_logits(compressed, name, rows).argmax(1)).mean())


def test_prune_int8_keeps_the_budget_on_the_held_out_rows(digits_mlp):
    model, name, x, _ = digits_mlp
    result = gp.compress(model, "onnxruntime", samples={name: x}, recipe="prune-int8", budget="1%", measure=False)
    assert _held_out_agreement(model, result.model, name, x) >= 0.99
    steps = {s["stage"]: s for s in result.steps}
    assert steps["quantize"]["chosen"], steps["quantize"]  # int8 fits 1 % on a trained MLP
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph)
    assert all(p["verification"]["passed"] for p in steps["quantize"]["passes"] if p.get("verification"))
    # every candidate tried is recorded with its outcome, the strongest prune ratio first
    assert steps["prune"]["tried"][0][0] == "prune:ratio=0.7"
    assert result.rows[0]["variant"].startswith("original") and result.rows[-1]["variant"].startswith("graphpress")
    assert result.rows[-1]["params"] <= result.rows[0]["params"]
    assert any(n.op_type == "Gemm" or n.op_type == "MatMul" for n in model.graph)  # the model given is not changed


def test_a_budget_nothing_lossy_fits_leaves_the_lossless_model(digits_mlp):
    model, name, x, _ = digits_mlp
    result = gp.compress(model, "onnxruntime", samples={name: x}, recipe="int8", budget="cos:0.9999999", measure=False)
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph)
    quantize = next(s for s in result.steps if s["stage"] == "quantize")
    assert quantize["chosen"] is None and quantize["skipped"]
    held = split_samples([{name: x}])[1][0][name]
    np.testing.assert_allclose(_ort_logits(result.model, name, held), _ort_logits(model, name, held), rtol=1e-4, atol=1e-5)


def test_smallest_is_several_times_smaller_within_its_budget(digits_mlp):
    model, name, x, y = digits_mlp
    result = gp.compress(model, "onnxruntime", samples={name: x}, labels=y, recipe="smallest", budget="3%", measure=False)
    before, after = result.rows[0], result.rows[-1]
    assert after["packed_bytes"] * 4 < before["onnx_bytes"], result.rows
    _, held = split_samples([{name: x}])
    rows, labels = held[0][name], y[len(x) - len(held[0][name]) :]
    acc = lambda m: float((_ort_logits(m, name, rows).argmax(1) == labels).mean())  # noqa: E731
    assert acc(result.model) >= acc(model) - 0.03


def test_budgets_parse_or_fail_with_one_line():
    assert parse_budget("1%") == Budget("agreement", 0.01)
    assert parse_budget("cos:0.995") == Budget("cosine", 0.995)
    assert parse_budget(0.02).allowed == pytest.approx(0.02)
    assert parse_budget("1%").describe() == "top-1 agreement drops by at most 1%"
    assert parse_budget("1%").describe(labeled=True) == "top-1 accuracy drops by at most 1 pt"
    for bad in ("abc", "150%", "cos:2"):
        with pytest.raises(GraphpressError, match="budget"):
            parse_budget(bad)


def test_without_samples_the_result_says_its_inputs_were_generated(digits_mlp):
    model, *_ = digits_mlp
    result = gp.compress(model, "onnxruntime", recipe="lossless", measure=False)
    assert any("generated" in n and "not measured on real data" in n for n in result.notes)


def test_cli_compress_for_x86_then_bench(tmp_path, capsys, digits_mlp):
    from graphpress.backends.tvm import load as load_artifact
    from graphpress.cli import main

    model, name, x, _ = digits_mlp
    src, samples = tmp_path / "mlp.onnx", tmp_path / "s.npz"
    gp.save(model, src)
    np.savez(samples, **{name: x})
    art, onnx_out, rep = tmp_path / "mlp.x86", tmp_path / "mlp.int8.onnx", tmp_path / "r.json"
    argv = ["compress", str(src), "--target", "x86", "--samples", str(samples), "--recipe", "int8", "-o", str(art), "--onnx", str(onnx_out), "--report", str(rep)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "vs ORT fp32" in out and "held-out" in out and "step quantize" in out
    report = json.loads(rep.read_text())
    assert {"passes", "before", "after", "verification"} <= set(report) and report["verification"]["passed"]
    variants = [r["variant"] for r in report["rows"]]
    assert variants[0] == "original, ONNX Runtime fp32" and variants[-1] == "graphpress, compiled for x86"
    assert all("median_ms" in r for r in report["rows"] if "note" not in r)
    # the artifact computes what its ONNX computes, on ONNX Runtime, within one quantization step
    held = split_samples([{name: x}])[1][0][name]
    compiled = load_artifact(art)
    got = compiled(held)[0]
    want = _ort_logits(gp.load(onnx_out), name, held)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    assert main(["bench", str(src), "--artifact", str(art), "--inputs", str(samples), "--json", "--seconds", "1"]) == 0
    rows = {r["engine"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert set(rows) == {"ONNX Runtime fp32", "ONNX Runtime int8 (its quantizer, best settings)", "graphpress artifact (x86)"}
    for r in rows.values():
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["speedup"] == pytest.approx(rows["ONNX Runtime fp32"]["median_ms"] / r["median_ms"], rel=1e-2)
    assert main(["bench", str(art), "--json", "--seconds", "0.5"]) == 0  # an artifact alone, on inputs of its shapes
    assert [r["engine"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["graphpress artifact (x86)"]


def test_cli_compress_refuses_a_bad_budget_with_one_line(tmp_path, capsys, digits_mlp):
    from graphpress.cli import main

    model, *_ = digits_mlp
    src = tmp_path / "mlp.onnx"
    gp.save(model, src)
    assert main(["compress", str(src), "--budget", "lots", "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget 'lots'" in err[0] and not (tmp_path / "o.onnx").exists()
    assert main(["bench"]) == 2
    assert "give a model" in capsys.readouterr().err


_METRIC = '''
import numpy as np
import onnxruntime as ort
from graphpress.ir.io import to_proto
from graphpress.models.cnn import digits_data

_DATA = digits_data()


def accuracy(model):
    """Top-1 accuracy on the digits test split: the user's own measure, run by the user's code."""
    session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: _DATA.x_test})[0]
    return float((logits.argmax(1) == _DATA.y_test).mean())


def broken(model):
    raise ValueError("no labels here")
'''


def test_cli_compress_with_the_users_metric(tmp_path, capsys, monkeypatch, digits_mlp):
    from graphpress.cli import main

    model, name, x, y = digits_mlp
    src, samples = tmp_path / "mlp.onnx", tmp_path / "s.npz"
    gp.save(model, src)
    np.savez(samples, **{name: x})
    (tmp_path / "usermetric.py").write_text(_METRIC)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.onnx"
    assert main(["compress", str(src), "--samples", str(samples), "--metric", "usermetric:accuracy", "--budget", "2%", "--no-measure", "-o", str(out)]) == 0
    assert "the metric drops by at most 0.02" in capsys.readouterr().out
    acc = lambda m: float((_ort_logits(m, name, x).argmax(1) == y).mean())  # noqa: E731 - the same measure, computed here
    assert acc(gp.load(out)) >= acc(model) - 0.02
    for metric, says in (("usermetric:broken", "raised ValueError: no labels here"), ("nosuchmodule:f", "no module 'nosuchmodule'"),
                         ("usermetric", "give MODULE:FUNCTION"), ("usermetric:nothing", "has no function 'nothing'")):  # fmt: skip
        assert main(["compress", str(src), "--metric", metric, "--no-measure", "-o", str(tmp_path / "bad.onnx")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "--metric" in err[0], err
        assert not (tmp_path / "bad.onnx").exists()


def test_cli_bench_of_a_quantized_model_times_it_as_ort_int8_beside_its_float_counterpart(tmp_path, capsys, digits_mlp):
    """A model that comes quantized (graphpress QDQ, or ONNX Runtime's QOperator form) is ONNX
    Runtime's int8 row as given: quantizing it again made a graph ONNX Runtime refused, and
    `bench` exited 2 calling the user's model malformed. Its fp32 row runs its float
    counterpart, which computes what the QDQ model computes up to the activations' rounding."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from graphpress.cli import main
    from graphpress.compression import QUANTIZED_AS_GIVEN, _fp32_counterpart
    from graphpress.passes import PassManager, build_passes
    from graphpress.passes.context import PassContext
    from graphpress.passes.quantization import is_quantized

    model, name, x, _ = digits_mlp
    q = gp.load(to_proto(model))
    PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=[{name: x[:64]}])).run(q)
    assert is_quantized(q) and not is_quantized(model)
    src, samples = tmp_path / "mlp.q.onnx", tmp_path / "s.npz"
    gp.save(q, src)
    np.savez(samples, **{name: x[:8]})
    before = src.read_bytes()
    assert main(["bench", str(src), "--inputs", str(samples), "--json", "--seconds", "0.5"]) == 0, capsys.readouterr().err
    rows = [r["engine"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert rows == ["ONNX Runtime fp32", QUANTIZED_AS_GIVEN] and src.read_bytes() == before
    fp32 = _fp32_counterpart(q)
    layers = [n for n in fp32.graph if n.op_type in ("MatMul", "Gemm")] if fp32 is not None else []
    assert len(layers) == 2 and all(n.inputs[1].const_value is not None and n.inputs[1].const_value.dtype == ir.DataType.FLOAT for n in layers)
    assert (_ort_logits(fp32, name, x).argmax(1) == _ort_logits(q, name, x).argmax(1)).mean() >= 0.97

    class Reader:
        def __init__(self):
            self.rows = iter([{name: x[i : i + 1]} for i in range(16)])

        def get_next(self):
            return next(self.rows, None)

    plain, qop = tmp_path / "mlp.onnx", tmp_path / "mlp.qop.onnx"
    gp.save(model, plain)
    quantize_static(str(plain), str(qop), Reader(), quant_format=QuantFormat.QOperator)
    assert main(["bench", str(qop), "--inputs", str(samples), "--json", "--seconds", "0.5"]) == 0, capsys.readouterr().err
    assert [r["engine"] for r in json.loads(capsys.readouterr().out)["rows"]] == [QUANTIZED_AS_GIVEN]  # no float form of QLinear ops
    # quantize refuses a quantized model in one line (it ended as "a bug in that pass")
    assert main(["optimize", str(src), "-o", str(tmp_path / "twice.onnx"), "--passes", "quantize"]) == 2
    err = capsys.readouterr().err
    assert "quantized already (" in err and "DequantizeLinear" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "twice.onnx").exists()
    # compress of it: its own row is ONNX Runtime's int8, the peer's quantizer is not run on it
    from graphpress.compression import ORIGINAL_QUANTIZED

    result = gp.compress(q, "onnxruntime", samples={name: x[:64]}, recipe="int8", budget="2%", measure=False)
    rows = {r["variant"]: r for r in result.rows}
    assert ORIGINAL_QUANTIZED in rows and "quantized already" in rows["ONNX Runtime int8 (its quantizer, best settings)"]["note"]
    assert any("quantized already" in str(c) for c in result.steps[-1]["tried"]), result.steps
    assert result.steps[-1]["skipped"] == "no candidate could run (each one's reason below)"


def test_cli_bench_times_torch_eager_beside_the_peers(tmp_path, capsys, monkeypatch):
    from graphpress.cli import main

    (tmp_path / "usermodel.py").write_text(
        "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermodel

    module = usermodel.make().eval()
    gp.save(gp.load(module, torch.randn(4, 64)), tmp_path / "m.onnx")
    assert main(["bench", str(tmp_path / "m.onnx"), "--torch", "usermodel:make", "--no-int8", "--seconds", "0.5", "--json"]) == 0
    rows = [r["engine"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert rows == ["ONNX Runtime fp32", "torch eager"]
    assert main(["bench", str(tmp_path / "m.onnx"), "--torch", "usermodel:nope", "--seconds", "0.5"]) == 2
    assert "has no function 'nope'" in capsys.readouterr().err


@pytest.mark.skipif("avx2" not in __import__("graphpress.backends.tvm.targets", fromlist=["x"]).host_x86_paths(), reason="the host does not run AVX2")
def test_compress_for_an_avx2_target_quantizes_for_it(digits_mlp):
    """``x86:avx2`` has no int8 dot product: the quantizer makes 7-bit weights (as for ONNX Runtime
    on such a CPU) and the artifact's layers run on the vpmaddubsw kernels, which are exact on them."""
    model, name, x, _ = digits_mlp
    result = gp.compress(model, "x86:avx2", samples={name: x}, recipe="int8", budget="2%", measure=False)
    steps = {s["stage"]: s for s in result.steps}
    assert steps["quantize"]["chosen"], steps["quantize"]
    weights = [n.inputs[0].const_value.numpy() for n in result.model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None]
    assert weights and all(w.dtype != np.int8 or (w.min() >= -64 and w.max() <= 64) for w in weights)
    i8 = result.compiled.meta["build"]["int8"]
    assert i8["isa"] == "avx2"
    assert all(n["kernel"] in ("", "AVX2 u8s8 kernel", "AVX2 u8s8 quads kernel") for n in i8["nodes"]), i8["nodes"]
    assert _held_out_agreement(model, result.model, name, x) >= 0.98


def test_cli_compress_for_onnxruntime_stores_the_settings_it_measured(tmp_path, capsys, digits_mlp):
    """`--target onnxruntime` times ONNX Runtime's session settings on the result and stores the
    fastest in the model; `graphpress.ort_session` opens the file with them, from any directory,
    and computes what a default session computes."""
    import os
    import subprocess
    import sys

    from graphpress.cli import main
    from graphpress.ir.timing import ORT_SETTINGS_KEY, onnxruntime_settings

    model, name, x, _ = digits_mlp
    src, samples, out, rep = tmp_path / "mlp.onnx", tmp_path / "s.npz", tmp_path / "mlp.ort.onnx", tmp_path / "r.json"
    gp.save(model, src)
    np.savez(samples, **{name: x})
    argv = ["compress", str(src), "--samples", str(samples), "--recipe", "lossless", "-o", str(out), "--report", str(rep)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "ONNX Runtime settings (fastest of" in capsys.readouterr().out
    report = json.loads(rep.read_text())["onnxruntime_settings"]
    candidates = report["candidates"]
    assert len(candidates) == len(onnxruntime_settings(len(os.sched_getaffinity(0)))) and all(c["median_ms"] > 0 for c in candidates)
    chosen = report["chosen"]
    assert chosen["measured"]["median_ms"] == min(c["median_ms"] for c in candidates)
    import onnx

    stored = {m.key: m.value for m in onnx.load(str(out)).metadata_props}
    assert json.loads(stored[ORT_SETTINGS_KEY]) == chosen
    session = gp.ort_session(out)
    default = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {name: x})[0], default.run(None, {name: x})[0], rtol=1e-5, atol=1e-5)
    assert gp.ort_session(out, threads=1).get_session_options().intra_op_num_threads == 1
    # ONNX Runtime told to read its own config from the model ignores the key; any directory loads it
    code = f"import onnxruntime as o; s = o.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider']); print(len(s.get_inputs()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, env={**os.environ, "ORT_LOAD_CONFIG_FROM_MODEL": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-500:]
    # a bad file gets one line
    with pytest.raises(GraphpressError, match="no such file"):
        gp.ort_session(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(GraphpressError, match="junk.onnx"):
        gp.ort_session(tmp_path / "junk.onnx")
    broken = onnx.load(str(out))
    next(m for m in broken.metadata_props if m.key == ORT_SETTINGS_KEY).value = '{"graph_optimization_level": "ORT_FASTEST"}'
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(GraphpressError, match="not valid settings"):
        gp.ort_session(tmp_path / "broken.onnx")
