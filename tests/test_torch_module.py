"""graphpress.to_module: the compressed model back in the user's nn.Module, checked against the
compressed graph in ONNX Runtime (the independent reference) on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.ir.numeric import run_samples
from graphpress.models.cnn import accuracy, train_digits_cnn
from graphpress.passes import PassManager, build_passes
from graphpress.pipelines import copy_model
from graphpress.qat import FixedFakeQuant, SharedWeight
from graphpress.torch_module import AGREEMENT, _check


@pytest.fixture(scope="module")
def digits():
    module, data = train_digits_cnn(epochs=3)
    module.eval()
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    return module, data, model


def _compressed(model, spec):
    out = copy_model(model)
    PassManager(build_passes(spec)).run(out)
    return out


def _rows(data, n=64):
    return [{"x": data.x_test[i : i + 1]} for i in range(n)]


def _module_logits(module, data):
    with torch.no_grad():
        return module(torch.from_numpy(data.x_test)).numpy()


def _graph_logits(model, data):
    return run_samples(model, _rows(data, len(data.x_test)))[model.graph.outputs[0].name].reshape(len(data.x_test), -1)


def test_pruned_quantized_module_computes_the_compressed_graph(digits):
    module, data, model = digits
    before = {k: v.clone() for k, v in module.state_dict().items()}
    compressed = _compressed(model, "cleanup,fuse,cleanup,dedup,prune:ratio=0.3,quantize:mode=static")
    new = gp.to_module(compressed, module, samples=_rows(data))
    # the user's class, cut as the graph was cut
    assert type(new) is type(module)
    conv1 = next(n for n in compressed.graph if n.op_type == "Conv")
    assert new.conv1.out_channels == conv1.outputs[0].shape[1] < module.conv1.out_channels
    assert isinstance(new.bn1, torch.nn.Identity)  # folded into conv1 by the graph
    # every Conv/Linear weight on the int8 grid the graph's kernels use
    for layer in (new.conv1, new.conv2, new.conv3, new.fc1, new.fc2):
        fake = layer.parametrizations.weight[0]
        assert isinstance(fake, FixedFakeQuant)
        q = layer.weight.detach() / fake.scale.reshape(-1, *[1] * (layer.weight.dim() - 1))
        np.testing.assert_allclose(q.numpy(), np.round(q.numpy()), atol=1e-3)
    # against ONNX Runtime on the compressed graph, all held-out digits
    got, want = _module_logits(new, data), _graph_logits(compressed, data)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert abs(accuracy(got, data.y_test) - accuracy(want, data.y_test)) <= 0.01
    assert new.graphpress_check[model.graph.outputs[0].name]["cosine"] >= 0.999
    # the module given is untouched
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    # and the result still trains: one step moves the weights, which stay on their grid
    new.train()
    loss = torch.nn.functional.cross_entropy(new(torch.from_numpy(data.x_train[:64])), torch.from_numpy(data.y_train[:64]))
    loss.backward()
    assert new.fc1.parametrizations.weight.original.grad is not None


def test_two_cuts_compose_and_keep_unfolded_batchnorms(digits, tmp_path):
    module, data, model = digits
    compressed = _compressed(model, "cleanup,prune:ratio=0.3,prune:ratio=0.3")
    gp.save(compressed, tmp_path / "small.onnx")  # the cut record travels in the file
    new = gp.to_module(tmp_path / "small.onnx", module)
    assert isinstance(new.bn1, torch.nn.BatchNorm2d) and new.bn1.num_features == new.conv1.out_channels < module.conv1.out_channels
    np.testing.assert_allclose(_module_logits(new, data), _graph_logits(compressed, data), rtol=1e-4, atol=1e-4)


def test_shared_weights_train_their_centroids(digits):
    module, data, model = digits
    compressed = _compressed(model, "cleanup,fuse,cleanup,dedup,prune:mode=unstructured;ratio=0.7,share:clusters=16")
    new = gp.to_module(compressed, module, samples=_rows(data, 16))
    np.testing.assert_allclose(_module_logits(new, data), _graph_logits(compressed, data), rtol=1e-4, atol=1e-4)
    shared = [layer for layer in new.modules() if hasattr(layer, "parametrizations") and isinstance(layer.parametrizations.weight[0], SharedWeight)]
    assert shared
    layer = shared[0]
    zeros = layer.weight.detach() == 0
    values = set(np.unique(layer.weight.detach().numpy()).tolist())
    assert len(values - {0.0}) <= 16
    opt = torch.optim.SGD(new.parameters(), lr=0.05)
    new.train()
    torch.nn.functional.cross_entropy(new(torch.from_numpy(data.x_train[:128])), torch.from_numpy(data.y_train[:128])).backward()
    opt.step()
    after = layer.weight.detach()
    assert torch.equal(after == 0, zeros)  # pruned entries stay pruned
    assert len(set(np.unique(after.numpy()).tolist()) - {0.0}) <= 16  # still one value per cluster
    assert set(np.unique(after.numpy()).tolist()) != values  # the centroids moved


def test_compress_result_to_module(digits):
    module, data, model = digits
    samples = _rows(data, 96)
    result = gp.compress(model, "onnxruntime", samples=samples, recipe="prune-int8", budget="2%", measure=False)
    new = result.to_module(module, samples=_rows(data, 16))
    got, want = _module_logits(new, data), _graph_logits(result.model, data)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99


def test_minilm_dynamic_int8_and_ffn_pruning():
    from graphpress.models.minilm import docstring_sentences, load_minilm, tokenize

    module = load_minilm().eval()
    tokens = tokenize(docstring_sentences(4), seq_len=32)
    example = tuple(tokens.values())
    model = gp.load(module, example)
    compressed = _compressed(model, "cleanup,fuse,cleanup,dedup,prune:ratio=0.5;include=intermediate,quantize:mode=dynamic")
    assert any(n.op_type == "MatMulInteger" for n in compressed.graph)
    feeds = {v.name: t.numpy() for v, t in zip(model.graph.inputs, example)}
    new = gp.to_module(compressed, module, example, samples=[feeds])
    ffn = new.bert.encoder.layer[0].intermediate.dense
    assert ffn.out_features == module.bert.encoder.layer[0].intermediate.dense.out_features // 2
    assert isinstance(ffn.parametrizations.weight[0], FixedFakeQuant)
    with torch.no_grad():
        got = new(*example).numpy().reshape(-1)
        plain = module(*example).numpy().reshape(-1)
    want = run_samples(compressed, [feeds])[compressed.graph.outputs[0].name].reshape(-1)
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    check = new.graphpress_check[compressed.graph.outputs[0].name]
    # dynamic quantization flips rounding steps at fp32-level differences: the graph's own floor
    # (its quantizers' inputs moved by 4 ulp) sets how close the module can be
    assert 0.99 < check["rounding_floor"] < 1.0 and check["needs"] == pytest.approx(min(AGREEMENT, 2 * check["rounding_floor"] - 1), abs=1e-5)
    assert cosine(got, want) >= check["needs"]
    assert cosine(got, want) > cosine(plain, want)  # closer to the graph than the uncompressed module is
    # the floor still tells a module that skips the input quantization from one that has it
    for sub in new.modules():
        if isinstance(sub, torch.nn.Linear):
            sub._forward_pre_hooks.clear()
    with pytest.raises(gp.GraphpressError, match="div_1.*needs"):
        _check(new, compressed, [feeds])


def test_a_module_the_model_was_not_made_from_is_refused(digits):
    from graphpress.models.cnn import DigitsCNN

    module, data, model = digits
    compressed = _compressed(model, "cleanup,fuse,cleanup,dedup,prune:ratio=0.3")
    with pytest.raises(gp.GraphpressError) as e:
        gp.to_module(compressed, DigitsCNN(width=16))
    assert "\n" not in str(e.value) and "module" in str(e.value)
    with pytest.raises(gp.GraphpressError, match="torch.nn.Module"):
        gp.to_module(compressed, "model.pt")
