"""Structured pruning: every coverage model at 50% becomes a valid, smaller graph that keeps its
output shapes and matches its zero-masked reference (fp32 atol 1e-5 / rtol 1e-4); each kind of
dependency is checked on a graph built to need it; mask modes keep shapes and hit their sparsity."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.cli import main
from graphpress.errors import NumericMismatchError
from graphpress.ir import numeric
from graphpress.models import TinyDenseNet, TinyUNet, mobilenet_v2, resnet18, resnet50, vgg11
from graphpress.passes import InvariantInstrument, NumericInstrument, PassManager, build_passes
from graphpress.passes.pruning import apply_plan, masked_reference, plan_pruning
from graphpress.passes.pruning.sparsity import nm_mask
from tests.conftest import make_model, tensor

ATOL, RTOL = 1e-5, 1e-4
F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def prune_and_check(model, feeds=None, **options):
    """Plan, build the masked reference, apply; check validity, shapes and equality. Returns (plan, layers)."""
    feeds = feeds or numeric.make_inputs(model, seed=0)
    shapes = {k: v.shape for k, v in numeric.run(model, feeds).items()}
    params_before = sum(v.const_value.size for v in model.graph.initializers.values())
    plan = plan_pruning(model, **options)
    reference = masked_reference(model, plan)
    layers = apply_plan(model, plan)
    gp.verify(model)
    got, want = numeric.run(model, feeds), numeric.run(reference, feeds)
    assert {k: v.shape for k, v in got.items()} == shapes
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=RTOL)
    if plan.pruned:
        assert sum(v.const_value.size for v in model.graph.initializers.values()) < params_before
    return plan, layers


COVERAGE = {
    "resnet18": (lambda: resnet18(num_classes=10), 64),
    "resnet50": (lambda: resnet50(num_classes=10), 64),
    "mobilenet_v2": (lambda: mobilenet_v2(num_classes=10), 64),
    "vgg11": (lambda: vgg11(), 32),
    "densenet": (lambda: TinyDenseNet(), 32),
    "unet": (lambda: TinyUNet(), 32),
}


def _cleaned_with_module(factory, size):
    torch.manual_seed(0)
    module = factory().eval()
    model = gp.load(module, torch.randn(1, 3, size, size))
    PassManager(build_passes("cleanup")).run(model)
    return module, model


def _cleaned(factory, size):
    return _cleaned_with_module(factory, size)[1]


@pytest.mark.parametrize("name", list(COVERAGE))
def test_coverage_models_prune_half_and_match_masked_reference(name):
    model = _cleaned(*COVERAGE[name])
    plan, layers = prune_and_check(model, ratio=0.5)
    pruned = [g for g in plan.groups if g["pruned"]]
    refused = [g for g in plan.groups if "refused" in g]
    assert pruned and all(g["kept"] + g["pruned"] == g["channels"] for g in plan.groups)
    assert all("output layers are protected" in g["refused"] for g in refused), refused  # only the classifier
    assert any(v["r_p"] >= 0.5 for v in layers.values())


def test_residual_groups_prune_all_branches_identically():
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    plan, _ = prune_and_check(model, ratio=0.5)
    stage1 = next(g for g in plan.groups if "layer1.0.conv2" in g["sources"])
    # the stem conv and every block output of stage 1 share one channel space
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stage1["sources"])
    inits = model.graph.initializers
    kept = stage1["kept"]
    assert inits["conv1.weight"].const_value.shape[0] == kept
    assert inits["layer1.0.conv2.weight"].const_value.shape[0] == kept
    assert inits["layer1.1.conv1.weight"].const_value.shape[1] == kept
    assert inits["bn1.weight"].const_value.shape[0] == kept


def test_depthwise_conv_follows_its_input_and_updates_group():
    model = _cleaned(lambda: mobilenet_v2(num_classes=10), 32)
    prune_and_check(model, ratio=0.5)
    for node in model.graph:
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1:
            assert node.attributes.get_int("group") == node.inputs[1].const_value.shape[0]


@pytest.fixture(scope="module")
def minilm_model():
    from graphpress.models.minilm import load_minilm, tokenize

    toks = tokenize(["structured pruning of a sentence transformer"], seq_len=32)
    model = gp.load(load_minilm().eval(), tuple(toks.values()))
    PassManager(build_passes("cleanup")).run(model)
    feeds = {i.name: v.numpy() for i, v in zip(model.graph.inputs, toks.values())}
    return model, feeds


def test_minilm_heads_and_ffn_neurons(minilm_model):
    model, feeds = minilm_model
    plan, layers = prune_and_check(model, feeds, ratio=0.5)
    q, o = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense"
    # whole heads: 6 of 12 heads of 32 dims kept in Q/K/V columns and in the output projection's rows
    head_group = next(g for g in plan.groups if q in g["sources"])
    assert head_group["channels"] == 12 and head_group["kept"] == 6
    assert {q, q.replace("query", "key"), q.replace("query", "value")} <= set(head_group["sources"])
    assert layers[q]["params_after"] == 384 * 192
    assert layers[o]["params_after"] == 192 * 384
    reshapes = [n.inputs[1].const_value.numpy().tolist() for n in model.graph if n.op_type == "Reshape" and n.inputs[1].const_value is not None]
    assert reshapes and not [r for r in reshapes if 12 in r or 384 * 4 in r]  # no head count or old width left
    ffn = next(g for g in plan.groups if "bert.encoder.layer.0.intermediate.dense" in g["sources"])
    assert ffn["channels"] == 1536 and ffn["kept"] == 768
    # the residual stream feeds LayerNorm: refused, with the reason
    assert any("layer_norm" in g.get("refused", "") or "LayerNormalization" in g.get("refused", "") for g in plan.groups)


def _plan_of(nodes, inputs, inits, outputs=("y",)):
    model = gp.load(make_model(nodes, inputs, [_vi(o, None) for o in outputs], inits))
    return model, plan_pruning(model, ratio=0.5)


def test_concat_consumer_is_sliced_at_channel_offsets():
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "wc"], ["y"], name="cc"),
    ]
    model = gp.load(make_model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", None)], [tensor("wa", _r(4, 3, 1, 1)), tensor("wb", _r(6, 3, 1, 1)), tensor("wc", _r(5, 10, 1, 1))]))
    plan, _ = prune_and_check(model, ratio=0.5)
    assert sorted((g["channels"], g["kept"]) for g in plan.groups if g["pruned"]) == [(4, 2), (6, 3)]
    assert model.graph.initializers["wc"].const_value.shape == (5, 5, 1, 1)


def test_flatten_into_gemm_slices_channel_by_spatial_blocks():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1),
    ]
    model = gp.load(make_model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", None)], [tensor("w", _r(8, 2, 3, 3)), tensor("g", _r(5, 8 * 2 * 2))]))
    prune_and_check(model, ratio=0.5)
    assert model.graph.initializers["g"].const_value.shape == (5, 4 * 2 * 2)


def test_transpose_moves_the_channel_axis():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t2", "w2"], ["y"], name="fc2"),
    ]
    model = gp.load(make_model(nodes, [_vi("x", [2, 3, 6])], [_vi("y", None)], [tensor("w1", _r(6, 8)), tensor("w2", _r(8, 4))]))
    prune_and_check(model, ratio=0.5)
    assert model.graph.initializers["w2"].const_value.shape == (4, 4)


@pytest.mark.parametrize(
    "nodes,inits,reason",
    [
        (
            [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Conv", ["c", "g"], ["y"], name="grouped", group=2)],
            [tensor("w", _r(8, 4, 1, 1)), tensor("g", _r(6, 4, 1, 1))],
            "grouped Conv 'grouped' (group=2)",
        ),
        (
            [
                helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                helper.make_node("Split", ["c", "sizes"], ["s1", "s2"], axis=1),
                helper.make_node("Add", ["s1", "s2"], ["y"]),
            ],
            [tensor("w", _r(8, 4, 1, 1)), tensor("sizes", np.array([4, 4], np.int64))],
            "Split",
        ),
        (
            [
                helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                helper.make_node("Softmax", ["c"], ["s"], axis=1),
                helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2"),
            ],
            [tensor("w", _r(8, 4, 1, 1)), tensor("w2", _r(3, 8, 1, 1))],
            "Softmax",
        ),
        (
            [
                helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                helper.make_node("Shape", ["c"], ["shape"]),
                helper.make_node("Reshape", ["c", "shape"], ["y"]),
            ],
            [tensor("w", _r(8, 4, 1, 1))],
            "shape arithmetic",
        ),
        (
            [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])],
            [tensor("w", _r(8, 4, 1, 1))],
            "reaches graph output",
        ),
    ],
    ids=["grouped_conv", "split", "softmax_over_channels", "shape_arithmetic", "graph_output"],
)
def test_unsafe_uses_refuse_the_group_with_a_reason(nodes, inits, reason):
    model, plan = _plan_of(nodes, [_vi("x", [1, 4, 5, 5])], inits)
    conv_group = next(g for g in plan.groups if "conv" in g["sources"])
    assert conv_group["pruned"] == 0 and reason in conv_group["refused"]


@pytest.mark.parametrize("op", ["Mul", "Sub"])
def test_elementwise_merges_of_branches(op):
    """x * gate(x) (squeeze-excitation) and x - f(x): both operands' channels are one space."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Conv", ["p", "w_se"], ["g0"], name="se"),
        helper.make_node("Sigmoid", ["g0"], ["g"]),
        helper.make_node(op, ["c", "g"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="out"),
    ]
    inits = [tensor("w", _r(8, 4, 1, 1)), tensor("w_se", _r(8, 8, 1, 1)), tensor("w2", _r(3, 8, 1, 1))]
    model = gp.load(make_model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], inits))
    plan, _ = prune_and_check(model, ratio=0.5)
    merged = next(g for g in plan.groups if "conv" in g["sources"])
    assert {"conv", "se"} <= set(merged["sources"]) and merged["kept"] == 4
    assert model.graph.initializers["w_se"].const_value.shape == (4, 4, 1, 1)


