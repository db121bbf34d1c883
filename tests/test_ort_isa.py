"""benchmarks/_ort_isa.py: ONNX Runtime made to pick its kernels as on a CPU without AVX-512 (the
peer the AVX2 rows of the benchmarks are measured against). The copy must load, compute what
ONNX Runtime computes, and run no AVX-512 instruction (checked with perf's clock samples where
this machine lets perf sample)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

_SPEC = importlib.util.spec_from_file_location("_ort_isa", Path(__file__).resolve().parents[1] / "benchmarks" / "_ort_isa.py")
ort_isa = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ort_isa)


def test_each_branch_becomes_unconditional_and_another_build_is_refused():
    """A short ``je`` that skips the kernels becomes a ``jmp``; the near ``jne`` that skips AMX's
    becomes ``nop; jmp`` to the same target (the same end, so the same displacement). Every
    emulation removes AMX: without it ORT ran its AMX int8 kernels under ``avx2`` on a
    Sapphire Rapids."""
    (avx512, avx512_bytes, avx512_at), (amx, amx_bytes, amx_at) = ort_isa.EMULATIONS["avx2_vnni"]
    assert amx == ort_isa.EMULATIONS["avx2"][-1][0] == ort_isa.EMULATIONS["avx512_vnni"][0][0] == "the AMX int8 kernels"
    jne = amx_bytes + bytes.fromhex("1234ffff")  # jne rel32 (its displacement after the pattern)
    data = bytearray(b"\x90" * 64 + avx512_bytes + b"\x90" * 8 + jne + b"\x90" * 8)
    at_avx512, at_amx = 64 + avx512_at, 64 + len(avx512_bytes) + 8 + amx_at
    patched = bytearray(data)
    assert ort_isa.patch_extension(patched, "avx2_vnni") == [(avx512, at_avx512), (amx, at_amx)]
    assert patched[at_avx512] == 0xEB and patched[at_amx : at_amx + 6] == bytes.fromhex("90e91234ffff")
    changed = [i for i in range(len(data)) if patched[i] != data[i]]
    assert changed == [at_avx512, at_amx, at_amx + 1]
    only_amx = bytearray(data)
    assert ort_isa.patch_extension(only_amx, "avx512_vnni") == [(amx, at_amx)] and only_amx[at_avx512] == data[at_avx512]
    with pytest.raises(RuntimeError, match="not found"):
        ort_isa.patch_extension(bytearray(data), "avx2")  # the AVX-VNNI branch is missing
    with pytest.raises(RuntimeError, match="more than once"):
        ort_isa.patch_extension(bytearray(data + data), "avx2_vnni")
    with pytest.raises(ValueError, match="--ort-isa 'avx1'"):
        ort_isa.package("avx1")


def _conv_model(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 56, 56])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return {"x": rng.standard_normal((1, 64, 56, 56)).astype(np.float32)}


_RUN = textwrap.dedent("""
    import sys, time, numpy as np, onnxruntime as ort
    s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    x = np.load(sys.argv[2])
    end = time.perf_counter() + float(sys.argv[4])
    while True:
        y = s.run(None, {"x": x})[0]
        if time.perf_counter() > end:
            break
    np.save(sys.argv[3], y)
    print(ort.__file__)
""")


def _run(tmp_path: Path, root: Path | None, seconds: float, perf: bool):
    script, out = tmp_path / "run.py", tmp_path / f"y-{root is not None}.npy"
    script.write_text(_RUN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root or ""), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, str(script), str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), str(out), str(seconds)]
    shares = None
    if perf:
        library = next(((root / "onnxruntime" if root else ort_isa._installed()) / "capi").glob("onnxruntime_pybind11_state*.so"))
        shares = ort_isa.sampled_instructions(command, library, env)
    if shares is None:
        printed = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        assert str(root or ort_isa._installed().parent) in printed
    return np.load(out), shares


def test_the_copy_runs_onnxruntime_without_avx512_and_computes_the_same(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv("GRAPHPRESS_ORT_ISA_CACHE", str(tmp_path / "cache"))
    installed = next((ort_isa._installed() / "capi").glob("onnxruntime_pybind11_state*.so"))
    before = installed.stat().st_mtime_ns, installed.stat().st_size
    try:
        root = ort_isa.package("avx2")
    except RuntimeError as e:  # another ONNX Runtime build: the benchmarks say the same
        pytest.skip(str(e))
    assert ort_isa.package("avx2") == root  # made once
    assert (installed.stat().st_mtime_ns, installed.stat().st_size) == before  # the installed package untouched
    assert "AVX-512 kernels never picked" in ort_isa.describe("avx2")

    feeds = _conv_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", feeds["x"])
    expected = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    avx512 = " avx512f" in flags
    y, shares = _run(tmp_path, root, 1.5, perf=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    if shares is None:
        pytest.skip("perf cannot sample on this machine: the instructions run were not checked")
    assert shares["zmm"] == 0 and shares["ymm"] > 0.2, shares
    if avx512:  # the same probe sees the AVX-512 kernels of the installed ONNX Runtime
        _, host = _run(tmp_path, None, 1.5, perf=True)
        assert host is not None and host["zmm"] > 0.2, host


def test_onnxruntime_avx2_u8s8_saturates_on_8bit_weights_where_graphpress_avx2_is_exact(tmp_path, monkeypatch):
    """What "the same work" means on an AVX2 CPU: ONNX Runtime's u8 x s8 kernel there adds each
    pair of products in int16 (``vpmaddubsw``), which saturates on 8-bit weights (its docs advise
    7-bit ones, ``reduce_range``): 64 products of 255 x 127 come out as 1,048,544 instead of
    2,072,640. graphpress's AVX2 path runs such weights on its exact int16 kernel (``vpmaddwd``)
    and computes the exact sum; on VNNI both are exact."""
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.targets import host_x86_paths
    from graphpress.ir import load

    if "avx2" not in host_x86_paths():
        pytest.skip("the host does not run AVX2 code")
    monkeypatch.setenv("GRAPHPRESS_ORT_ISA_CACHE", str(tmp_path / "cache"))
    try:
        root = ort_isa.package("avx2")
    except RuntimeError as e:  # another ONNX Runtime build
        pytest.skip(str(e))
    k, n, m = 64, 16, 4
    one, u0, s0 = numpy_helper.from_array(np.float32(1.0), "s"), numpy_helper.from_array(np.uint8(0), "zu"), numpy_helper.from_array(np.int8(0), "zs")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "zu"], ["xd"]),
         helper.make_node("DequantizeLinear", ["w", "s", "zs"], ["wd"]), helper.make_node("MatMul", ["xd", "wd"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [one, u0, s0, numpy_helper.from_array(np.full((k, n), 127, np.int8), "w")])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "m.onnx")
    x = np.full((m, k), 255, np.float32)
    np.save(tmp_path / "x.npy", x)
    exact = 255 * 127 * k
    y, _ = _run(tmp_path, root, 0.0, perf=False)
    assert float(y.max()) < 0.6 * exact  # pairs saturated at 32767
    compiled = compile_model(load(tmp_path / "m.onnx"), "x86:avx2", int8="auto", int8_guard=False, verify=False, measure=False)
    i8 = compiled.meta["build"]["int8"]
    assert [node["kernel"] for node in i8["nodes"]] == ["AVX2 kernel"]  # 8-bit weights: the int16 kernel, not vpmaddubsw
    assert i8["instructions"].get("ymm vpmaddwd") and not i8["instructions"].get("ymm vpmaddubsw"), i8["instructions"]
    assert np.array_equal(compiled(x)[0], np.full((m, n), exact, np.float32))
