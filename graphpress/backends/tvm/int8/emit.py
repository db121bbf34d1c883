"""Relax for the integer layers, and the importer converters that emit it.

:func:`int8_converters` replaces TVM's ONNX converters for ``MatMulInteger`` and ``ConvInteger``
while a model is imported: nodes the guard (:mod:`.guard`) marked with :data:`INT8_ATTR` become
the chosen ISA's dense kernel. The weight is packed at compile time (:func:`pack_weight`); the
activation zero point is applied afterwards with the weight's column sums,
``Σ(a - za)·w = Σ a·w - za·Σ w``, and activations of the other 8-bit dtype than the
instruction's move by 128 (their zero point with them). A convolution is imported as a Relax
``conv2d`` of the uint8 input (padded with its zero point) and the int8 weight, so that TVM's
``ConvertLayout`` moves it --
and the requantization, pooling and residual additions around it -- to NHWC like any
convolution; :func:`lower_int8_convs` then puts it on a padded NHWC copy of its input, im2col
and the same dense kernel (:mod:`.conv_layout`), and no transpose is left between two integer
convolutions. Integer results equal ONNX Runtime's ``MatMulInteger`` and a numpy
``ConvInteger`` bit for bit (tested).
"""

from __future__ import annotations

import contextlib

import numpy as np

from graphpress.backends.tvm.int8.conv_layout import conv_geometry, conv_key, im2col_kernel, implicit, nhwc_pad_kernel, padded_shape, pointwise, to_nchw_kernel, unfolded_weight
from graphpress.backends.tvm.int8 import winograd
from graphpress.backends.tvm.int8.depthwise import PADDED_COPY_ISAS, depthwise_call, is_uint8_depthwise
from graphpress.backends.tvm.int8.isa import Isa
from graphpress.backends.tvm.layout import relax_module_pass

__all__ = ["FALLBACK", "INT8_ATTR", "dense_unsupported", "emit_conv", "emit_matmul", "int8_converters", "is_int8_conv", "k_padded", "lower_int8_convs", "pack_weight"]

#: attribute set on MatMulInteger/ConvInteger nodes (in the backend's copy only) that get an integer kernel
INT8_ATTR = "_graphpress_int8"
#: :data:`INT8_ATTR`'s value for a layer a tile ISA (AMX) takes that runs on the ISA's fallback instead
FALLBACK = 2


def dense_unsupported(w: np.ndarray | None, zb: np.ndarray | None, a_dtype: str, shape: list[int | None] | None) -> str | None:
    """Why a ``MatMulInteger`` (int8 weight ``w``, weight zero point ``zb``, activation dtype and
    shape) cannot take an integer kernel, or None."""
    if w is None or w.dtype != np.int8 or w.ndim != 2:
        return "weight is not a constant 2-D int8 tensor"
    if zb is not None and np.any(zb != 0):
        return "weight zero point is not 0"
    if a_dtype not in ("uint8", "int8"):
        return "activation is not uint8/int8"
    if not shape or None in shape:
        return "activation shape is not static"
    return None


#: a K that is not a multiple of 4 (a one-hot of 257 byte values, Magika's first layer) is padded
#: to a multiple of this, the widest step of any kernel (AVX2's quads): zero weight rows, and as
#: many activation columns, whose products are 0
K_STEP = 8


def k_padded(w_kn: np.ndarray) -> np.ndarray:
    """The int8 ``[K, N]`` weight as its kernel takes it: as it is where K is a multiple of 4,
    else with zero rows to a multiple of :data:`K_STEP`."""
    k = w_kn.shape[0]
    if k % 4 == 0:
        return w_kn
    return np.concatenate([w_kn, np.zeros((-k % K_STEP, w_kn.shape[1]), w_kn.dtype)])


