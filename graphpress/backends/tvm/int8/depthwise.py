"""Depthwise convolutions of a quantized model, reading their uint8 input.

A depthwise convolution has no integer kernel here: it runs in float on its dequantized
weights. Fed by a float map (the activation's Quantize/Dequantize pair made a clip), it reads
four bytes per element of a map its producer wrote in full -- MobileNetV2's 17 depthwise layers
and the requantizations in front of them were about half its int8 time. Kept as
``conv2d(dequantize(q))`` instead (:func:`~.qdq.bypass_float_qdq` leaves such pairs), the
producer writes uint8 and :func:`depthwise_call` builds one kernel that dequantizes in the
convolution's loads: ``Σ (q - zp) · (s · w)``, padding with 0 in float (the zero point in
uint8), the scale folded into the weights. The analytic schedule (:mod:`..schedules`) tiles it
like any NHWC depthwise convolution, the padding and the conversion in the tile's vector loads
(on x86's 256-bit classes the padding is a uint8 copy made first: :data:`PADDED_COPY_ISAS`),
and the bias and the next quantization fuse behind it. Same arithmetic as ONNX Runtime's
``DequantizeLinear -> Conv`` up to float rounding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PADDED_COPY_ISAS", "depthwise_call", "is_uint8_depthwise"]

#: the int8 ISAs (:mod:`.isa` names) whose depthwise kernels read a zero-padded uint8 copy of
#: their input instead of testing the bounds in the tile's loads: x86's 256-bit classes, which
#: have no mask registers. There each load's padding test became a lane mask built from the
#: scalar test (a move, a broadcast, a widening, two shifts, an and: six instructions per load
#: for one FMA or two); the copy is one pass over a byte per element. MobileNetV2 int8 on a
#: 2-core Zen 5, both in one process, alternating: AVX2 0.95-0.98x the time (8-bit weights;
#: quantized for AVX2 0.96-0.98x; AVX-VNNI 0.96-0.98x), its depthwise
#: kernels 15-25 % faster (56x56x144 98 -> 82 us, 112x112x32 105 -> 78); on AVX-512 VNNI, whose
#: masked loads test the bounds for free, 1.09-1.11x, so it keeps the tests
PADDED_COPY_ISAS = frozenset({"avx2", "avx2_u8s8", "avx2_u8s8_quads", "avx_vnni"})


def _const(expr) -> np.ndarray | None:
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def is_uint8_depthwise(call, dequantize, weight) -> bool:
    """Whether ``call`` (a Relax conv2d) is an NHWC depthwise convolution (channel multiplier 1,
    HWOI or HWIO weights) of ``dequantize`` -- a per-tensor ``dequantize`` of a uint8 map of
    static shape with constant scale and zero point -- with a constant float ``weight``."""
    import tvm

    if not (isinstance(dequantize, tvm.relax.Call) and isinstance(dequantize.op, tvm.ir.Op) and dequantize.op.name == "relax.dequantize"):
        return False
    q, scale, zp = dequantize.args
    shape = q.ty.shape
    if str(q.ty.dtype.dtype) != "uint8" or shape is None or not all(hasattr(d, "value") for d in shape) or len(shape) != 4:
        return False
    s, z, w = _const(scale), _const(zp), _const(weight)
    if s is None or z is None or s.size != 1 or z.size != 1 or w is None or w.dtype != np.float32:
        return False
    attrs = call.attrs
    channels = int(shape[3].value)
    return (
        str(attrs.data_layout) == "NHWC" and str(attrs.out_layout) == "NHWC" and str(attrs.kernel_layout) in ("HWOI", "HWIO")
        and int(attrs.groups) == channels and channels > 1 and w.ndim == 4 and w.size == w.shape[0] * w.shape[1] * channels
        and str(call.ty.dtype.dtype) == "float32"
    )  # fmt: skip


def depthwise_call(bb, call, dequantize, weight, padded_copy: bool = False):
    """``call`` as one TIR kernel reading the uint8 map (see the module's doc); with
    ``padded_copy`` (:data:`PADDED_COPY_ISAS`), from a zero-padded uint8 copy of it made first."""
    from tvm import relax, te, tirx, topi

    q, scale, zp = dequantize.args
    n, h, wd, c = (int(d.value) for d in q.ty.shape)
    w = _const(weight)
    kh, kw = w.shape[:2]
    scaled = (w.reshape(kh, kw, c) * np.float32(_const(scale).reshape(()))).astype(np.float32)
    zero = float(_const(zp).reshape(()))
    pt, pl, pb, pr = (int(p) for p in call.attrs.padding)
    sh, sw = (int(v) for v in call.attrs.strides)
    dh, dw = (int(v) for v in call.attrs.dilation)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1

    def i64(*dims):  # the shapes Relax gives its own kernels: FuseTIR matches buffers by type
        return tuple(tirx.IntImm("int64", d) for d in dims)

    x = te.placeholder(i64(n, h, wd, c), "uint8", name="q")
    k = te.placeholder(i64(kh, kw, c), "float32", name="w")

    def load(b, y, xx, ch):  # the dequantized, zero-padded input
        inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < wd + pl)
        # a load clamped into the map and a select, not ``if_then_else`` (which branches around
        # the load): branches in the tile's loop kept LLVM from holding the accumulators in
        # registers, every FMA was followed by a store
        yc = tirx.max(tirx.min(y - pt, h - 1), 0)
        xc = tirx.max(tirx.min(xx - pl, wd - 1), 0)
        return tirx.Select(inside, x[b, yc, xc, ch].astype("float32") - tirx.const(zero, "float32"), tirx.const(0.0, "float32"))

    if padded_copy and (pt or pl or pb or pr):
        pad_u8 = topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, 0], pad_value=tirx.const(int(zero), "uint8"), name="pad")
        padded = te.compute(i64(n, h + pt + pb, wd + pl + pr, c), lambda b, y, xx, ch: pad_u8[b, y, xx, ch].astype("float32") - tirx.const(zero, "float32"), name="dequantize_pad")
    else:
        padded = te.compute(i64(n, h + pt + pb, wd + pl + pr, c), load, name="dequantize_pad")
    ry, rx = te.reduce_axis(i64(0, kh), name="ky"), te.reduce_axis(i64(0, kw), name="kx")
    out = te.compute(i64(n, oh, ow, c), lambda b, y, xx, ch: te.sum(padded[b, y * sh + ry * dh, xx * sw + rx * dw, ch] * k[ry, rx, ch], axis=[ry, rx]), name="depthwise")
    name = f"graphpress_uint8_depthwise_{n}x{h}x{wd}x{c}_k{kh}x{kw}_s{sh}x{sw}_d{dh}x{dw}_p{pt}_{pl}_{pb}_{pr}_z{int(zero)}"
    # private (no global symbol): once the bias and the quantization fused behind it, nothing is left of it
    func = te.create_prim_func([x, k, out]).without_attr("global_symbol").with_attr({"op_pattern": 4})
    gv = bb.add_func(func, name)
    return relax.call_tir(gv, [q, relax.const(scaled)], relax.TensorType((n, oh, ow, c), "float32"))