def test_layer_norm_and_instance_norm():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"]),
        helper.make_node("Conv", ["n", "w2"], ["d"], name="conv2"),
        helper.make_node("LayerNormalization", ["d", "ls", "lb"], ["y"], axis=1),
    ]
    inits = [tensor("w", _r(8, 4, 1, 1)), tensor("s", _r(8)), tensor("b", _r(8)), tensor("w2", _r(6, 8, 1, 1)), tensor("ls", _r(6, 5, 5)), tensor("lb", _r(6, 5, 5))]
    model = gp.load(make_model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], inits))
    plan, _ = prune_and_check(model, ratio=0.5)
    assert model.graph.initializers["s"].const_value.shape == (4,)
    assert "LayerNormalization" in next(g for g in plan.groups if "conv2" in g["sources"])["refused"]


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "activation", "apoz", "random"])
def test_importance_criteria(importance):
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    plan, _ = prune_and_check(model, ratio=0.3, importance=importance)
    assert plan.channels_removed > 0


def test_importance_picks_the_weak_channels():
    w = _r(8, 4, 1, 1)
    w[[1, 5]] *= 1e-3  # two almost-dead filters
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2")]
    model = gp.load(make_model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], [tensor("w", w), tensor("w2", _r(3, 8, 1, 1))]))
    plan_pruning(model, ratio=0.25)
    plan = plan_pruning(model, ratio=0.25)
    apply_plan(model, plan)
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), np.delete(w, [1, 5], axis=0))