def pack_weight(w_kn: np.ndarray, multiple: int, lanes: int, depth: int = 4, dtype: str = "int8") -> tuple[np.ndarray, np.ndarray, int]:
    """int8 ``[K, N]`` -> (packed ``[Np/lanes, K/depth, lanes, depth]`` in ``dtype``, column sums
    ``[Np]`` int32, Np); N is padded to ``multiple`` columns, K must be a multiple of ``depth``
    (zero rows may pad it)."""
    k, n = w_kn.shape
    npad = -(-n // multiple) * multiple
    w = np.zeros((k, npad), np.int8)
    w[:, :n] = w_kn
    packed = np.ascontiguousarray(w.T.reshape(npad // lanes, lanes, k // depth, depth).transpose(0, 2, 1, 3).astype(dtype))
    return packed, w.astype(np.int32).sum(0), npad


def padded_columns(n: int, isa: Isa) -> int:
    """The columns ``n`` output columns are computed as: whole vectors (whole tiles on AMX), and
    on the vector kernels one vector more where their count has no divisor from 2 to 4 (5, 7,
    11, 13, 17, ...): the micro-tile's column blocks divide it, so such a count took one block a
    tile, a broadcast of every row for each weight vector. A mel spectrogram's 257 frequency
    bins: 17 vectors, 18 now (4 rows x 3 vectors a tile)."""
    blocks = -(-n // isa.n_multiple)
    if isa.tiles is None and blocks > 4 and all(blocks % c for c in (2, 3, 4)):
        blocks += 1
    return blocks * isa.n_multiple


def _pack(w_kn: np.ndarray, isa: Isa, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The weight packed for ``isa``'s kernel of an ``m``-row product, its column sums and padded N."""
    packed, colsum, npad = pack_weight(w_kn, padded_columns(w_kn.shape[1], isa), isa.lanes, isa.depth // isa.halves, isa.stored_weight(m))
    if isa.halves > 1:  # the same bytes, `halves` blocks per step of the kernel
        packed = packed.reshape(npad // isa.lanes, w_kn.shape[0] // isa.depth, isa.halves, isa.lanes, isa.depth // isa.halves)
    return packed, colsum, npad


def _dtype(ty) -> str:
    return str(ty.dtype.dtype)


def _to_kernel_dtype(a, a_dtype: str, za, isa: Isa):
    """The activation (and zero point) in the ISA's activation dtype (moved by 128)."""
    from tvm import relax

    if a_dtype == isa.activation:
        return a, za
    shift = 128 if isa.activation == "uint8" else -128
    a = relax.op.astype(relax.op.add(relax.op.astype(a, "int32"), relax.const(shift, "int32")), isa.activation)
    za = relax.const(shift, "int32") if za is None else relax.op.add(relax.op.astype(za, "int32"), relax.const(shift, "int32"))
    return a, za


def _call(bb, func, args, shape, dtype):
    from tvm import relax

    name = func.attrs["global_symbol"] if "global_symbol" in func.attrs else func.attrs["graphpress.kernel"]
    return bb.emit(relax.call_tir(bb.add_func(func, str(name)), args, relax.TensorType(shape, dtype)))


def emit_matmul(bb, a, w_kn: np.ndarray, za, isa: Isa):
    """Relax for ``MatMulInteger(a, w, za)`` (``a``: [..., K] uint8/int8) on ``isa``'s kernel (its
    fallback where the shape does not fill its tiles)."""
    from tvm import relax

    shape = [int(d) for d in a.ty.shape]
    k_given = w_kn.shape[0]
    w_kn = k_padded(w_kn)
    k, n = w_kn.shape
    m = int(np.prod(shape[:-1]))
    isa = isa.for_shape(m, k).for_weight(w_kn)
    packed, colsum, npad = _pack(w_kn, isa, m)
    a2, za = _to_kernel_dtype(relax.op.reshape(a, (m, k_given)), _dtype(a.ty), za, isa)
    if k != k_given:  # columns that meet the weight's zero rows
        a2 = relax.op.nn.pad(a2, [0, 0, 0, k - k_given])
    if isa.implicit_conv:  # the kernel writes the result's shape, the correction and what follows fused in
        out_shape = (*shape[:-1], n)
        corr = relax.const(np.zeros(npad, np.int32)) if za is None else relax.op.multiply(relax.op.astype(relax.op.reshape(za, ()), "int32"), relax.const(colsum))
        return _call(bb, isa.dense(m, npad, k, out_shape=out_shape), [bb.emit(a2), relax.const(packed), bb.emit(corr)], out_shape, "int32")
    acc = _call(bb, isa.dense(m, npad, k), [bb.emit(a2), relax.const(packed)], (m, npad), "int32")
    if za is not None:
        acc = relax.op.subtract(acc, relax.op.multiply(relax.op.astype(relax.op.reshape(za, ()), "int32"), relax.const(colsum)))
    if npad != n:
        acc = relax.op.strided_slice(acc, axes=[1], begin=[0], end=[n])
    return relax.op.reshape(acc, [*shape[:-1], n])


def emit_conv(bb, x, w_oihw: np.ndarray, zero_point: int, attrs, layout: str = "NCHW"):
    """Relax for ``ConvInteger(x, w, zx)`` (uint8 ``x`` in ``layout``, group 1): the ``conv2d`` of
    the uint8 input and the int8 weight (int32 out) minus ``zx`` times the weight's sums per
    output channel. The padding must hold ``zx``: with a zero point it is a ``pad`` op of its
    own in front of an unpadded conv2d. Relax moves both to NHWC with their neighbours (the
    build's ``ConvertLayout``, :func:`~graphpress.backends.tvm.layout.sink_permutes`), and
    :func:`lower_int8_convs` puts the conv2d on the ISA's kernels."""
    from tvm import relax

    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    nhwc = layout == "NHWC"
    if zero_point and any(pads):
        spatial = [pads[0], pads[2], pads[1], pads[3]]  # (begin, end) of H, then of W
        x = bb.emit(relax.op.nn.pad(x, [0, 0, *spatial, 0, 0] if nhwc else [0, 0, 0, 0, *spatial], pad_value=float(zero_point)))
        pads = [0, 0, 0, 0]
    acc = relax.op.nn.conv2d(
        x, relax.const(w_oihw.transpose(2, 3, 1, 0) if nhwc else w_oihw), strides=tuple(int(v) for v in attrs.get("strides", (1, 1))),
        padding=pads, dilation=tuple(int(v) for v in attrs.get("dilations", (1, 1))), data_layout=layout,
        kernel_layout="HWIO" if nhwc else "OIHW", out_dtype="int32",
    )  # fmt: skip
    if zero_point == 0:
        return acc
    corr = w_oihw.astype(np.int64).sum(axis=(1, 2, 3)).astype(np.int32) * np.int32(zero_point)
    return relax.op.subtract(bb.emit(acc), relax.const(corr.reshape((1, 1, 1, -1) if nhwc else (1, -1, 1, 1))))


def _lower_conv(bb, call, w: np.ndarray, isa: Isa, fallback: frozenset[tuple[int, ...]] = frozenset()):
    """The ISA's kernels for an int8 ``conv2d`` (NCHW/OIHW or NHWC/HWIO, zero padding): a padded
    NHWC copy (none for an NHWC input that needs no padding), im2col (none for a pointwise
    convolution, nor for an ISA whose kernel reads the unfolded rows in place from the padded
    copy: ``Isa.implicit_conv``), the dense kernel, and the result in the call's layout: a view
    of the dense result in NHWC, a transposing kernel in NCHW."""
    from tvm import relax

    attrs = call.attrs
    layout = str(attrs.data_layout)
    x = call.args[0]
    shape = [int(d) for d in x.ty.shape]
    w_oihw = w if str(attrs.kernel_layout) == "OIHW" else w.transpose(3, 2, 0, 1)
    nchw_shape = shape if layout == "NCHW" else [shape[0], shape[3], shape[1], shape[2]]
    conv_attrs = {"pads": [int(p) for p in attrs.padding], "strides": [int(v) for v in attrs.strides], "dilations": [int(v) for v in attrs.dilation]}
    if isa.fallback is not None and conv_key(nchw_shape, w_oihw.shape, conv_attrs["pads"], conv_attrs["strides"], conv_attrs["dilations"]) in fallback:
        isa = isa.fallback  # the layer guard timed the fallback's kernel faster for this shape
    g = conv_geometry(nchw_shape, w_oihw.shape, conv_attrs, isa, w_oihw)
    if layout == "NHWC" and winograd.applies(g):
        return winograd.emit_winograd(bb, x, w_oihw, g)
    isa = g["isa"]
    packed, colsum, npad = _pack(unfolded_weight(w_oihw, g["cp"], g["rp"]), isa, g["mp"])
    unpadded = not any(g["pads"]) and g["c"] == g["cp"] and not g["rp"]
    in_place = implicit(g)  # the dot-product kernels read the unfolded rows from the padded input
    if layout == "NHWC" and pointwise(g) and g["c"] == g["cp"]:
        col = bb.emit(relax.op.reshape(x, (g["mp"], g["kp"])))  # the NHWC input is the unfolded one
    elif pointwise(g):
        col = _call(bb, nhwc_pad_kernel(g, 0, layout), [x], (g["mp"], g["kp"]), "uint8")
    else:
        xp = x if layout == "NHWC" and unpadded else _call(bb, nhwc_pad_kernel(g, 0, layout), [x], padded_shape(g), "uint8")
        col = xp if in_place else _call(bb, im2col_kernel(g), [xp], (g["mp"], g["kp"]), "uint8")
    corr = np.zeros(npad, np.int64)  # acc - corr is the zero-padded convolution
    if isa.activation == "int8":  # int8 x int8: the unfolded input moves down by 128
        col = bb.emit(relax.op.astype(relax.op.subtract(relax.op.astype(col, "int32"), relax.const(128, "int32")), "int8"))
        corr = -128 * colsum
    conv = {"conv": g} if in_place else {}
    if layout == "NHWC" and isa.implicit_conv:  # the NHWC result, its correction and what follows fused in
        out_shape = (g["n"], g["oh"], g["ow"], g["oc"])
        kernel = isa.dense(g["mp"], npad, g["kp"], out_shape=out_shape, **conv)
        return _call(bb, kernel, [col, relax.const(packed), relax.const(corr.astype(np.int32))], out_shape, "int32")
    acc = _call(bb, isa.dense(g["mp"], npad, g["kp"], **conv), [col, relax.const(packed)], (g["mp"], npad), "int32")
    if layout == "NCHW":
        nchw = to_nchw_kernel(g, npad)
        return relax.call_tir(bb.add_func(nchw, str(nchw.attrs["global_symbol"])), [acc, relax.const(corr.astype(np.int32))],
                              relax.TensorType((g["n"], g["oc"], g["oh"], g["ow"]), "int32"))  # fmt: skip
    if g["mp"] != g["m"] or npad != g["oc"]:
        acc = bb.emit(relax.op.strided_slice(acc, axes=[0, 1], begin=[0, 0], end=[g["m"], g["oc"]]))
    out = relax.op.reshape(acc, (g["n"], g["oh"], g["ow"], g["oc"]))
    if corr.any():
        out = relax.op.subtract(bb.emit(out), relax.const(corr[: g["oc"]].astype(np.int32)))
    return out


def is_int8_conv(call, weight) -> bool:
    """Whether a Relax call is a conv2d :func:`emit_conv` wrote: a uint8 input of static shape,
    a constant int8 ``weight`` (the call's second argument, resolved), group 1, the output in
    the input's layout."""
    import tvm

    if not (isinstance(call, tvm.relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.nn.conv2d"))):
        return False
    layout, shape = str(call.attrs.data_layout), call.args[0].ty.shape
    return (
        _dtype(call.args[0].ty) == "uint8" and isinstance(weight, tvm.ir.GenericConst) and _dtype(weight.ty) == "int8"
        and int(call.attrs.groups) == 1 and str(call.attrs.out_layout) == layout and layout in ("NCHW", "NHWC")
        and str(call.attrs.kernel_layout) == ("OIHW" if layout == "NCHW" else "HWIO")
        and shape is not None and all(hasattr(d, "value") for d in shape)
    )  # fmt: skip


def lower_int8_convs(isa: Isa, fallback=()):
    """A Relax module pass: every conv2d :func:`is_int8_conv` accepts onto ``isa``'s kernels (those
    whose :func:`~.conv_layout.conv_key` is in ``fallback`` onto ``isa.fallback``'s: the layer
    guard's ``fallback_convs``), and every depthwise conv2d of a dequantized uint8 map onto one
    kernel that reads the uint8 map (:mod:`.depthwise`); run after layout conversion, before
    legalization."""
    fallback = frozenset(tuple(k) for k in fallback)
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Lower(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return call
            weight, data = (self.resolve(a) for a in call.args[:2][::-1])
            if is_int8_conv(call, weight):
                return _lower_conv(self.builder_, call, weight.value.numpy(), isa, fallback)
            if is_uint8_depthwise(call, data, weight):
                return depthwise_call(self.builder_, call, data, weight, isa.name in PADDED_COPY_ISAS)
            return call

        def resolve(self, expr):
            """The value a variable is bound to, through variables bound to variables."""
            while isinstance(expr, relax.Var) and self.lookup_binding(expr) is not None:
                expr = self.lookup_binding(expr)
            return expr

    return relax_module_pass(Lower, "LowerInt8Convs")


def _static_shape(ty) -> list[int | None] | None:
    if ty.shape is None:
        return None
    return [int(d.value) if hasattr(d, "value") else None for d in ty.shape]


@contextlib.contextmanager
def int8_converters(isa: Isa):
    """Within the block, TVM's ONNX importer lowers ``MatMulInteger``/``ConvInteger`` nodes marked
    with :data:`INT8_ATTR` onto ``isa``'s integer kernels (others keep the importer's lowering)."""
    import tvm
    from tvm.relax.frontend.onnx import onnx_frontend

    original_map = onnx_frontend._get_convert_map
    base = original_map()["MatMulInteger"]

    def constant(value) -> np.ndarray | None:
        return value.value.numpy() if isinstance(value, tvm.ir.GenericConst) else None

    class Int8MatMulInteger(base):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            if attr.get(INT8_ATTR):
                a = bb.normalize(inputs[0])
                za = inputs[2] if len(inputs) > 2 else None
                zb = inputs[3] if len(inputs) > 3 else None
                w = constant(inputs[1])
                zb_np = None if zb is None else (constant(zb) if constant(zb) is not None else np.array([1]))
                if dense_unsupported(w, zb_np, _dtype(a.ty), _static_shape(a.ty)) is None:
                    return emit_matmul(bb, a, w, za, isa.fallback if attr.get(INT8_ATTR) == FALLBACK and isa.fallback is not None else isa)
            return base._impl_v10(bb, inputs, attr, params)

    class Int8ConvInteger(onnx_frontend.OnnxOpConverter):
        """TVM's importer has no ConvInteger: the ISA's kernel, or a generic (slow) int32 conv2d
        (the int8 plan never leaves a node there)."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            from tvm import relax

            x, w = bb.normalize(inputs[0]), inputs[1]
            zx = inputs[2] if len(inputs) > 2 else None
            w_np = constant(w)
            zx_np = np.zeros((), np.uint8) if zx is None else constant(zx)
            if attr.get(INT8_ATTR) and w_np is not None and zx_np is not None and _dtype(x.ty) == "uint8":
                return emit_conv(bb, x, w_np, int(zx_np.reshape(-1)[0]), attr)
            xi = relax.op.astype(x, "int32")
            if zx is not None:
                xi = relax.op.subtract(xi, relax.op.astype(zx, "int32"))
            pads = attr.get("pads", (0, 0, 0, 0))
            return relax.op.nn.conv2d(xi, relax.op.astype(w, "int32"), strides=attr.get("strides", (1, 1)), padding=pads,
                                      dilation=attr.get("dilations", (1, 1)), out_dtype="int32")  # fmt: skip

    def patched():
        table = original_map()
        table["MatMulInteger"] = Int8MatMulInteger
        table["ConvInteger"] = Int8ConvInteger
        return table

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original_map
