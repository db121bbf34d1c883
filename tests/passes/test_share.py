"""``share``: k-means codebooks with packed indices that ONNX Runtime runs; ``unshare``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.errors import SpecError
from graphpress.ir.io import to_proto
from graphpress.ir.numeric import run
from graphpress.models.cnn import accuracy
from graphpress.passes import NumericInstrument, PassManager, build_passes
from graphpress.passes.share import TAG, Share, Unshare, kmeans_1d, sharing_rate
from tests.conftest import make_model, tensor


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_1d_is_a_lloyd_fixed_point(init):
    x = np.random.default_rng(0).standard_normal(5000)
    c, idx = kmeans_1d(x, 16, init=init, iterations=300)
    assert 2 <= c.size <= 16 and np.all(np.diff(c) > 0)
    # every point sits on its nearest centroid
    nearest = np.abs(x[:, None] - c[None, :]).argmin(1)
    np.testing.assert_array_equal(np.abs(x - c[idx]), np.abs(x - c[nearest]))
    # every centroid is the mean of its points
    for k in range(c.size):
        np.testing.assert_allclose(c[k], x[idx == k].mean(), rtol=1e-9, atol=1e-9)


def test_kmeans_1d_with_few_distinct_values_is_exact():
    x = np.repeat([-1.5, 0.0, 2.25], 7)
    c, idx = kmeans_1d(x, 16)
    np.testing.assert_array_equal(c[idx], x)


def test_sharing_rate_is_deep_compressions_formula():
    # n = 1000 weights, 16 clusters: 1000*32 / (1000*4 + 16*32)
    assert sharing_rate(1000, 16) == pytest.approx(32000 / 4512)
    assert sharing_rate(1000, 16, codebooks=2) == pytest.approx(32000 / (4000 + 1024))


def _digits_model(digits_cnn):
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    return model, data


def _accuracy(model, data):
    name = model.graph.inputs[0].name
    return accuracy(next(iter(run(model, {name: data.x_test}).values())), data.y_test)


@pytest.mark.parametrize("spec", ["share", "share:clusters=32", "share:clusters=256", "share:scope=global", "share:init=density"])
def test_shared_digits_cnn_runs_in_ort_and_keeps_its_accuracy(digits_cnn, spec):
    model, data = _digits_model(digits_cnn)
    base = _accuracy(model, data)
    name = model.graph.inputs[0].name
    inst = NumericInstrument({name: data.x_test[:64]}, "digits")
    record = PassManager(build_passes(spec), [inst]).run(model).records[0]
    # the 'sharing' tolerance (cosine >= 0.99), against the torch module the model was exported from
    module, _ = digits_cnn
    with torch.no_grad():
        want = module(torch.from_numpy(data.x_test[:64])).numpy().ravel().astype(np.float64)
    got = next(iter(run(model, {name: data.x_test[:64]}).values())).ravel().astype(np.float64)
    cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine >= 0.99, cosine
    assert not np.allclose(got, want, rtol=1e-4, atol=1e-4)  # the weights were clustered: the function moved
    stats = record.stats
    assert stats["shared"] == 3  # conv2, conv3, fc1 (conv1 and fc2 are under min_size)
    clusters = stats["clusters"]
    assert stats["bits_per_weight"] == pytest.approx(4 if clusters <= 16 else 8, abs=0.2)
    assert stats["bytes_after"] < stats["bytes_before"] / (7 if clusters <= 16 else 3.9)
    for layer in stats["layers"].values():
        assert layer["clusters"] <= clusters and layer["mse"] > 0 and layer["entropy_bits"] <= np.log2(clusters) + 1e-9
    assert _accuracy(model, data) >= base - 0.01
    if "global" in spec:
        books = [v for v in model.graph.initializers if "codebook" in v]
        assert books == ["graphpress.share_codebook"]
    assert record.weight_bytes is not None and record.weight_bytes < 0.3 * sum(
        v.const_value.nbytes for v in _digits_model(digits_cnn)[0].graph.initializers.values()
    )


def _odd_model(n_out: int) -> ir.Model:
    w = np.random.default_rng(5).standard_normal((33, n_out)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 33])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n_out])],
        [tensor("W", w)],
    )
    return gp.load(proto)


@pytest.mark.parametrize("clusters", [7, 16, 200])
def test_stored_form_decodes_to_codebook_lookup(clusters):
    """Odd element counts, nibble and byte indices: what ORT computes is exactly codebook[indices]."""
    model = _odd_model(31)  # 33*31 = 1023 elements: odd
    w = model.graph.initializers["W"].const_value.numpy().astype(np.float64)
    Share(clusters=clusters, min_size=1)(model)
    c, idx = kmeans_1d(w, clusters)
    x = np.random.default_rng(6).standard_normal((2, 33)).astype(np.float32)
    got = run(model, {"x": x})["y"]
    want = x @ c.astype(np.float32)[idx].reshape(w.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    kinds = {n.op_type for n in model.graph if TAG in n.metadata_props}
    assert ("BitShift" in kinds) == (clusters <= 16)


def test_pruned_zeros_stay_zero(digits_cnn):
    model, _ = _digits_model(digits_cnn)
    PassManager(build_passes("prune:mode=unstructured;ratio=0.6")).run(model)
    zeros = {n: int((v.const_value.numpy() == 0).sum()) for n, v in model.graph.initializers.items() if v.const_value.size >= 1024}
    Share(clusters=16)(model)
    Unshare()(model)
    for name, count in zeros.items():
        assert int((model.graph.initializers[name].const_value.numpy() == 0).sum()) == count


def test_cleanup_does_not_fold_lookups_and_unshare_does(digits_cnn):
    model, data = _digits_model(digits_cnn)
    Share()(model)
    shared = run(model, {model.graph.inputs[0].name: data.x_test[:16]})
    PassManager(build_passes("cleanup")).run(model)
    assert sum(TAG in n.metadata_props for n in model.graph) > 0
    result = Unshare()(model)
    assert result.stats["folded_lookups"] > 0 and not any(TAG in n.metadata_props for n in model.graph)
    dense = run(model, {model.graph.inputs[0].name: data.x_test[:16]})
    for k in shared:
        np.testing.assert_allclose(dense[k], shared[k], rtol=1e-5, atol=1e-5)


def test_bad_options():
    with pytest.raises(SpecError, match="clusters"):
        build_passes("share:clusters=1")
    with pytest.raises(SpecError, match="scope"):
        build_passes("share:scope=everywhere")
    with pytest.raises(Exception, match="Foo"):
        Share(ops="Conv|Foo")(_odd_model(31))


def test_tvm_compiles_shared_weights_as_dense(digits_cnn):
    from graphpress.backends.tvm import compile_model

    model, data = _digits_model(digits_cnn)
    Share(clusters=16)(model)
    name = model.graph.inputs[0].name
    feeds = {name: data.x_test[:1]}
    compiled = compile_model(model, "x86", input_shapes={name: [1, 1, 8, 8]})
    assert compiled.meta["build"]["prepare"]["unshared_lookups"] > 0
    got = compiled.run_named(**feeds)
    want = run(model, feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
    # the shared model is not changed by compiling
    assert any(TAG in n.metadata_props for n in ir.serde.deserialize_model(to_proto(model)).graph)