def test_round_to_min_channels_include_exclude_and_global():
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    plan = plan_pruning(model, ratio=0.7, round_to=16)
    assert all(g["kept"] % 16 == 0 or g["kept"] == g["channels"] for g in plan.groups)
    plan = plan_pruning(model, ratio=0.9, min_channels=40)
    assert all(g["kept"] >= 40 or g["pruned"] == 0 for g in plan.groups)
    plan = plan_pruning(model, ratio=0.5, include=["layer4"])
    assert {s for g in plan.groups if g["pruned"] for s in g["sources"]} <= {s for g in plan.groups for s in g["sources"] if "layer4" in s} | {
        s for g in plan.groups if g["pruned"] for s in g["sources"] if any("layer4" in t for t in g["sources"])
    }
    plan = plan_pruning(model, ratio=0.5, exclude=["layer"])
    assert all(not any("layer" in s for s in g["sources"]) for g in plan.groups if g["pruned"])
    plan = plan_pruning(model, ratio=0.5, global_ranking=True)
    ratios = [g["pruned"] / g["channels"] for g in plan.groups if g["pruned"]]
    assert len(set(ratios)) > 1  # one threshold, different ratio per group
    total = sum(g["channels"] for g in plan.groups if "refused" not in g)
    assert abs(plan.channels_removed / total - 0.5) < 0.1


