"""Quantization-aware training hooks: the fake-quant form of a torch module, for fine-tuning.

:func:`prepare_qat` makes every Conv/Linear of a module compute with fake-quantized tensors, the
arithmetic ``quantize`` (static, U8S8) will give it:

* weights: symmetric int8 per output channel (scale ``max|w| / 127`` of the current weights),
  through ``torch.fake_quantize_per_channel_affine``;
* inputs: asymmetric uint8 per tensor, the range a running min/max (exponential moving average)
  of what the layer has seen, through ``torch.fake_quantize_per_tensor_affine``.

Both are straight-through estimators: the forward pass rounds, the backward pass lets the
gradient through inside the range (and stops it outside), so the module trains as usual.
:func:`convert_qat` removes the hooks and leaves each weight on its int8 grid; exported with
``gp.load`` and quantized with ``quantize:mode=static``, those weights quantize without error,
and :func:`activation_ranges` gives the learned input ranges.

Example::

    module = prepare_qat(module)
    fit(module, data, epochs=2)          # any training loop
    convert_qat(module)
    model = gp.load(module, example)     # then quantize:mode=static
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["FixedFakeQuant", "InputFakeQuant", "SharedWeight", "activation_ranges", "convert_qat", "prepare_qat"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FakeQuantWeight(nn.Module):
    """Per-output-channel symmetric int8 fake quantization (straight-through)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.detach().reshape(w.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _InputObserver:
    """Forward pre-hook: tracks the input range (EMA) and fake-quantizes the input to uint8."""

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.range: tuple[float, float] | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if module.training or self.range is None:
            lo, hi = min(float(x.detach().min()), 0.0), max(float(x.detach().max()), 0.0)
            if self.range is None:
                self.range = (lo, hi)
            else:
                m = self.momentum
                self.range = (m * self.range[0] + (1 - m) * lo, m * self.range[1] + (1 - m) * hi)
        lo, hi = self.range
        scale = max((hi - lo) / 255.0, 1e-12)
        zero = int(min(max(round(-lo / scale), 0), 255))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


def prepare_qat(module: nn.Module, *, weights: bool = True, inputs: bool = True, momentum: float = 0.9) -> nn.Module:
    """Add fake quantization to every Conv/Linear of ``module`` (in place; also returned)."""
    for layer in module.modules():
        if not isinstance(layer, _LAYERS) or hasattr(layer, "_graphpress_qat"):
            continue
        handles = []
        if weights:
            parametrize.register_parametrization(layer, "weight", FakeQuantWeight())
        if inputs:
            observer = _InputObserver(momentum)
            handles.append(layer.register_forward_pre_hook(observer))
            layer._graphpress_observer = observer
        layer._graphpress_qat = handles
    return module


def activation_ranges(module: nn.Module) -> dict[str, tuple[float, float]]:
    """The learned input range of every fake-quantized layer, by module name."""
    return {name: layer._graphpress_observer.range for name, layer in module.named_modules()
            if getattr(layer, "_graphpress_observer", None) is not None and layer._graphpress_observer.range is not None}  # fmt: skip


def convert_qat(module: nn.Module) -> nn.Module:
    """Remove the fake quantization (in place); each weight keeps its fake-quantized value, which
    lies on its per-channel int8 grid."""
    for layer in module.modules():
        handles = getattr(layer, "_graphpress_qat", None)
        if handles is None:
            continue
        for h in handles:
            h.remove()
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        del layer._graphpress_qat
    return module


class FixedFakeQuant(nn.Module):
    """Fake quantization on a fixed grid (the scales and zero points a quantized graph chose):
    per tensor, or per channel along ``axis``; straight-through in the backward pass. As a
    weight parametrization it keeps a fine-tuned weight on the grid the graph's integer
    kernels use."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int, axis: int | None = None):
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(-1).clone())
        self.register_buffer("zero_point", zero_point.detach().reshape(-1).to(torch.int32).clone())
        self.quant_min, self.quant_max, self.axis = int(quant_min), int(quant_max), axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale[0]), int(self.zero_point[0]), self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis % x.dim(), self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        return f"[{self.quant_min}, {self.quant_max}], axis={self.axis}, {self.scale.numel()} scale(s)"


class _DynamicUint8(torch.autograd.Function):
    """ONNX ``DynamicQuantizeLinear`` then dequantize: uint8 over ``[min(x, 0), max(x, 0)]``,
    computed per call; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        if float(scale) == 0.0:
            return x.clone()
        zero = torch.clamp(torch.round(-lo / scale), 0, 255)
        q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
        return (q - zero) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class InputFakeQuant:
    """Forward pre-hook: fake-quantizes a layer's input as the quantized graph quantizes it --
    on the fixed grid of a static QDQ graph, or per call (``dynamic``) as ``DynamicQuantizeLinear``."""

    def __init__(self, fake: FixedFakeQuant | None = None):
        self.fake = fake

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (_DynamicUint8.apply(x) if self.fake is None else self.fake(x), *args[1:])


class SharedWeight(nn.Module):
    """A weight whose entries share a few values (k-means weight sharing): the stored parameter
    is the codebook, the cluster of each entry is fixed, and zeros (pruned entries) stay zero.
    Training it trains the centroids, each receiving the summed gradient of its cluster
    (Deep Compression's fine-tuning of shared weights)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        values, index = torch.unique(weight.detach(), return_inverse=True)
        self.register_buffer("index", index.to(torch.int64))
        self.register_buffer("nonzero", (weight.detach() != 0).to(weight.dtype))
        self.shape = tuple(weight.shape)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return codebook[self.index] * self.nonzero

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        values = torch.zeros(int(self.index.max()) + 1, dtype=weight.dtype, device=weight.device)
        return values.scatter(0, self.index.reshape(-1), weight.detach().reshape(-1))

    def extra_repr(self) -> str:
        return f"{int(self.index.max()) + 1} values shared by {self.index.numel()} weights"
