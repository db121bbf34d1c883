"""A fixed sample of ONNX's backend node tests through both paths (benchmarks/conformance.py
runs all of them): no crash and no wrong result, through the passes or through the compiler."""

from __future__ import annotations

import importlib.util
import sys
import random
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("conformance", Path(__file__).resolve().parents[2] / "benchmarks" / "conformance.py")
conformance = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = conformance  # dataclasses look their module up there
_SPEC.loader.exec_module(conformance)

SAMPLE = 40


@pytest.fixture(scope="module")
def rows():
    cases = conformance.collect()
    assert len(cases) > 1000  # the generators onnx ships: a few are not a sample
    sample = sorted(random.Random(2026).sample(cases, SAMPLE), key=lambda c: c.name)
    return conformance.run_all(sample, conformance.PATHS, jobs=1)


@pytest.mark.parametrize("path", conformance.PATHS)
def test_no_node_test_crashes_or_computes_a_wrong_result(rows, path):
    bad = [f"{r['case']}: {r[path]} ({r[path + '_detail']})" for r in rows if r[path] in ("crash", "wrong")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", conformance.PATHS)
def test_refusals_name_what_was_refused(rows, path):
    for r in rows:
        if r[path] == "refused":
            detail = r[path + "_detail"]
            assert "\n" not in detail and len(detail) > 20, detail


def test_the_harness_counts_a_wrong_lowering_as_wrong():
    # the harness compares the compiled outputs themselves: against ONNX Runtime's they are ok,
    # against outputs off by one they are wrong
    (case,) = [c for c in conformance.collect("Relu") if c.name == "test_relu"]
    ref = conformance.reference(case)
    assert ref is not None
    broken = {k: v + 1.0 for k, v in ref.items()}
    assert conformance.run_compile(case, broken)[0] == "wrong"
    assert conformance.run_compile(case, ref)[0] == "ok"
    assert conformance.run_compile(case, broken, verify=False)[0] == "wrong"
