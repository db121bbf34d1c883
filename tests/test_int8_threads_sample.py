"""A sample of ``fuzz/int8_threads.py`` (the int8 kernels on one TVM thread and on two, against
ONNX Runtime on the same quantized model): its verdict on outputs made to disagree, and one
transformer layer quantized per token with SmoothQuant, built on the AVX2 path as quantized for
any target (8-bit weights, the exact int16 kernel) and for AVX2 (7-bit weights, ``vpmaddubsw``),
run on one and two threads. The test workers run TVM on one thread each, so this is where a
parallel loop's tiles meet in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import int8_threads  # noqa: E402


def _outputs():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 7, 17)).astype(np.float32)
    one = {"m | onnxruntime": ref, "m | avx2": ref.copy(), "m for avx2 | onnxruntime": ref, "m for avx2 | avx2": ref + np.float32(0.01)}
    two = {k: v.copy() for k, v in one.items()}
    return one, two


def test_the_tally_passes_agreeing_builds_and_names_the_farthest():
    one, two = _outputs()
    result = int8_threads.tally(one, two, max_steps=5.0)
    assert result["builds"] == 2 and result["failed"] == [] and result["same_as_onnxruntime"] == 1
    assert result["farthest"][1] == "m for avx2 | avx2" and 0 < result["farthest"][0] < 1


def test_the_tally_fails_a_bit_that_moves_between_thread_counts():
    one, two = _outputs()
    two["m | avx2"][1, 2, 3] = np.nextafter(two["m | avx2"][1, 2, 3], np.float32(np.inf))
    (line,) = int8_threads.tally(one, two, max_steps=5.0)["failed"]
    assert line.startswith("m | avx2: one and two threads differ")
    del two["m | avx2"]
    assert "no output on two" in int8_threads.tally(one, two, max_steps=5.0)["failed"][0]


def test_the_tally_fails_an_output_far_from_onnxruntime():
    one, two = _outputs()
    for d in (one, two):
        d["m | avx2"] = d["m | avx2"].copy()
        d["m | avx2"][0, 0, 0] += np.float32(np.ptp(one["m | onnxruntime"]) * 0.06)  # 6 % of the range
    (line,) = int8_threads.tally(one, two, max_steps=5.0)["failed"]
    assert line.startswith("m | avx2: 6.00 % of the output's range")
    assert int8_threads.tally(one, two, max_steps=7.0)["failed"] == []


@pytest.mark.slow
def test_a_per_token_transformer_layer_agrees_on_one_and_two_threads():
    from graphpress.backends.tvm.targets import host_x86_paths

    if "avx2" not in host_x86_paths():
        pytest.skip("this host does not run the AVX2 path")
    proc = subprocess.run([sys.executable, str(ROOT / "fuzz" / "int8_threads.py"), "--paths", "avx2", "--only", "transformer mlp rows 33 d64 token smooth"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 builds on avx2: 2 agree" in proc.stdout, proc.stdout[-3000:]
