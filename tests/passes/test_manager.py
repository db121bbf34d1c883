import json

import numpy as np
import pytest
from onnx import numpy_helper

import graphpress as gp
from graphpress.errors import InvariantError, NumericMismatchError
from graphpress.ir import numeric
from graphpress.passes import (
    DumpInstrument,
    InvariantInstrument,
    NumericInstrument,
    Pass,
    PassManager,
    PassResult,
    build_passes,
)
from graphpress.passes.report import build_report, write_json_atomic


def test_records_every_pass_with_timing_and_stats(mlp_proto):
    model = gp.load(mlp_proto)
    result = PassManager(build_passes("eliminate_identity,cse,topo_sort")).run(model)
    assert [r.name for r in result.records] == ["eliminate_identity", "cse", "topo_sort"]
    ident, cse, sort = result.records
    assert ident.modified and ident.stats["nodes_removed"] == 1
    assert not cse.modified and cse.stats == {"nodes_removed": 0}
    assert not sort.modified
    assert all(r.seconds > 0 for r in result.records)
    assert result.modified


def test_numeric_instrument_catches_wrong_pass_and_names_it(mlp_proto):
    import scale_weight_pass  # tests/plugins

    model = gp.load(mlp_proto)
    inst = NumericInstrument(numeric.make_inputs(model))
    with pytest.raises(NumericMismatchError) as info:
        PassManager([scale_weight_pass.ScaleWeight()], [inst]).run(model)
    msg = str(info.value)
    assert "pass 'test_scale_weight'" in msg and "'exact' tolerance" in msg
    assert "first diverging node 'mm1' (MatMul)" in msg


def _mlp_numpy(proto, x):
    """The MLP fixture's math, written out: relu(x @ W1 + b1) @ W2 (the Identity changes nothing)."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    return np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"]


def test_numeric_instrument_passes_and_reports_final(mlp_proto):
    model = gp.load(mlp_proto)
    feeds = numeric.make_inputs(model)
    inst = NumericInstrument(feeds, "generated")
    result = PassManager(build_passes("cleanup"), [inst]).run(model)
    # what cleanup left computes the MLP (checked without the instrument) ...
    assert [n.op_type for n in model.graph] == ["MatMul", "Add", "Relu", "MatMul"]
    np.testing.assert_allclose(numeric.run(model, feeds)["y"], _mlp_numpy(mlp_proto, feeds["x"]), rtol=1e-5, atol=1e-5)
    # ... and the instrument reports the difference there is: removing an Identity changes no bit
    verification = result.records[0].verification
    assert verification["family"] == "cleanup" and verification["max_abs_diff"] == 0.0 and verification["cosine"] == pytest.approx(1.0)
    assert inst.final.family == "cleanup" and inst.final.max_abs_diff == 0.0 and [o.name for o in inst.final.outputs] == ["y"]


def test_invariant_instrument_names_the_pass(mlp_proto):
    import break_ir_pass

    model = gp.load(mlp_proto)
    with pytest.raises(InvariantError, match="after pass 'test_break_ir'.*relu1"):
        PassManager([break_ir_pass.BreakIR()], [InvariantInstrument()]).run(model)


class CountDown(Pass):
    """Modifies the model on its first ``n`` calls (to test fixpoint bounds)."""

    name = "test_countdown"

    def __init__(self, n):
        super().__init__()
        self.n = n

    def call(self, model):
        self.n -= 1
        return PassResult(model, self.n >= 0, {"left": max(self.n, 0)})


def test_fixpoint_stops_when_nothing_changes(mlp_proto):
    result = PassManager([CountDown(2)], fixpoint=True, max_iterations=10).run(gp.load(mlp_proto))
    assert result.iterations == 3 and result.fixpoint_reached is True
    assert [r.modified for r in result.records] == [True, True, False]


def test_fixpoint_bound_is_reported_not_silent(mlp_proto):
    result = PassManager([CountDown(50)], fixpoint=True, max_iterations=4).run(gp.load(mlp_proto))
    assert result.iterations == 4 and result.fixpoint_reached is False


def test_dump_instrument_writes_each_stage(tmp_path, mlp_proto):
    PassManager(build_passes("eliminate_identity,dce"), [DumpInstrument(tmp_path / "dump")]).run(gp.load(mlp_proto))
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == [
        "00_input.onnx",
        "01_eliminate_identity.onnx",
        "02_dce.onnx",
    ]
    assert len(list(gp.load(tmp_path / "dump" / "01_eliminate_identity.onnx").graph)) == 4


def test_report_json_contract(tmp_path, mlp_proto):
    model = gp.load(mlp_proto)
    before = gp.summarize(model)
    inst = NumericInstrument(numeric.make_inputs(model))
    result = PassManager(build_passes("cleanup"), [inst]).run(model)
    report = build_report(result, before, gp.summarize(model), inst.final, spec="cleanup")
    write_json_atomic(report, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["passes"][0]) >= {"name", "seconds", "modified", "stats"}
    assert set(data["before"]) == set(data["after"]) == {"params", "bytes", "macs", "nodes"}
    assert data["before"]["nodes"] == 5 and data["after"]["nodes"] == 4
    assert {"max_abs_diff", "cosine"} <= set(data["verification"])


def test_fixpoint_skips_passes_on_an_unchanged_model(mlp_proto):
    result = PassManager([CountDown(1), CountDown(0)], fixpoint=True).run(gp.load(mlp_proto))
    assert [(r.iteration, r.modified) for r in result.records] == [(1, True), (1, False), (2, False), (2, False)]
    assert result.records[-1].stats == {"skipped": "unchanged since last run"}
    assert "skipped" not in result.records[2].stats, "a pass that changed the model last time runs again"


def test_every_pass_of_a_run_gets_the_context_and_target_facts_decide_reduce_range(mlp_proto):
    """quantize takes its calibration samples and the target from the context: 7-bit weights
    only for a target without an int8 dot product, whatever machine runs the pass."""
    from graphpress.passes import PassContext, TargetFacts

    samples = [numeric.make_inputs(gp.load(mlp_proto), seed=s) for s in range(4)]
    stats = {}
    for facts in (None, TargetFacts("x86", True), TargetFacts("x86", False)):
        passes = build_passes("cleanup,quantize")
        result = PassManager(passes, context=PassContext(samples=samples, target=facts)).run(gp.load(mlp_proto))
        assert all(p.context.target is facts and len(p.context.samples) == 4 for p in passes)
        stats[None if facts is None else facts.int8_dot_product] = result.records[1].stats
    assert stats[None]["reduce_range"] is False and stats[True]["reduce_range"] is False and stats[False]["reduce_range"] is True
    assert all(s["calibration"] == "given" for s in stats.values())


def test_a_pass_result_may_name_the_family_it_is_judged_by(mlp_proto):
    """dedup's layout merges are judged as cleanup (a computed weight may be summed in another
    order), identical merges as exact; the result says which, the pass class is not changed."""
    from graphpress.passes.dedup import Dedup

    model = gp.load(mlp_proto)
    result = Dedup()(model)
    assert result.family == "exact" and Dedup.family == "exact"
