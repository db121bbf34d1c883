"""A fixed-seed sample of the differential fuzzer (``make fuzz`` runs >= 500 graphs): NNSmith
graphs through every pass family and the x86 compile, against ONNX Runtime on each generated
graph, with 0 crashes and 0 wrong results. The sample includes the seeds whose graphs found
bugs (each also has a hand-made regression test beside the code it fixed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ_PYTHON = ROOT / ".fuzz-venv" / "bin" / "python"
sys.path.insert(0, str(ROOT / "fuzz"))

import differential  # noqa: E402

#: 0-11: a plain sample; the rest found bugs:
#: 13 float64 graph crashed the ORT quantizer; 14, 28: onnxscript's Expand rule raised a rank;
#: 1, 3, 8: a 0-d input became 1-d in the compiled model's runner; 2, 22, 31: float64 outputs
#: of float16/float32 math judged with float64's tolerance; 20, 29: float16 Q/DQ ORT rejects;
#: 76: two outputs of one value, one lost by identity elimination; 81: x/0 = inf in both, still
#: "different"; 44, 158: float16 constants folded off by an ulp, then Ceil; 490: Sin of ~1500
#: amplifies a reordered sum (attributed, accepted); 492: MatMul+Add -> Gemm with a bias Gemm
#: cannot take; 674: dynamic MatMulInteger ORT refuses; 731: Conv of a constant in the quantizer
SEEDS = [*range(12), 13, 14, 20, 22, 28, 29, 31, 44, 76, 81, 158, 490, 492, 674, 731]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    if not FUZZ_PYTHON.exists():
        pytest.skip("no .fuzz-venv: run 'make fuzz-env' (make test does)")
    out = tmp_path_factory.mktemp("fuzz")
    for seed in SEEDS:
        proc = subprocess.run([str(FUZZ_PYTHON), str(ROOT / "fuzz" / "generate.py"), "--out", str(out / "g"), "--count", "1", "--seed", str(seed)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "g"


def test_generation_is_deterministic(graphs, tmp_path):
    proc = subprocess.run([str(FUZZ_PYTHON), str(ROOT / "fuzz" / "generate.py"), "--out", str(tmp_path), "--count", "2", "--seed", "13"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("g000013.onnx", "g000014.onnx", "g000013.npz"):
        assert (tmp_path / name).read_bytes() == (graphs / name).read_bytes()


def test_every_family_on_the_sample_has_no_crash_and_no_wrong_result(graphs):
    results = differential.run_all(sorted(graphs.glob("g*.onnx")), list(differential.FAMILIES), jobs=2)
    table = differential.tally(results, list(differential.FAMILIES))
    failures = [line for row in table.values() for line in row["failures"]]
    assert not failures, "\n".join(failures)
    checked = [r for r in results if "skipped" not in r]
    assert len(checked) == len(SEEDS)
    # most graphs go through: a refusal is a clear line, but it must stay the exception
    for family, row in table.items():
        assert row["ok"] >= 0.75 * row["graphs"], (family, row["refusal_reasons"])


def test_the_harness_catches_a_wrong_output(graphs, tmp_path, monkeypatch):
    """The differential check is not a rubber stamp: a pass that changes a weight is caught."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "plugins"))
    import numpy as np

    graph = graphs / "g000000.onnx"
    with np.load(graph.with_suffix(".npz")) as data:
        feeds = {k: data[k] for k in data.files}
    ref = differential._run(graph, feeds)
    ok = differential._check_optimize(graph, graph.with_suffix(".npz"), feeds, ref, "dce", True, tmp_path)
    assert ok["outcome"] == "ok"
    # a reference from another graph's outputs: every output must now be "wrong"
    bad_ref = {k: v + 1 if v.dtype.kind == "f" else v + 1 for k, v in ref.items()}
    (tmp_path / "out.onnx").unlink()
    (tmp_path / "report.json").unlink()
    wrong = differential._check_optimize(graph, graph.with_suffix(".npz"), feeds, bad_ref, "dce", True, tmp_path)
    assert wrong["outcome"] == "wrong"
