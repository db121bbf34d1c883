"""``STFT`` as a framing ``Gather``, the window and a real DFT by ``MatMul`` (TVM has no STFT).

For a real signal ``[batch, length, 1]`` (or ``[batch, length]``, which ONNX Runtime reads as real), a constant ``frame_step`` and a static frame length
``N`` (the ``frame_length`` input or the window's length), ONNX's definition

    out[b, f, k] = sum_n signal[b, f*step + n] * window[n] * exp(-2*pi*i*k*n / N)

for ``frames = (length - N) // step + 1`` and ``k < N//2 + 1`` (``onesided``, the default) or
``k < N`` is computed as: ``Gather`` of the frames with a constant index matrix, ``Mul`` by
the window, and one ``MatMul`` by a constant DFT matrix (``[N, 2 * bins]``: each bin's
cosine and negated sine side by side, so the product reshapes into the trailing
real/imaginary axis; a constant window folded into its rows; computed in float64, stored in
the signal's dtype): one pass over the frames and one weight to pack instead of two. A complex signal, a frame step or length that is not constant, or a dynamic signal
length leaves the node as it is (the backend then names it). The sums run in another order
than an FFT's: the ``fusion`` tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphpress.passes.base import Pass, PassResult
from graphpress.passes.recurrent import _Builder
from graphpress.passes.registry import register

__all__ = ["DecomposeStft"]


def _int_const(value: ir.Value | None) -> int | None:
    if value is None or value.const_value is None:
        return None
    return int(value.const_value.numpy().reshape(-1)[0])


def _decompose(node: ir.Node, b: _Builder) -> ir.Value | None:
    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    signal, step_value, window, length_value = inputs[:4]
    step = _int_const(step_value)
    if signal is None or signal.shape is None or len(signal.shape) not in (2, 3) or step is None or step <= 0:
        return None
    # [batch, length, 1] as ONNX defines it, or [batch, length] (ONNX Runtime reads it as real)
    batch, length, channels = (*signal.shape, 1) if len(signal.shape) == 2 else signal.shape
    if not all(isinstance(d, int) for d in (batch, length, channels)) or channels != 1:
        return None
    n = _int_const(length_value)
    if n is None and window is not None and window.shape is not None and len(window.shape) == 1 and isinstance(window.shape[0], int):
        n = window.shape[0]
    if n is None or n <= 0 or n > length:
        return None
    frames = (length - n) // step + 1
    bins = n // 2 + 1 if node.attributes.get_int("onesided", 1) else n
    dtype = signal.dtype.numpy() if signal.dtype is not None else np.dtype(np.float32)
    index = np.arange(frames, dtype=np.int64)[:, None] * step + np.arange(n, dtype=np.int64)[None, :]
    flat = b.op("Reshape", [signal, b.const(np.array([batch, length], np.int64))])
    x = b.op("Gather", [flat, b.const(index)], axis=1)  # [batch, frames, n]
    angle = 2.0 * np.pi * np.outer(np.arange(n), np.arange(bins)) / n
    dft = np.stack([np.cos(angle), -np.sin(angle)], axis=-1).reshape(n, 2 * bins)  # real, imaginary interleaved
    taper = window.const_value.numpy().astype(np.float64).reshape(-1) if window is not None and window.const_value is not None else None
    if taper is not None and taper.size == n:
        dft = taper[:, None] * dft  # a constant window folded into the DFT's rows
    elif window is not None:
        x = b.op("Mul", [x, window])
    y = b.op("MatMul", [x, b.const(dft.astype(dtype))])  # [batch, frames, 2 * bins]
    return b.op("Reshape", [y, b.const(np.array([batch, frames, bins, 2], np.int64))])


@register
class DecomposeStft(Pass):
    """Replace real-signal STFT nodes of static shape by framing, windowing and a DFT as MatMul."""

    name = "decompose_stft"
    family = "fusion"
    description = "STFT of a real signal with static shapes as Gather (frames) * window, MatMul by cos/sin (TVM has no STFT)"

    def call(self, model: ir.Model) -> PassResult:
        done, left = 0, []
        for node in [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "STFT" and n.domain in ("", "ai.onnx")]:
            b = _Builder(node, f"{node.name or 'STFT'}/dft", model.opset_imports.get("", 0))
            out = _decompose(node, b)
            if out is None:
                left.append(node.name or "STFT")
                continue
            b.replace(model, [out])
            done += 1
        stats = {"decomposed": done}
        if left:
            stats["left"] = left
        return PassResult(model, done > 0, stats)
