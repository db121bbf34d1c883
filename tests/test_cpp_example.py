"""examples/cpp: a compiled artifact runs from C++ with the TVM runtime alone (the wheel's headers
and libraries, no Python), and its outputs equal the Python run's bit for bit; the aarch64 build
of the same program runs an aarch64 artifact under qemu."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm import load as load_artifact
from graphpress.backends.tvm.qemu import arm_env_ready, default_arm_env, run_aarch64
from graphpress.passes import PassContext, PassManager, build_passes

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None, reason="no g++/make")


def _build(tmp: Path, target: str = "all") -> Path:
    """The example built by its own Makefile (what the README tells users to run)."""
    proc = subprocess.run(["make", "-C", str(EXAMPLE), target, f"BUILD={tmp}", f"PYTHON={sys.executable}", f"ARM_ENV={default_arm_env()}"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / ("graphpress_run" if target == "all" else "graphpress_run-aarch64")


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("cpp-build"))


def _run_cpp(cmd: list[str], artifact: Path, feeds: dict[str, np.ndarray], tmp: Path, env: dict | None = None) -> dict[str, np.ndarray]:
    """Writes the inputs as .npy in the artifact's input order, runs the program, reads its outputs."""
    meta = json.loads((artifact / "graphpress.json").read_text())
    files = []
    for i, spec in enumerate(meta["inputs"]):
        files.append(tmp / f"in{i}.npy")
        np.save(files[-1], feeds[spec["name"]])
    out = tmp / "out"
    out.mkdir()
    proc = subprocess.run([*cmd, str(artifact), str(out), *map(str, files)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""  # the runtime's load-time chatter is silenced
    got = {}
    for spec in meta["outputs"]:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec["name"])
        got[spec["name"]] = np.load(out / f"{safe}.npy")
        assert spec["name"] in proc.stdout
    return got


def _assert_bit_equal(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert list(got) == list(ref)
    for name, value in ref.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.fixture(scope="module")
def int8_cnn(digits_cnn, tmp_path_factory):
    """The digits CNN quantized static, every layer on its integer kernel (the guard off, so the
    integer code is what ships), saved as an artifact."""
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    PassManager(build_passes("cleanup,fuse")).run(model)
    context = PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(16)])
    PassManager(build_passes("quantize:mode=static"), context=context).run(model)
    compiled = compile_model(model, "x86", int8_guard=False, measure=False)
    assert compiled.meta["build"]["int8"]["lowered"] == 5
    artifact = compiled.save(tmp_path_factory.mktemp("cpp-int8") / "cnn")
    return artifact, {name: data.x_test[:1]}


def test_cpp_runs_an_int8_artifact_bit_for_bit_like_python(runner, int8_cnn, tmp_path):
    artifact, feeds = int8_cnn
    ref = load_artifact(artifact).run_named(**feeds)
    _assert_bit_equal(_run_cpp([str(runner)], artifact, feeds, tmp_path), ref)


@pytest.mark.slow
def test_cpp_runs_a_real_model_with_state_and_scalar_inputs(runner, tmp_path):
    """silero-vad (a PyPI wheel's file): three inputs, one a 0-d int64 sample rate, two outputs."""
    spec = importlib.util.spec_from_file_location("_real", Path(__file__).resolve().parents[1] / "benchmarks" / "_real.py")
    real = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = real
    spec.loader.exec_module(real)
    entry = real.BY_NAME["silero-vad-ifless"]
    model = gp.load(real.fetch(entry))
    feeds = entry.feeds()
    shapes = {n: list(a.shape) for n, a in feeds.items() if a.ndim}
    artifact = compile_model(model, "x86", input_shapes=shapes, measure=False).save(tmp_path / "vad")
    assert any(np.ndim(v) == 0 for v in feeds.values())
    ref = load_artifact(artifact).run_named(**feeds)
    _assert_bit_equal(_run_cpp([str(runner)], artifact, feeds, tmp_path), ref)


def test_cpp_bad_inputs_get_one_line_and_exit_2(runner, int8_cnn, tmp_path):
    artifact, feeds = int8_cnn
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, next(iter(feeds.values())).astype(np.float64))
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((1, 1, 4, 4), np.float32))
    (tmp_path / "out").mkdir()
    cases = [
        ([str(artifact), str(tmp_path / "out")], "input(s)"),
        ([str(artifact), str(tmp_path / "out"), str(wrong)], "wants float32"),
        ([str(artifact), str(tmp_path / "out"), str(short)], "wrong shape"),
        ([str(artifact), str(tmp_path / "out"), str(artifact / "graphpress.json")], "not a .npy file"),
        ([str(artifact), str(tmp_path / "missing"), str(short)], "not a writable directory"),
        ([str(tmp_path / "nothing"), str(tmp_path / "out"), str(short)], "cannot be read"),
    ]
    for args, words in cases:
        proc = subprocess.run([str(runner), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.skipif(not arm_env_ready() or shutil.which("aarch64-linux-gnu-g++") is None, reason="no qemu-aarch64 / arm env (make arm-env)")
def test_cpp_aarch64_build_runs_under_qemu_like_python(tmp_path, digits_cnn):
    """The example cross-built for aarch64 against the aarch64 wheel, run under qemu on an aarch64
    artifact with integer (sdot) kernels: equal to the Python runner under qemu, bit for bit."""
    binary = _build(tmp_path / "build", "aarch64")
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    context = PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(16)])
    PassManager(build_passes("cleanup,fuse,quantize:mode=static"), context=context).run(model)
    compiled = compile_model(model, "aarch64", int8="on")
    assert compiled.meta["build"]["int8"]["lowered"] > 0
    artifact = compiled.save(tmp_path / "cnn.arm")
    feeds = {name: data.x_test[:1]}
    ref = run_aarch64(artifact, feeds)
    env = default_arm_env()
    qemu = ["qemu-aarch64", "-L", str(env / "sysroot"), str(binary)]
    got = _run_cpp(qemu, artifact, feeds, tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TVM_NUM_THREADS": "2"})
    _assert_bit_equal(got, ref)
