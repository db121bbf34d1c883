"""The IR as a trainable torch module (graphpress.ir_torch), checked against ONNX Runtime, and
recovery by distillation on it (graphpress.recover): each mode improves a compressed digits
CNN's held-out agreement over one-shot, the written-back graph keeps its structure and runs in
ONNX Runtime as the trained student did."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

import graphpress as gp
from graphpress.compression import parse_recover
from graphpress.ir.numeric import make_inputs, run_samples
from graphpress.ir_torch import to_torch
from graphpress.models.cnn import accuracy, train_digits_cnn
from graphpress.passes import PassManager, build_passes
from graphpress.pipelines import copy_model

_SPEC = importlib.util.spec_from_file_location("_real", Path(__file__).resolve().parents[1] / "benchmarks" / "_real.py")
real = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = real
_SPEC.loader.exec_module(real)

STRUCTURED = "cleanup,fuse,cleanup,dedup,prune:ratio=0.7,quantize:mode=static"
SHARED = "cleanup,fuse,cleanup,dedup,prune:mode=unstructured;scope=global;ratio=0.9,share:clusters=16"


@pytest.fixture(scope="module")
def digits():
    module, data = train_digits_cnn(epochs=6)
    module.eval()
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)  # trains in batches
    return module, data, model


def _compressed(model, spec):
    out = copy_model(model)
    PassManager(build_passes(spec)).run(out)
    return out


def _test_accuracy(model, data) -> float:
    out = run_samples(model, [{"x": data.x_test}])[model.graph.outputs[0].name]
    return accuracy(np.asarray(out).reshape(len(data.x_test), -1), data.y_test)


def _ort_vs_torch(model, feeds):
    net = to_torch(model, samples=[feeds])
    with torch.no_grad():
        got = net(*(torch.from_numpy(feeds[n]) for n in net.input_names))
    got = got if isinstance(got, tuple) else (got,)
    want = run_samples(model, [feeds])
    for name, g in zip(net.output_names, got):
        w = np.asarray(want[name])
        np.testing.assert_allclose(g.numpy().reshape(w.shape), w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("spec", ["", STRUCTURED, SHARED])
def test_to_torch_computes_what_onnxruntime_computes(digits, spec):
    _, data, model = digits
    compressed = _compressed(model, spec) if spec else model
    _ort_vs_torch(compressed, {"x": data.x_test[:5]})


def test_to_torch_on_the_zoo():
    from graphpress.models import resnet18
    from graphpress.models.minilm import load_minilm, tokenize
    from graphpress.models.mobilenet import mobilenet_v2

    torch.manual_seed(0)
    for module, example, spec in [
        (resnet18(num_classes=10).eval(), (torch.randn(1, 3, 32, 32),), "cleanup,fuse,prune:ratio=0.5,quantize:mode=static"),
        (mobilenet_v2(num_classes=10).eval(), (torch.randn(1, 3, 32, 32),), "cleanup,fuse,quantize:mode=static"),
        (load_minilm().eval(), tuple(tokenize(["one sentence to embed"], seq_len=16).values()), "cleanup,fuse,cleanup,dedup,quantize:mode=dynamic"),
    ]:
        model = _compressed(gp.load(module, example), spec)
        _ort_vs_torch(model, {v.name: t.numpy() for v, t in zip(model.graph.inputs, example)})


@pytest.mark.parametrize("name", ["ppocr-cls", "magika"])
def test_to_torch_on_models_shipped_in_wheels(name):
    entry = real.BY_NAME[name]
    model = gp.load(real.fetch(entry))
    _ort_vs_torch(model, entry.feeds())


def test_an_op_without_a_torch_form_is_named():
    entry = real.BY_NAME["silero-vad-ifless"]
    with pytest.raises(gp.GraphpressError, match=r"op If has no torch form") as e:
        to_torch(gp.load(real.fetch(entry)))
    assert "\n" not in str(e.value)


def test_write_back_without_training_changes_nothing(digits):
    _, _, model = digits
    compressed = _compressed(model, STRUCTURED)
    back = to_torch(compressed).write_back()
    assert [n.op_type for n in back.graph] == [n.op_type for n in compressed.graph]
    for name, v in compressed.graph.initializers.items():
        np.testing.assert_array_equal(back.graph.initializers[name].const_value.numpy(), v.const_value.numpy(), err_msg=name)


def _grid_and_shape(model):
    inits = model.graph.initializers
    return {
        "nodes": [(n.op_type, [i.name if i else None for i in n.inputs]) for n in model.graph],
        "shapes": {k: tuple(v.const_value.shape) for k, v in inits.items()},
        "fixed": {k: v.const_value.numpy().tobytes() for k, v in inits.items() if k.endswith(("_scale", "_zero_point", "share_indices4", "share_indices"))},
    }


def test_distillation_recovers_structured_pruning_and_int8(digits):
    module, data, model = digits
    compressed = _compressed(model, STRUCTURED)
    lines = []
    result = gp.recover(compressed, model, {"x": data.x_train}, epochs=4, lr=2e-3, seed=0, progress=lines.append)
    # the held-out rows (of the training data) and the test split, both better than one-shot
    assert result.after > result.before + 0.1
    one_shot, recovered, fp32 = _test_accuracy(compressed, data), _test_accuracy(result.model, data), _test_accuracy(model, data)
    assert recovered > one_shot + 0.1 and recovered >= fp32 - 0.03
    # the graph kept its nodes, its shapes and its quantization grids
    assert _grid_and_shape(result.model) == _grid_and_shape(compressed)
    assert len(result.history) == 4 and any("epoch 4/4" in line for line in lines)
    assert result.metric == "agreement" and result.seconds > 0 and result.epoch >= 1


def test_training_that_does_worse_on_held_out_rows_is_not_kept(digits):
    """A learning rate that wrecks the weights: every epoch scores below the model it was given,
    so the weights before training come back, bit for bit."""
    _, data, model = digits
    compressed = _compressed(model, "cleanup,fuse,cleanup,quantize:mode=static")
    lines = []
    result = gp.recover(compressed, model, {"x": data.x_train[:400]}, epochs=2, lr=1.0, seed=0, progress=lines.append)
    assert max(row["held_out"] for row in result.history) < result.before
    assert result.epoch == 0 and result.after == result.before and any("kept the weights before training" in line for line in lines)
    for name, v in compressed.graph.initializers.items():
        np.testing.assert_array_equal(result.model.graph.initializers[name].const_value.numpy(), v.const_value.numpy(), err_msg=name)


def test_cluster_aware_training_moves_centroids_only(digits):
    _, data, model = digits
    compressed = _compressed(model, SHARED)
    result = gp.recover(compressed, model, {"x": data.x_train}, epochs=3, lr=3e-3, seed=0)
    assert result.after > result.before + 0.03
    assert _grid_and_shape(result.model) == _grid_and_shape(compressed)
    books = [k for k in compressed.graph.initializers if k.endswith(".share_codebook")]
    assert books
    changed = 0
    for k in books:
        old, new = compressed.graph.initializers[k].const_value.numpy(), result.model.graph.initializers[k].const_value.numpy()
        assert old.shape == new.shape and np.array_equal(old == 0, new == 0)  # the pruned cluster stays zero
        changed += int(not np.array_equal(old, new))
    assert changed == len(books)


def test_same_seed_same_weights_and_batch_one_models_train_row_by_row(digits):
    module, data, _ = digits
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))  # batch fixed to 1: row by row
    compressed = _compressed(model, STRUCTURED)
    rows = {"x": data.x_train[:96]}
    a = gp.recover(compressed, module, rows, epochs=1, seed=3)  # the teacher as the torch module
    b = gp.recover(compressed, module, rows, epochs=1, seed=3)
    for name, v in a.model.graph.initializers.items():
        np.testing.assert_array_equal(v.const_value.numpy(), b.model.graph.initializers[name].const_value.numpy())


def test_labels_and_feature_pairs(digits, tmp_path):
    _, data, model = digits
    compressed = _compressed(model, SHARED)
    gp.save(model, tmp_path / "teacher.onnx")
    np.savez(tmp_path / "train.npz", x=data.x_train)
    student_values = {v.name: v for n in compressed.graph for v in n.outputs}
    pair = next(n.outputs[0].name for n in model.graph if n.op_type == "Relu" and n.outputs[0].name in student_values)
    result = gp.recover(compressed, tmp_path / "teacher.onnx", tmp_path / "train.npz", labels=data.y_train, features={pair: pair}, epochs=2, lr=3e-3, seed=0)
    assert result.metric == "accuracy" and result.after > result.before


def test_bad_recover_options_get_one_line(digits):
    _, data, model = digits
    compressed = _compressed(model, STRUCTURED)
    for kwargs, match in [
        ({"data": {"image": data.x_train[:8]}}, "no input 'x'"),
        ({"data": {"x": data.x_train[:8]}, "labels": data.y_train[:3]}, "3 labels for 8 rows"),
        ({"data": {"x": data.x_train[:8]}, "loss": "hinge"}, "loss 'hinge'"),
        ({"data": {"x": data.x_train[:8]}, "features": {"nope": "nope"}}, "no value 'nope'"),
    ]:
        with pytest.raises(gp.GraphpressError, match=match) as e:
            gp.recover(compressed, model, **kwargs)
        assert "\n" not in str(e.value)
    assert make_inputs(compressed)  # the student is untouched and still runs


def test_compress_with_recovery_keeps_a_stronger_cut(digits):
    module, data, _ = digits
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))  # as users hand it over: batch 1
    samples = [{"x": data.x_test[i : i + 1]} for i in range(200)]
    kw = {"samples": samples, "labels": data.y_test[:200], "budget": "0.5%", "recipe": "prune-int8", "measure": False}
    plain = gp.compress(model, "onnxruntime", **kw)
    recovered = gp.compress(model, "onnxruntime", recover={"epochs": 3, "lr": 3e-3}, train_data={"x": data.x_train}, **kw)
    ratio = lambda r: float((next(s["chosen"] for s in r.steps if s["stage"] == "prune") or "prune:ratio=0").split("=")[1])  # noqa: E731
    assert ratio(recovered) > ratio(plain)
    assert recovered.held_out_loss <= 0.005  # the held-out samples (never trained on) still judge
    kept = next(s for s in recovered.steps if s["stage"] == "prune")["tried"][-1][1]
    assert kept.startswith("kept after recovery")


def test_cli_recover_options(capsys, tmp_path, digits):
    from tests.test_cli import _fail

    module, data, model = digits
    gp.save(model, tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    _fail(capsys, ["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--recover", "epochs=three"], [tmp_path / "m.onnx"], [out], "epochs=three is not a int")
    _fail(capsys, ["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--recover", "speed=9"], [tmp_path / "m.onnx"], [out], "give KEY=VALUE pairs")
    np.savez(tmp_path / "t.npz", x=data.x_train[:8])
    _fail(capsys, ["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--train-data", str(tmp_path / "t.npz")], [tmp_path / "m.onnx"], [out], "give --recover too")
    assert parse_recover("epochs=2,freeze=embeddings|LayerNorm") == {"epochs": 2, "freeze": ["embeddings", "LayerNorm"]}


def test_cli_prints_why_a_step_was_skipped(capsys, tmp_path, digits):
    """A step no candidate survives: the CLI prints every candidate tried and its outcome."""
    from graphpress.cli import main

    _, data, model = digits
    gp.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "s.npz", x=data.x_test[:64])
    rc = main(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--recipe", "prune-int8", "--samples", str(tmp_path / "s.npz"),
               "--budget", "cos:0.9999999", "--no-measure"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "step prune: skipped (no candidate fits its share of the budget)" in out
    assert out.count("\n  tried prune:ratio=") >= 2 and "over its share of the budget" in out


def test_progressive_pruning_with_recovery_reaches_a_higher_ratio(digits):
    from graphpress.passes.pruning import prune_progressive

    module, data, model = digits
    base = _compressed(model, "cleanup,fuse,cleanup,dedup")
    want = np.asarray(run_samples(base, [{"x": data.x_test}])[base.graph.outputs[0].name]).argmax(-1)

    def agreement(m):  # on the test split: never trained on
        return float((np.asarray(run_samples(m, [{"x": data.x_test}])[m.graph.outputs[0].name]).argmax(-1) == want).mean())

    plain = copy_model(base)
    plain_ratio, _ = prune_progressive(plain, agreement, tolerance=0.01, max_ratio=0.8, step=0.2)
    trained = copy_model(base)
    ratio, history = prune_progressive(trained, agreement, tolerance=0.01, max_ratio=0.8, step=0.2,
                                       recover=lambda m: gp.recover(m, base, {"x": data.x_train}, epochs=3, lr=3e-3).model)  # fmt: skip
    assert ratio > plain_ratio
    assert agreement(trained) >= 0.99 and all(h.get("recovered") for h in history[1:])
    assert trained.graph.num_nodes() > 0 and sum(v.const_value.size for v in trained.graph.initializers.values()) < sum(
        v.const_value.size for v in base.graph.initializers.values()
    )


class _Pooled(torch.nn.Module):
    """Positions, padding and masked mean pooling: a sentence encoder in miniature."""

    def __init__(self):
        super().__init__()
        self.proj, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x, mask):
        h = torch.relu(self.proj(x))
        return self.out((h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0))


def test_feature_mask_leaves_padding_unmatched_and_freeze_keeps_weights():
    from graphpress.recovery import _Features

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    teacher = _Pooled().eval()
    x = rng.standard_normal((12, 5, 4)).astype(np.float32)
    mask = (np.arange(5)[None, :] < rng.integers(1, 6, size=(12, 1))).astype(np.float32)  # padded rows
    model = gp.load(teacher, (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])), dynamic_batch=True)
    relu = next(n.outputs[0].name for n in model.graph if n.op_type == "Relu")
    student = copy_model(model)
    weight = next(n for n in student.graph.initializers if "proj" in n and student.graph.initializers[n].const_value.numpy().ndim == 2)
    student.graph.initializers[weight].const_value = ir.tensor(student.graph.initializers[weight].const_value.numpy() * 0.5)
    rows = {"x": x, "mask": mask}

    # the masked loss against numpy: squared differences at the unmasked positions only
    net = to_torch(student, samples=[{k: a[:1] for k, a in rows.items()}])
    feats = _Features(net, model, {relu: relu}, rows, 4, torch.device("cpu"), mask)
    idx = np.arange(12)
    with torch.no_grad():
        net(torch.from_numpy(x), torch.from_numpy(mask))
        got = float(feats.loss(idx))
    a, b = net.captured[relu].numpy(), feats.want[relu]
    want = float((((a - b) ** 2) * mask[..., None]).sum() / (mask.sum() * a.shape[-1]))
    assert got == pytest.approx(want, rel=1e-5)
    assert want != pytest.approx(float(((a - b) ** 2).mean()), rel=1e-3)  # padding would count otherwise

    result = gp.recover(student, model, rows, epochs=2, lr=1e-2, batch_size=4, held_out=0.25, features={relu: relu}, feature_mask="mask", freeze=[weight], schedule="cosine")
    after = result.model.graph.initializers
    np.testing.assert_array_equal(after[weight].const_value.numpy(), student.graph.initializers[weight].const_value.numpy())
    assert any(not np.array_equal(v.const_value.numpy(), after[k].const_value.numpy()) for k, v in student.graph.initializers.items() if k in net.param_names() and k != weight)
    for kwargs, match in [({"freeze": ["nope"]}, "freeze 'nope' names no trained weight"), ({"schedule": "step"}, "schedule 'step'"), ({"feature_mask": "mask"}, "feature_mask 'mask'"),
                          ({"features": {relu: relu}, "feature_mask": "lengths"}, "feature_mask 'lengths'")]:  # fmt: skip
        with pytest.raises(gp.GraphpressError, match=match) as e:
            gp.recover(student, model, rows, epochs=1, **kwargs)
        assert "\n" not in str(e.value)


class _Blocks(torch.nn.Module):
    """Positions mixed, then two residual feed-forward blocks closed by a LayerNorm, masked mean
    pooling: a transformer's FFN layers in miniature."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Linear(8, 8)
        self.ffn = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)) for _ in range(2))
        self.norm = torch.nn.ModuleList(torch.nn.LayerNorm(8) for _ in range(2))

    def forward(self, x, mask):
        h = self.mix(x)
        h = h + h.mean(1, keepdim=True)  # across positions: not a block of its own
        for f, n in zip(self.ffn, self.norm):
            h = n(h + f(h))
        return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)