def test_pass_through_manager_is_checked_against_masked_reference(tmp_path):
    from graphpress.passes.pruning import apply_plan_to_module

    module, model = _cleaned_with_module(lambda: resnet18(num_classes=10), 32)
    feeds = numeric.make_inputs(model, seed=0)
    original = numeric.run(model, feeds)
    # the independent reference: the torch module with the same channels taken out, run by torch
    apply_plan_to_module(module, plan_pruning(model, ratio=0.5, round_to=8))
    # a random-weight ResNet pruned by half moves far from the input: the end-to-end verdict
    # (always against the input model) needs a budget that allows it
    inst = NumericInstrument(feeds, min_cosine=0.3)
    result = PassManager(build_passes("prune:ratio=0.5;round_to=8,fuse,cleanup"), [InvariantInstrument(), inst]).run(model)
    record = result.records[0]
    assert inst.rebased_by == ["prune"]
    (name,) = original
    after = numeric.run(model, feeds)[name]
    with torch.no_grad():
        want = module(torch.from_numpy(feeds[model.graph.inputs[0].name])).numpy()
    np.testing.assert_allclose(after, want, atol=ATOL, rtol=RTOL)
    # the stem's 64 filters, halved (32 is a multiple of 8)
    assert next(n for n in model.graph if n.op_type == "Conv").inputs[1].const_value.shape == (32, 3, 7, 7)
    assert record.stats["r_p"] > 0.5 and record.stats["layers"]["layer1.0.conv1"]["r_p"] == 0.75
    # the verdict is against the input; the masked reference is reported beside it
    cos = float(np.dot(original[name].ravel(), after.ravel()) / np.linalg.norm(original[name]) / np.linalg.norm(after))
    assert inst.final.min_cosine == pytest.approx(cos, abs=1e-6) and cos < 0.99
    assert inst.vs_reference.passed and inst.vs_reference.min_cosine > 0.9999


def test_pruning_beyond_the_budget_fails_against_the_input():
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    inst = NumericInstrument(numeric.make_inputs(model, seed=0))  # default budget: cosine >= 0.99
    with pytest.raises(NumericMismatchError, match="budget cosine >= 0.99 against the input model .*prune"):
        PassManager(build_passes("prune:ratio=0.5"), [inst]).run(model)


