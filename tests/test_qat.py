"""QAT hooks: a fake-quantized module trains (straight-through gradients), converts to weights on
their int8 grid, and ``quantize`` then keeps those weights exactly."""

from __future__ import annotations

import copy

import numpy as np
import torch

import graphpress as gp
from graphpress.ir.numeric import run
from graphpress.models.cnn import accuracy, fit
from graphpress.passes import PassManager, build_passes
from graphpress.qat import activation_ranges, convert_qat, prepare_qat


def test_qat_trains_converts_and_quantizes_losslessly(digits_cnn):
    module, data = digits_cnn
    module = copy.deepcopy(module).train()
    prepare_qat(module)
    # straight-through: gradients reach the float weights through the rounding
    x = torch.from_numpy(data.x_train[:16])
    module(x).sum().backward()
    grad = module.conv2.parametrizations.weight.original.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    module.zero_grad()
    fit(module, data, epochs=1)
    ranges = activation_ranges(module.eval())
    assert "conv1" in ranges and ranges["conv1"][1] > ranges["conv1"][0]
    convert_qat(module)
    for layer in (module.conv2, module.fc1):
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).numpy()
        scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
        np.testing.assert_allclose(w / scale, np.round(w / scale), atol=1e-3)  # on the int8 grid

    model = gp.load(module.eval(), torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes("cleanup")).run(model)  # BN not folded: conv weights stay as trained
    name = model.graph.inputs[0].name
    passes = build_passes("quantize:mode=weight_only")
    PassManager(passes).run(model)
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and "conv2" in n.inputs[0].name)
    q = dq.inputs[0].const_value.numpy().astype(np.float32)
    s = dq.inputs[1].const_value.numpy().reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(q * s, module.conv2.weight.detach().numpy(), rtol=1e-5, atol=1e-7)  # lossless
    assert accuracy(next(iter(run(model, {name: data.x_test}).values())), data.y_test) > 0.8
