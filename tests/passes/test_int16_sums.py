"""The weights AVX2's fastest int8 kernel needs: no group of four weights that share one int16 sum
(two vpmaddubsw pair sums added in int16) can saturate it. The fit is checked against the
groups written out index by index, and the quantizer applies it for targets without an int8 dot
product only, within its noise budget, with ONNX Runtime running the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.ir import numeric
from graphpress.passes import PassContext, PassManager, TargetFacts, build_passes
from graphpress.passes.int16_sums import QUAD_LIMIT, fit_int16_quads, fits_int16_quads


def _worst_sums(w_kn: np.ndarray) -> np.ndarray:
    """[K/8, 2, N]: the largest |int16 sum| each group can reach with uint8 activations, the
    groups written out: pairs (0, 1) and (4, 5) of a block of 8 rows share one word, (2, 3) and
    (6, 7) the other."""
    k, n = w_kn.shape
    w = w_kn.astype(np.int64)
    out = np.zeros((k // 8, 2, n), np.int64)
    for b in range(k // 8):
        for word in range(2):
            rows = [8 * b + 2 * word, 8 * b + 2 * word + 1, 8 * b + 4 + 2 * word, 8 * b + 5 + 2 * word]
            group = w[rows]
            out[b, word] = np.maximum(255 * np.maximum(group, 0).sum(0), -255 * np.minimum(group, 0).sum(0))
    return out


def _trained_like(rng, k, n, bits=7):
    """Bell-shaped integer weights, the largest of each column at the 7-bit limit (as a
    per-channel symmetric quantizer makes them)."""
    w = rng.standard_normal((k, n))
    return np.round(w / np.abs(w).max(0) * (2 ** (bits - 1))).astype(np.int8)


def test_the_fit_brings_every_group_within_int16_and_changes_only_those_over():
    w = _trained_like(np.random.default_rng(0), 576, 64)
    over = _worst_sums(w) > 32767
    assert over.any(), "the test weight should have groups over the limit"
    fitted, changed = fit_int16_quads(w)
    assert changed == int(over.sum())
    assert _worst_sums(fitted).max() <= 32767 and fits_int16_quads(fitted)
    assert not fits_int16_quads(w)
    # groups under the limit keep every weight; changed weights move toward 0, never change sign
    rows_of = np.array([[0, 1, 4, 5], [2, 3, 6, 7]])
    for b, word, col in zip(*np.nonzero(~over)):
        rows = 8 * b + rows_of[word]
        np.testing.assert_array_equal(fitted[rows, col], w[rows, col])
    assert np.all(np.abs(fitted.astype(int)) <= np.abs(w.astype(int))) and np.all(fitted.astype(int) * w.astype(int) >= 0)
    # brought down to at most 3 under the limit (equal integer steps), not further
    assert np.all(_worst_sums(fitted)[over] >= 255 * (QUAD_LIMIT - 3))


def test_a_weight_that_fits_or_cannot_be_grouped_is_returned_as_is():
    rng = np.random.default_rng(1)
    small = rng.integers(-32, 33, (64, 16)).astype(np.int8)  # 4 x 32 = 128: at the limit
    fitted, changed = fit_int16_quads(small)
    assert fitted is small and changed == 0 and fits_int16_quads(small)
    odd = _trained_like(rng, 36, 16)  # K not a multiple of 8: no kernel groups it
    fitted, changed = fit_int16_quads(odd)
    assert fitted is odd and changed == 0 and not fits_int16_quads(odd)


def test_a_weight_the_fit_would_change_more_than_its_rounding_did_stays():
    """Uniformly drawn weights (a randomly initialized classifier's) have a third of their groups
    over the limit: fitting them would add far more noise than rounding them to 7 bits did, so
    the weight stays as it is (its layer takes the pairs kernel) unless the budget is lifted."""
    w = np.random.default_rng(2).integers(-64, 65, (512, 100)).astype(np.int8)
    kept, none = fit_int16_quads(w)
    assert kept is w and none == 0
    fitted, changed = fit_int16_quads(w, noise=None)
    assert changed > 0.1 * w.size / 4 and fits_int16_quads(fitted)


def _bell_cnn():
    """Three 3x3 convolutions (3 -> 32 -> 64 -> 64 channels) with bell-shaped weights, as trained
    networks have (a briefly trained one keeps its uniform initialization, and layers of 16
    channels have too few weights per output channel for their largest to sit far out in the
    tail: fitting either would cost more than the budget allows), and a classifier."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    ).eval()
    for conv in module[0:6:2]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    return module


@pytest.mark.parametrize("dot_product", [False, True])
def test_the_quantizer_fits_weights_for_a_target_without_an_int8_dot_product_only(dot_product):
    """Static QDQ of a CNN for an x86 target with and without VNNI: only without does the
    quantizer make 7-bit weights and fit their groups of four (in the integer kernel's K order,
    ky, kx, channel); ONNX Runtime runs the model it writes as close to the float model as the
    same quantization without the fit."""
    from graphpress.passes import quantization

    module = _bell_cnn()
    x = torch.rand(1, 3, 12, 12)
    model = gp.load(module, x)
    name = model.graph.inputs[0].name
    samples = [{name: torch.rand(1, 3, 12, 12).numpy()} for _ in range(8)]
    tests = [{name: torch.rand(1, 3, 12, 12).numpy()} for _ in range(8)]
    reference = [numeric.run(model, t) for t in tests]
    quantized = {}
    for fit in (True, False):
        m = gp.load(module, x)
        context = PassContext(samples=samples, target=TargetFacts("x86", dot_product))
        if fit:
            stats = PassManager(build_passes("quantize:mode=static"), context=context).run(m).records[0].stats
        else:
            original = quantization.fit_weight_quads
            quantization.fit_weight_quads = lambda model: (0, 0)
            try:
                PassManager(build_passes("quantize:mode=static"), context=context).run(m)
            finally:
                quantization.fit_weight_quads = original
        quantized[fit] = m
    assert stats["reduce_range"] is (not dot_product)
    if dot_product:
        assert "int16_quads" not in stats
        return
    assert stats["int16_quads"] > stats["int16_quads_fitted"] > 0, stats
    fitted = 0
    for conv in (n for n in quantized[True].graph if n.op_type == "Conv"):
        w = conv.inputs[1].producer().inputs[0].const_value.numpy()
        o, c, kh, kw = w.shape
        if c % 8 == 0:  # fitted, unless that is over the noise budget
            kn = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
            assert fits_int16_quads(kn) or fit_int16_quads(kn)[1] == 0, conv.name
            fitted += fits_int16_quads(kn)
    assert fitted == 2, "both 3x3 convolutions of 32 and 64 channels fit the quads kernel"

    def cosine(m):
        outs = [numeric.run(m, t) for t in tests]
        return min(float(np.dot(a[k].ravel(), r[k].ravel()) / np.linalg.norm(a[k]) / np.linalg.norm(r[k])) for a, r in zip(outs, reference) for k in r)

    assert cosine(quantized[True]) >= cosine(quantized[False]) - 1e-3 and cosine(quantized[True]) > 0.99


@pytest.mark.parametrize(
    ("shape", "dilation", "run"),
    [((16, 3, 7, 7), 1, 24), ((8, 3, 5, 5), 1, 16), ((8, 1, 1, 8), 1, 8), ((8, 16, 3, 3), 1, 0), ((8, 16, 3, 3), 2, 0),
     ((8, 3, 3, 3), 1, None), ((8, 3, 7, 7), 2, None), ((8, 3, 11, 11), 1, None), ((8, 12, 3, 3), 1, None)],
)  # fmt: skip
def test_a_convolution_is_grouped_in_the_order_its_kernel_reads_it(shape, dilation, run):
    """The quantizer's K order of a convolution weight is the backend's unfolded weight for the
    geometry the AVX2 kernels take (row runs where a pixel's channels would be padded: a 7x7 stem
    of 3 channels, 24 bytes a row); None where no kernel reads K in steps of 8 (3x3 of 3 channels:
    taps of 4 bytes; 11x11 of 3: rows of 36; 12 channels: runs of 12), and the way back is exact."""
    from graphpress.backends.tvm.int8.conv_layout import conv_geometry, unfolded_weight
    from graphpress.backends.tvm.int8.isa import AVX2
    from graphpress.passes.int16_sums import conv_kernel_order

    w = np.random.default_rng(3).integers(-64, 65, shape).astype(np.int8)
    order = conv_kernel_order(w, dilation)
    k = shape[2] // 2
    g = conv_geometry([1, shape[1], 16, 16], shape, {"pads": [k, k, k, k], "dilations": [dilation, dilation]}, AVX2)
    if run is None:
        assert order is None
        return
    assert g["rp"] == run
    kn, weights, back = order
    np.testing.assert_array_equal(kn, unfolded_weight(w, g["cp"], g["rp"]))
    assert weights == w.size and kn.shape[0] % 8 == 0
    np.testing.assert_array_equal(back(kn), w)


def test_a_stem_of_three_channels_is_fitted_in_its_rows():
    """A 5x5 convolution of 3 channels takes row runs of 16 bytes on AVX2; the quantizer fits its
    weight in that order, and the backend then picks the quads kernel for it."""
    from graphpress.backends.tvm.int8.conv_layout import conv_geometry, unfolded_weight
    from graphpress.backends.tvm.int8.isa import AVX2, AVX2_U8S8_QUADS

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 5, stride=2, padding=2), torch.nn.ReLU()).eval()
    with torch.no_grad():  # heavy-tailed, as trained first layers are: a fit within the noise budget
        module[0].weight.copy_(torch.from_numpy(np.random.default_rng(0).standard_t(3, (32, 3, 5, 5)).astype(np.float32) * 0.05))
    x = torch.rand(1, 3, 16, 16)
    model = gp.load(module, x)
    name = model.graph.inputs[0].name
    samples = [{name: torch.rand(1, 3, 16, 16).numpy()} for _ in range(4)]
    context = PassContext(samples=samples, target=TargetFacts("x86", False))
    stats = PassManager(build_passes("quantize:mode=static"), context=context).run(model).records[0].stats
    conv = next(n for n in model.graph if n.op_type == "Conv")
    w = conv.inputs[1].producer().inputs[0].const_value.numpy()
    attrs = {"pads": [2, 2, 2, 2], "strides": [2, 2]}
    g = conv_geometry([1, 3, 16, 16], w.shape, attrs, AVX2)
    assert g["rp"] == 16
    assert stats["int16_quads_fitted"] > 0, stats
    assert fits_int16_quads(unfolded_weight(w, g["cp"], g["rp"]))
    assert conv_geometry([1, 3, 16, 16], w.shape, attrs, AVX2, w)["isa"] is AVX2_U8S8_QUADS