def test_block_wise_distillation_trains_each_block_on_the_teachers_own_inputs(monkeypatch):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 8)).astype(np.float32)
    mask = (np.arange(6)[None, :] < rng.integers(2, 7, size=(96, 1))).astype(np.float32)
    model = gp.load(_Blocks().eval(), (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])), dynamic_batch=True)
    student = copy_model(model)
    PassManager(build_passes("cleanup,fuse,cleanup,prune:ratio=0.5")).run(student)
    assert sum(v.const_value.size for v in student.graph.initializers.values()) < sum(v.const_value.size for v in model.graph.initializers.values())
    before = {k: v.const_value.numpy().copy() for k, v in student.graph.initializers.items()}
    norms = [n.outputs[0].name for n in model.graph if n.op_type == "LayerNormalization"]
    # each block: from the input of its first (pruned: 16 of 32 wide) product to its LayerNorm
    firsts = [n.inputs[0].name for n in student.graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None and n.inputs[1].const_value.shape[1] == 16]
    blocks = dict(zip(firsts, norms))
    assert len(blocks) == 2 and firsts[1] == norms[0]
    train, test = {"x": x[:64], "mask": mask[:64]}, {"x": x[64:], "mask": mask[64:]}

    def cosine(m):  # the whole model's output on rows no block trained on, in ONNX Runtime
        got, want = (np.asarray(run_samples(g, [test])[g.graph.outputs[0].name]) for g in (m, model))
        return float(((got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))).mean())

    from graphpress.recovery import _auto_blocks

    assert _auto_blocks(student, model) == {norms[0]: norms[1]}  # LayerNorm to LayerNorm (the first block starts elsewhere)
    result = gp.recover_blocks(student, model, train, blocks, mask="mask", epochs=12, lr=1e-2, batch_size=16, held_out=0.2)
    assert list(result.blocks) == [f"{a} -> {b}" for a, b in blocks.items()]
    for block in result.blocks.values():
        assert block["rows"] == int(mask[:64].sum())  # one row per real position, padding left out
        assert block["after"] > block["before"]
    assert 1 - cosine(result.model) < 0.5 * (1 - cosine(student)), (cosine(student), cosine(result.model))
    # the structure stays, the student given is not modified, weights outside the blocks stay
    assert [(n.op_type, [tuple(v.shape) for v in n.outputs if v.shape]) for n in result.model.graph] == [(n.op_type, [tuple(v.shape) for v in n.outputs if v.shape]) for n in student.graph]
    for k, v in student.graph.initializers.items():
        np.testing.assert_array_equal(v.const_value.numpy(), before[k])
    mix = [k for k in before if "mix" in k]
    assert mix and all(np.array_equal(result.model.graph.initializers[k].const_value.numpy(), before[k]) for k in mix)
    assert any(not np.array_equal(result.model.graph.initializers[k].const_value.numpy(), before[k]) for k in before if "ffn" in k)

    # fed the teacher's inputs, the second block trains the same whether the first one trained
    # before it or not; fed the student's, it trains on what the first one now gives it
    import graphpress.recovery as recovery

    def second_block(inputs, which):
        m = gp.recover_blocks(student, model, train, which, mask="mask", inputs=inputs, epochs=2, lr=1e-2, batch_size=16, held_out=0.2).model
        return np.concatenate([m.graph.initializers[k].const_value.numpy().ravel() for k in sorted(m.graph.initializers) if "ffn.1" in k])

    last = dict([list(blocks.items())[1]])
    teacher_fed = second_block("teacher", blocks)
    np.testing.assert_array_equal(teacher_fed, second_block("teacher", last))
    assert not np.array_equal(second_block("student", blocks), second_block("student", last))
    # the teacher's values of the blocks taken in one run or in one run per block: the same weights
    monkeypatch.setattr(recovery, "BLOCK_VALUES_BYTES", 1)
    np.testing.assert_array_equal(teacher_fed, second_block("teacher", blocks))

    out = model.graph.outputs[0].name
    for bad, match in [({"nope": norms[0]}, "has no value 'nope'"), ({firsts[1]: out}, "also reads 'mask'"),
                       ({"x": norms[0]}, "does not compute its output from its input alone position by position")]:  # fmt: skip
        with pytest.raises(gp.GraphpressError, match=match) as e:
            gp.recover_blocks(student, model, train, bad, mask="mask", epochs=1)
        assert "\n" not in str(e.value)
    # from the recipes (compress --recover blocks=auto,block_mask=mask,...): blocks, then end to end
    from graphpress.compression import _recovery

    assert parse_recover("blocks=a>b|c>d,block_epochs=2") == {"blocks": {"a": "b", "c": "d"}, "block_epochs": 2}
    for bad in ("blocks=a", "block_epochs=2"):
        with pytest.raises(gp.GraphpressError, match="blocks") as e:
            _recovery(model, parse_recover(bad), train, None)
        assert "\n" not in str(e.value)
    recovered, line = _recovery(model, parse_recover("blocks=auto,block_mask=mask,block_epochs=3,epochs=1,lr=0.001"), train, None)(student)
    assert line.startswith("1 block in") and "then 1 epochs" in line, line
    assert cosine(recovered) > cosine(student)
    with pytest.raises(gp.GraphpressError, match="found no compressed span"):
        gp.recover_blocks(model, model, train, "auto")  # nothing compressed: nothing to train
    for kwargs, match in [({"mask": "lengths"}, "mask 'lengths'"), ({"inputs": "both"}, "inputs 'both'")]:
        with pytest.raises(gp.GraphpressError, match=match):
            gp.recover_blocks(student, model, train, blocks, epochs=1, **kwargs)


