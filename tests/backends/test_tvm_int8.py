"""The int8 building block: a packed u8 x s8 -> s32 dense, tuned with the fixed VNNI intrinsic,
is exact and really uses 512-bit vpdpbusd (tensorization failures are only warnings in TVM)."""

from __future__ import annotations

import numpy as np
import pytest

from graphpress.backends.tvm.int8 import pack_dense_weight, run_int8_dense, tune_int8_dense
from graphpress.backends.tvm.targets import detect_x86_mcpu

pytestmark = pytest.mark.skipif("avx512_vnni" not in open("/proc/cpuinfo").read(), reason="needs AVX-512 VNNI")


def test_pack_dense_weight_layout():
    w = np.arange(32 * 8, dtype=np.int8).reshape(32, 8)
    p = pack_dense_weight(w)
    assert p.shape == (2, 2, 16, 4)
    assert p[1, 1, 3, 2] == w[16 + 3, 4 + 2]
    with pytest.raises(ValueError, match="multiple of 16"):
        pack_dense_weight(np.zeros((10, 8), np.int8))


def test_vnni_dense_is_exact_and_tensorized(tmp_path):
    m, n, k = 32, 64, 128
    result = tune_int8_dense(m, n, k, trials=8, work_dir=tmp_path, target={"kind": "llvm", "mcpu": detect_x86_mcpu(), "num-cores": 2})
    assert result["zmm_vpdpbusd"] > 0
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (n, k), dtype=np.int8)
    got, _ = run_int8_dense(result["kernel"], a, pack_dense_weight(b))
    np.testing.assert_array_equal(got, a.astype(np.int32) @ b.astype(np.int32).T)