def test_cli_prune_with_report(tmp_path, capsys):
    src = tmp_path / "r18.onnx"
    gp.save(_cleaned(lambda: resnet18(num_classes=10), 32), src)
    out, report = tmp_path / "r18.pruned.onnx", tmp_path / "report.json"
    argv = ["optimize", str(src), "-o", str(out), "--passes", "prune:ratio=0.5;global=true", "--verify", "--report", str(report)]
    assert main(argv) == 2 and not out.exists()
    assert "beyond the budget cosine >= 0.99 against the input model" in capsys.readouterr().err
    assert main([*argv, "--min-cosine", "0.3"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "verification vs the input model" in printed and "vs the masked reference" in printed
    data = json.loads(report.read_text())
    stats = data["passes"][0]["stats"]
    v = data["verification"]
    assert v["passed"] and v["baseline"] == "input model" and v["baseline_moved_by"] == ["prune"]
    assert v["cosine"] < 0.99 and v["vs_reference"]["passed"] and v["vs_reference"]["cosine"] > 0.9999
    assert stats["layers"] and all(0 < v["r_p"] < 1 for v in stats["layers"].values())
    assert data["after"]["params"] < data["before"]["params"]
    assert main(["optimize", str(src), "-o", str(out), "--passes", "prune:mode=nm;n=4;m=4"]) == 2
    assert "n=4 must be smaller than m=4" in capsys.readouterr().err


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_sparsity(scope):
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    result = PassManager(build_passes(f"prune:mode=unstructured;ratio=0.6;scope={scope}")).run(model)
    stats = result.records[0].stats
    assert abs(stats["sparsity"] - 0.6) < 0.01 and stats["compressed_bytes"] < stats["dense_bytes"]
    if scope == "layer":
        assert all(abs(v["sparsity"] - 0.6) < 0.01 for v in stats["layers"].values())
    numeric.run(model, numeric.make_inputs(model, seed=0))


def test_nm_sparsity_pattern():
    arr = _r(6, 8, 3, 3)
    keep = nm_mask(arr, 1, 2, 4)
    blocks = np.moveaxis(keep, 1, -1).reshape(-1, 4)
    assert (blocks.sum(axis=1) == 2).all()
    mags = np.moveaxis(np.abs(arr), 1, -1).reshape(-1, 4)
    assert (np.where(blocks, mags, np.inf).min(axis=1) >= np.where(blocks, -np.inf, mags).max(axis=1)).all()
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    stats = PassManager(build_passes("prune:mode=nm;n=2;m=4")).run(model).records[0].stats
    assert abs(stats["sparsity"] - 0.5) < 0.01


def test_pruned_model_compiles_with_tvm_and_matches_ort(tmp_path, monkeypatch):
    from graphpress.backends import tvm as gtvm

    monkeypatch.setenv("GRAPHPRESS_CACHE", str(tmp_path / "cache"))
    model = _cleaned(lambda: resnet18(num_classes=10), 32)
    prune_and_check(model, ratio=0.5)
    compiled = gtvm.compile_model(model, "x86", shipped_databases=False)
    feeds = numeric.make_inputs(model, seed=1)
    np.testing.assert_allclose(compiled(*feeds.values())[0], next(iter(numeric.run(model, feeds).values())), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet", "unet"])
def test_plan_applies_to_the_torch_module(name):
    from graphpress.passes.pruning import apply_plan_to_module

    factory, size = COVERAGE[name]
    torch.manual_seed(0)
    module = factory().eval()
    x = torch.randn(1, 3, size, size)
    model = gp.load(module, x)
    PassManager(build_passes("cleanup")).run(model)
    plan = plan_pruning(model, ratio=0.5)
    changed = apply_plan_to_module(module, plan)
    apply_plan(model, plan)
    assert changed and all(new < old for old, new in changed.values() for old, new in [(int(np.prod(old)), int(np.prod(new)))])
    with torch.no_grad():
        got = module(x).numpy()
    want = next(iter(numeric.run(model, {model.graph.inputs[0].name: x.numpy()}).values()))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    # still a trainable module
    loss = module(x).square().mean()
    loss.backward()


def test_minilm_plan_applies_to_the_torch_module(minilm_model):
    from graphpress.models.minilm import load_minilm, tokenize
    from graphpress.passes.pruning import apply_plan_to_module

    module = load_minilm().eval()
    toks = tokenize(["heads and neurons leave the torch module too"], seq_len=16)
    model = gp.load(module, tuple(toks.values()))
    PassManager(build_passes("cleanup")).run(model)
    plan = plan_pruning(model, ratio=0.5)
    apply_plan_to_module(module, plan)
    apply_plan(model, plan)
    attention = module.get_submodule("bert.encoder.layer.0.attention.self")
    assert attention.num_attention_heads == 6 and attention.query.out_features == 192
    with torch.no_grad():
        got = module(*toks.values()).numpy()
    want = next(iter(numeric.run(model, {i.name: v.numpy() for i, v in zip(model.graph.inputs, toks.values())}).values()))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


def _params(model):
    return sum(v.const_value.size for v in model.graph.initializers.values())


def test_progressive_pruning_stops_at_the_metric_tolerance(digits_cnn):
    from graphpress.models.cnn import accuracy
    from graphpress.passes.pruning import prune_progressive

    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(model)
    name = model.graph.inputs[0].name

    def metric(m):
        return accuracy(next(iter(numeric.run(m, {name: data.x_test}).values())), data.y_test)

    params_before = _params(model)
    ratio, history = prune_progressive(model, metric, tolerance=0.03)
    baseline = history[0]["metric"]
    chosen = next(h for h in history if h["ratio"] == ratio)
    assert chosen["metric"] >= baseline - 0.03
    assert history[-1]["ratio"] == ratio or history[-1]["metric"] < baseline - 0.03  # stopped at the first failure
    assert metric(model) == pytest.approx(chosen["metric"])
    # it chose something, applied it, and the pruned model is within 0.03 of torch's accuracy
    with torch.no_grad():
        torch_accuracy = accuracy(module(torch.from_numpy(data.x_test)).numpy(), data.y_test)
    assert ratio > 0 and _params(model) < params_before and metric(model) >= torch_accuracy - 0.03
    # the CLI form uses the output cosine of the pass's own model (on inputs made from seed 0)
    m2 = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(m2)
    params_before = _params(m2)
    unpruned = gp.ir.io.to_proto(m2)
    feeds = numeric.make_inputs(m2, seed=0)
    stats = PassManager(build_passes("prune:ratio=0.9;tolerance=0.01")).run(m2).records[0].stats
    chosen_ratio = stats["progressive"]["chosen_ratio"]
    assert 0 < chosen_ratio <= 0.9 and _params(m2) < params_before  # the search chose something, and it was applied
    assert all(h["metric"] >= 0.99 for h in stats["progressive"]["history"] if 0 < h["ratio"] <= chosen_ratio)

    def cosine_to_torch(m):  # the budget measured without the pass: against torch's unpruned module
        with torch.no_grad():
            want = module(torch.from_numpy(feeds[name])).numpy().ravel().astype(np.float64)
        got = next(iter(numeric.run(m, feeds).values())).ravel().astype(np.float64)
        return got @ want / (np.linalg.norm(got) * np.linalg.norm(want))

    assert cosine_to_torch(m2) >= 1 - 0.01
    if chosen_ratio < 0.9:  # the next step would have broken the budget: the search stopped where it should
        m3 = gp.load(unpruned)
        apply_plan(m3, plan_pruning(m3, ratio=round(chosen_ratio + 0.1, 6)))
        assert cosine_to_torch(m3) < 1 - 0.01


class _Mlp(torch.nn.Module):
    """x -> Linear(16, 32) -> ReLU -> Linear(32, 8): hidden units 0-11 have no weights and a bias
    of 0.5, so they are constant (0.5 after the ReLU) whatever the input; the rest vary."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight[:12] = 0.0
            self.fc1.bias[:12] = 0.5

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Mlp3(torch.nn.Module):
    """Two hidden layers: the middle one reads cut channels and has channels cut itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(16, 48), torch.nn.Linear(48, 48), torch.nn.Linear(48, 8)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _mlp_samples(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)]


def _pruned_mlp(spec, samples, net=_Mlp):
    from graphpress.passes.context import PassContext
    from graphpress.pipelines import copy_model

    model = gp.load(net().eval(), torch.zeros(4, 16))
    original = copy_model(model)
    result = PassManager(build_passes(spec), context=PassContext(samples=samples) if samples else None).run(model)
    return original, model, result.records[-1].stats


def test_reconstruct_moves_what_constant_channels_gave_into_the_bias():
    """The 12 constant hidden units are the weakest (l1 of their rows is 0): cutting them loses
    fc2's columns times 0.5. The refit puts exactly that into fc2's bias, so the pruned model
    computes what the original did; a plain cut does not."""
    samples, unseen = _mlp_samples(16, 0), _mlp_samples(4, 1)
    original, plain, _ = _pruned_mlp("prune:ratio=0.375", samples)
    _, refit, stats = _pruned_mlp("prune:ratio=0.375;reconstruct=true", samples)
    assert list(stats["reconstruct"]["layers"]) and not stats["reconstruct"]["kept"]
    for feeds in unseen:
        want = numeric.run(original, feeds)
        (name,) = want
        np.testing.assert_allclose(numeric.run(refit, feeds)[name], want[name], atol=1e-4, rtol=1e-4)
        assert np.abs(numeric.run(plain, feeds)[name] - want[name]).max() > 0.05
    # 12 of 32 hidden units gone from both layers
    assert sorted(v.const_value.size for v in refit.graph.initializers.values()) == sorted([20 * 16, 20, 8 * 20, 8])


def test_reconstruct_refits_varying_channels_closer_than_the_plain_cut():
    """Half the hidden units cut, varying ones among them: on inputs the refit never saw, the
    output is nearer the original's than the plain cut's; against an independent least-squares
    fit (numpy's lstsq on the kept activations, with the bias) the refit is no worse."""
    samples, unseen = _mlp_samples(64, 0), _mlp_samples(8, 1)
    original, plain, _ = _pruned_mlp("prune:ratio=0.6", samples)
    _, refit, stats = _pruned_mlp("prune:ratio=0.6;reconstruct=true", samples)
    (layer,) = stats["reconstruct"]["layers"].values()
    assert layer["error_refit"] < layer["error_masked"]

    def error(model):
        return sum(float(np.linalg.norm(numeric.run(model, f)[n] - numeric.run(original, f)[n])) for f in unseen for n in numeric.run(original, f))

    assert error(refit) < 0.7 * error(plain)
    # the independent fit: hidden activations of the kept units (from torch), lstsq to fc2's output
    mlp = _Mlp().eval()
    consumer = next(n for n in refit.graph if n.op_type in ("Gemm", "MatMul") and n.inputs[0].producer() is not None and n.inputs[0].producer().op_type == "Relu")
    k = consumer.inputs[1].const_value.shape[1 if consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0) else 0]
    with torch.no_grad():
        xs = torch.from_numpy(np.concatenate([s["x"] for s in samples]))
        hidden = torch.relu(mlp.fc1(xs)).numpy()
        target = mlp(xs).numpy()
    norms = np.abs(mlp.fc1.weight.detach().numpy()).sum(1)
    kept = np.sort(np.argsort(norms, kind="stable")[32 - k :])
    design = np.concatenate([hidden[:, kept], np.ones((len(hidden), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    with torch.no_grad():
        xu = torch.from_numpy(np.concatenate([s["x"] for s in unseen]))
        lstsq_out = np.concatenate([torch.relu(mlp.fc1(xu)).numpy()[:, kept], np.ones((len(xu), 1))], axis=1) @ coef
        want = mlp(xu).numpy()
    got = np.concatenate([numeric.run(refit, f)[n] for f in unseen for n in numeric.run(refit, f)])
    assert np.linalg.norm(got - want) <= 1.1 * np.linalg.norm(lstsq_out - want)


def test_reconstruct_refits_layer_after_layer():
    """Both hidden layers cut: fc2 and fc3 are refitted, fc3 on the inputs the refitted fc2
    gives; on unseen inputs the output is nearer the original's than the plain cut's."""
    samples, unseen = _mlp_samples(64, 0), _mlp_samples(8, 1)
    original, plain, _ = _pruned_mlp("prune:ratio=0.5", samples, _Mlp3)
    _, refit, stats = _pruned_mlp("prune:ratio=0.5;reconstruct=true", samples, _Mlp3)
    assert len(stats["reconstruct"]["layers"]) == 2, stats["reconstruct"]

    def error(model):
        return sum(float(np.linalg.norm(numeric.run(model, f)[n] - numeric.run(original, f)[n])) for f in unseen for n in numeric.run(original, f))

    assert error(refit) < 0.8 * error(plain)


def test_reconstruct_never_does_worse_on_the_samples_it_is_judged_on():
    """Every fourth sample judges and is unlike the rest (the inputs flipped): a refit that
    does not carry over to them is dropped, so on them the result is never further from the
    original than the plain cut."""
    fit = _mlp_samples(48, 0)
    samples = [{"x": np.abs(f["x"]) * (-3.0 if i % 4 == 3 else 1.0)} for i, f in enumerate(fit)]
    judged = samples[3::4]
    original, plain, _ = _pruned_mlp("prune:ratio=0.5", samples, _Mlp3)
    _, refit, stats = _pruned_mlp("prune:ratio=0.5;reconstruct=true", samples, _Mlp3)
    r = stats["reconstruct"]
    assert "dropped" in r or any("no better" in why for why in r["kept"].values()) or r["output_cosine_refit"] >= r["output_cosine_cut"]

    def cosine(model):
        out = []
        for f in judged:
            (n,) = numeric.run(original, f)
            g, w = numeric.run(model, f)[n].ravel(), numeric.run(original, f)[n].ravel()
            out.append(float(g @ w / np.linalg.norm(g) / np.linalg.norm(w)))
        return float(np.mean(out))

    assert cosine(refit) >= cosine(plain) - 1e-6


def test_a_refit_the_outputs_reject_gives_every_weight_back():
    """The last judge is the model's outputs on the judging samples: here the refitted model
    they see is made worse on purpose, so the refit is dropped and each weight and bias comes
    back bit for bit."""
    from graphpress.passes.pruning.reconstruct import reconstruct_consumers

    model = gp.load(_Mlp3().eval(), torch.zeros(4, 16))
    before = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    plan = plan_pruning(model, ratio=0.5)
    calls = []

    def masked(m):
        out = masked_reference(m, plan)
        calls.append(out)
        if len(calls) == 4:  # the plain cut, one per refitted layer (2), then the refitted cut
            for v in out.graph.initializers.values():
                v.const_value = ir.tensor(-v.const_value.numpy(), name=v.name)
        return out

    stats = reconstruct_consumers(model, plan, _mlp_samples(16, 0), masked)
    assert len(calls) == 4 and "further from the original" in stats["dropped"] and stats["output_cosine_refit"] < stats["output_cosine_cut"]
    for k, v in model.graph.initializers.items():
        np.testing.assert_array_equal(v.const_value.numpy(), before[k], err_msg=k)


def test_reconstruct_without_samples_is_skipped_with_the_reason():
    _, model, stats = _pruned_mlp("prune:ratio=0.5;reconstruct=true", None)
    assert "no samples given" in stats["reconstruct"]["skipped"]