def test_the_values_of_early_blocks_come_from_the_nodes_they_need_only():
    """ONNX Runtime runs every node whatever outputs a run asks for: the teacher's values are
    taken from the model cut after the nodes they depend on. The same values as a run of the
    whole model (ONNX Runtime's, independently), with the later layers and their weights gone."""
    from graphpress.ir.numeric import run
    from graphpress.recovery import _teacher_values, _up_to

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 8)).astype(np.float32)
    mask = (np.arange(6)[None, :] < rng.integers(2, 7, size=(40, 1))).astype(np.float32)
    model = gp.load(_Blocks().eval(), (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])), dynamic_batch=True)
    first = next(n.outputs[0].name for n in model.graph if n.op_type == "LayerNormalization")
    cut = _up_to(model, [first])
    assert [o.name for o in cut.graph.output] == [first]
    assert len(cut.graph.node) < len(list(model.graph)) and "LayerNormalization" in [n.op_type for n in cut.graph.node]
    assert not any("ffn.1" in t.name or "norm.1" in t.name for t in cut.graph.initializer)  # the second layer's weights
    got = _teacher_values(model, {"x": x, "mask": mask}, [first], "mask")[first]
    want = np.asarray(run(model, {"x": x, "mask": mask}, [first])[first])[mask.astype(bool)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(list(model.graph)) > len(cut.graph.node)  # the model itself is not cut
