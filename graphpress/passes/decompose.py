"""Ops without an ONNX function body, written as simpler ONNX ops where the shapes are static.

A compiler lowers the simple ops well (``Gather``, ``MatMul``, ``MatMulInteger``, ``Where``,
``GatherElements``); these ops it may not know, or know only in part. Each decomposition here
computes what ONNX defines (checked against ONNX Runtime by the tests and by
``benchmarks/conformance.py``), and a node it cannot write statically (a dynamic shape, a
non-constant parameter) is left as it is and named in the pass's stats.

* ``Resize`` (opset 11 on) and ``Upsample``: interpolation is separable (ONNX applies it one
  axis at a time), so each resized axis is one constant matrix ``W[out, in]`` (plus a bias
  row for ``tf_crop_and_resize``'s extrapolated points): ``Gather`` where every row picks one
  input (``nearest``), else ``MatMul`` (``linear``, ``cubic``, ``antialias``). ``W`` is
  computed by ONNX's own reference implementation of one axis
  (``onnx.reference.ops.op_resize._interpolate_1d_along_axis`` on an identity matrix), so
  every coordinate mode, ``axes``, ``keep_aspect_ratio_policy``, ``exclude_outside`` and
  ``cubic_coeff_a`` mean what ONNX says. Integer data is resized by ``nearest`` only.
* ``QLinearMatMul``: ``MatMulInteger`` (the same zero points) scaled by
  ``a_scale * b_scale / y_scale`` in float32 and requantized by ``QuantizeLinear`` with scale 1
  (round half to even, saturate), as ONNX defines it.
* ``ReverseSequence``: ``GatherElements`` along the time axis with the indices
  ``len - 1 - t`` for ``t < len`` and ``t`` after it.
* ``BatchNormalization`` with ``training_mode=1``: the batch's mean and (population) variance,
  and the running statistics updated with ``momentum``.
* ``Col2Im`` with constant ``image_shape``/``block_shape``: a constant 0/1 matrix from
  (block offset, column) to image position, by ``MatMul`` (padding dropped).
* ``ConvTranspose`` with ``output_shape``: the ``pads`` (and ``output_padding``) ONNX derives
  from it, written explicitly.
* ``ai.onnx.ml`` ``Binarizer`` (``Where(x > threshold, 1, 0)``) and ``ArrayFeatureExtractor``
  (``Gather`` on the last axis, shaped as ONNX Runtime does).

The backend picks which nodes to decompose (:meth:`Decompose.wanted`): TVM lowers most
``Resize`` nodes itself, faster than a matrix product.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from graphpress.errors import SpecError
from graphpress.passes.base import Pass, PassResult, option
from graphpress.passes.recurrent import _Builder
from graphpress.passes.registry import register

__all__ = ["DECOMPOSED_OPS", "Decompose"]

#: the resized axis' matrix may hold at most this many elements (a 4k image's rows: 2^24)
MAX_MATRIX_ELEMENTS = 1 << 24


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _static_shape(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return [int(d) for d in value.shape]


def _dtype(value: ir.Value) -> np.dtype | None:
    return value.dtype.numpy() if value.dtype is not None else None


# ---------------------------------------------------------------- Resize / Upsample


def _resize_plan(node: ir.Node, shape: list[int]):
    """(mode, per-axis (axis, out_len, scale, roi pair), attributes) as ONNX's reference computes
    them, or None when a parameter is not constant."""
    rank = len(shape)
    if node.op_type == "Upsample":
        mode = node.attributes.get_string("mode", "nearest")
        scales = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if scales is None:
            attr = node.attributes.get("scales")
            scales = np.asarray(attr.value, np.float32) if attr is not None else None
        if scales is None or len(scales) != rank:
            return None
        out = [int(math.floor(d * float(s))) for d, s in zip(shape, scales)]
        attrs = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor", "cubic_coeff_a": -0.75, "exclude_outside": 0,
                 "extrapolation_value": 0.0, "antialias": 0}  # fmt: skip
        return mode, [(a, out[a], float(scales[a]), None) for a in range(rank)], attrs
    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    roi_v, scales_v, sizes_v = inputs[1], inputs[2], inputs[3]
    roi = _const(roi_v) if roi_v is not None else None
    scales = _const(scales_v) if scales_v is not None else None
    sizes = _const(sizes_v) if sizes_v is not None else None
    if (roi_v is not None and roi is None) or (scales_v is not None and scales is None) or (sizes_v is not None and sizes is None):
        return None
    scales = None if scales is None or scales.size == 0 else [float(s) for s in scales.reshape(-1)]
    sizes = None if sizes is None or sizes.size == 0 else [int(s) for s in sizes.reshape(-1)]
    if scales is None and sizes is None:
        return None
    mode = node.attributes.get_string("mode", "nearest")
    attrs = {
        "coordinate_transformation_mode": node.attributes.get_string("coordinate_transformation_mode", "half_pixel"),
        "nearest_mode": node.attributes.get_string("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": node.attributes.get_float("cubic_coeff_a", -0.75),
        "exclude_outside": node.attributes.get_int("exclude_outside", 0),
        "extrapolation_value": node.attributes.get_float("extrapolation_value", 0.0),
        "antialias": node.attributes.get_int("antialias", 0),
    }
    axes_attr = node.attributes.get("axes")
    axes = [int(a) % rank for a in axes_attr.value] if axes_attr is not None else list(range(rank))
    # the reference's bookkeeping (onnx.reference.ops.op_resize._interpolate_nd), per axis
    scale_of = dict.fromkeys(range(rank), 1.0)
    out_of = dict(enumerate(shape))
    roi_of: dict[int, tuple[float, float] | None] = dict.fromkeys(range(rank))
    if roi is not None and roi.size:
        flat = [float(r) for r in roi.reshape(-1)]
        n = len(axes)
        for i, a in enumerate(axes):
            roi_of[a] = (flat[i], flat[n + i])
    if sizes is not None:
        if len(sizes) != len(axes):
            return None
        for a, s in zip(axes, sizes):
            scale_of[a] = s / shape[a]
            out_of[a] = s
        policy = node.attributes.get_string("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            common = pick(scale_of[a] for a in axes)
            for a in axes:
                scale_of[a] = common
                out_of[a] = int(common * shape[a] + 0.5)
    else:
        if len(scales) != len(axes):
            return None
        for a, s in zip(axes, scales):
            scale_of[a] = s
            out_of[a] = int(s * shape[a])
    plan = []
    for a in axes:
        r = roi_of[a]
        if math.isclose(scale_of[a], 1.0) and out_of[a] == shape[a] and (r is None or (math.isclose(r[0], 0.0) and math.isclose(r[1], 1.0))):
            continue
        plan.append((a, out_of[a], scale_of[a], r))
    return mode, plan, attrs


def _axis_matrix(mode: str, n: int, out_len: int, scale: float, roi, attrs) -> tuple[np.ndarray, np.ndarray]:
    """``W[out_len, n]`` and ``bias[out_len]`` of one resized axis (ONNX's reference, float64)."""
    from onnx.reference.ops import op_resize as ref

    a = attrs["cubic_coeff_a"]
    if mode == "nearest":
        nearest_mode = attrs["nearest_mode"]

        def coeffs(x, scale_factor):
            return ref._nearest_coeffs(x, mode=nearest_mode)
    elif mode == "cubic":
        cubic = ref._cubic_coeffs_antialias if attrs["antialias"] else ref._cubic_coeffs

        def coeffs(x, scale_factor):
            return cubic(x, scale_factor, A=a)
    elif mode == "linear":
        coeffs = ref._linear_coeffs_antialias if attrs["antialias"] else ref._linear_coeffs
    else:
        raise ValueError(mode)
    kwargs = {"roi": list(roi) if roi is not None else None, "coordinate_transformation_mode": attrs["coordinate_transformation_mode"],
              "exclude_outside": bool(attrs["exclude_outside"])}  # fmt: skip
    w = ref._interpolate_1d_along_axis(np.eye(n), 0, scale, out_len, coeffs, extrapolation_value=0.0, **kwargs)
    bias = ref._interpolate_1d_along_axis(np.zeros((n, 1)), 0, scale, out_len, coeffs, extrapolation_value=attrs["extrapolation_value"], **kwargs)
    return w, bias[:, 0]


def _resize(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    x = node.inputs[0]
    shape = _static_shape(x)
    dtype = _dtype(x) if x is not None else None
    if shape is None or dtype is None or 0 in shape:
        return None
    planned = _resize_plan(node, shape)
    if planned is None:
        return None
    mode, plan, attrs = planned
    if mode not in ("nearest", "linear", "cubic") or (mode == "nearest" and attrs["antialias"]):
        return None
    floating = dtype.kind == "f"
    if not floating and mode != "nearest":
        return None
    rank, current, compute = len(shape), x, dtype
    if floating and dtype.itemsize < 4:  # interpolate float16 in float32, round once at the end
        compute = np.dtype(np.float32)
        current = b.op("Cast", [x], to=ir.DataType.FLOAT)
    for axis, out_len, scale, roi in plan:
        n = shape[axis]
        if out_len * n > MAX_MATRIX_ELEMENTS:
            return None
        w, bias = _axis_matrix(mode, n, out_len, scale, roi, attrs)
        picks = np.argmax(w, axis=1)
        one_hot = np.array_equal(w, np.eye(n)[picks]) and not bias.any()
        if one_hot:
            current = b.op("Gather", [current, b.const(picks.astype(np.int64))], axis=axis)
        elif not floating:
            return None
        else:
            if axis == rank - 1:
                current = b.op("MatMul", [current, b.const(w.T.astype(compute))])
            elif axis == rank - 2:
                current = b.op("MatMul", [b.const(w.astype(compute)), current])
            else:
                perm = [d for d in range(rank) if d != axis] + [axis]
                moved = b.op("Transpose", [current], perm=perm)
                product = b.op("MatMul", [moved, b.const(w.T.astype(compute))])
                current = b.op("Transpose", [product], perm=[int(i) for i in np.argsort(perm)])
            if bias.any():
                bshape = [1] * rank
                bshape[axis] = out_len
                current = b.op("Add", [current, b.const(bias.reshape(bshape).astype(compute))])
        shape[axis] = out_len
    if current is x:
        current = b.op("Identity", [x])
    if compute != dtype:
        current = b.op("Cast", [current], to=ir.DataType.from_numpy(dtype))
    return [current]


# ---------------------------------------------------------------- the others


def _qlinear_matmul(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    if len(node.inputs) < 8:
        return None
    a, a_scale, a_zp, w, w_scale, w_zp, y_scale, y_zp = node.inputs[:8]
    if any(v is None for v in (a, a_scale, w, w_scale, y_scale, y_zp)) or _dtype(y_zp) is None:
        return None
    acc = b.op("MatMulInteger", [a, w, a_zp, w_zp])

    def as_float(v: ir.Value, per_row: bool) -> ir.Value:
        f = b.op("Cast", [v], to=ir.DataType.FLOAT)
        shape = _static_shape(v)
        if per_row and shape is not None and len(shape) == 1 and shape[0] > 1:  # one scale per row of a: a column
            f = b.op("Reshape", [f, b.const(np.array([-1, 1], np.int64))])
        return f

    scale = b.op("Div", [b.op("Mul", [as_float(a_scale, True), as_float(w_scale, False)]), as_float(y_scale, False)])
    scaled = b.op("Mul", [b.op("Cast", [acc], to=ir.DataType.FLOAT), scale])
    return [b.op("QuantizeLinear", [scaled, b.const(np.float32(1.0)), y_zp])]


def _reverse_sequence(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    x, lens = node.inputs[0], node.inputs[1]
    shape = _static_shape(x)
    if shape is None or lens is None or len(shape) < 2:
        return None
    batch_axis, time_axis = node.attributes.get_int("batch_axis", 1), node.attributes.get_int("time_axis", 0)
    t_len, b_len = shape[time_axis], shape[batch_axis]
    # indices over (batch, time) in the input's axis order, then broadcast over the other axes
    t = b.const(np.arange(t_len, dtype=np.int64).reshape((1, t_len) if batch_axis < time_axis else (t_len, 1)))
    lens64 = b.op("Reshape", [b.op("Cast", [lens], to=ir.DataType.INT64), b.const(np.array((b_len, 1) if batch_axis < time_axis else (1, b_len), np.int64))])
    reversed_t = b.op("Sub", [b.op("Sub", [lens64, b.const(np.int64(1))]), t])
    index = b.op("Where", [b.op("Less", [t, lens64]), reversed_t, t])
    view = [1] * len(shape)
    view[batch_axis], view[time_axis] = b_len, t_len
    index = b.op("Expand", [b.op("Reshape", [index, b.const(np.array(view, np.int64))]), b.const(np.array(shape, np.int64))])
    return [b.op("GatherElements", [x, index], axis=time_axis)]


def _batchnorm_training(node: ir.Node, b: _Builder) -> list[ir.Value | None] | None:
    if node.attributes.get_int("training_mode", 0) != 1:
        return None
    x, scale, bias, mean, var = node.inputs[:5]
    shape = _static_shape(x)
    dtype = _dtype(x) if x is not None else None
    if shape is None or dtype is None or len(shape) < 2:
        return None
    eps, momentum = node.attributes.get_float("epsilon", 1e-5), node.attributes.get_float("momentum", 0.9)
    axes = [d for d in range(len(shape)) if d != 1]
    channel = b.const(np.array([shape[1]] + [1] * (len(shape) - 2), np.int64))

    def average(v: ir.Value) -> ir.Value:  # axes are an input from opset 18 on, an attribute before
        if b.opset >= 18:
            return b.op("ReduceMean", [v, b.const(np.array(axes, np.int64))], keepdims=1)
        return b.op("ReduceMean", [v], axes=axes, keepdims=1)

    batch_mean = average(x)
    centered = b.op("Sub", [x, batch_mean])
    batch_var = average(b.op("Mul", [centered, centered]))
    normalized = b.op("Div", [centered, b.op("Sqrt", [b.op("Add", [batch_var, b.const(np.asarray(eps, dtype))])])])
    y = b.op("Add", [b.op("Mul", [normalized, b.op("Reshape", [scale, channel])]), b.op("Reshape", [bias, channel])])
    flat = b.const(np.array([shape[1]], np.int64))
    keep = b.const(np.asarray(momentum, dtype))
    take = b.const(np.asarray(1.0 - momentum, dtype))
    running_mean = b.op("Add", [b.op("Mul", [mean, keep]), b.op("Mul", [b.op("Reshape", [batch_mean, flat]), take])])
    running_var = b.op("Add", [b.op("Mul", [var, keep]), b.op("Mul", [b.op("Reshape", [batch_var, flat]), take])])
    return [y, running_mean, running_var][: len(node.outputs)]


def _col2im(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    x = node.inputs[0]
    shape, image, block = _static_shape(x), _const(node.inputs[1]), _const(node.inputs[2])
    if shape is None or image is None or block is None or len(shape) != 3:
        return None
    image, block = [int(v) for v in image.reshape(-1)], [int(v) for v in block.reshape(-1)]
    k = len(image)
    dil = list(node.attributes.get_ints("dilations", [1] * k))
    pads = list(node.attributes.get_ints("pads", [0] * 2 * k))
    strides = list(node.attributes.get_ints("strides", [1] * k))
    kprod = int(np.prod(block))
    n, ck, cols = shape
    if ck % kprod:
        return None
    channels = ck // kprod
    # column positions of the sliding blocks over the padded image
    counts = [(image[i] + pads[i] + pads[i + k] - (dil[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(k)]
    if int(np.prod(counts)) != cols or kprod * cols * int(np.prod(image)) > MAX_MATRIX_ELEMENTS:
        return None
    matrix = np.zeros((kprod, cols, int(np.prod(image))), dtype=_dtype(x))
    for offset in np.ndindex(*block):
        o = int(np.ravel_multi_index(offset, block))
        for col in np.ndindex(*counts):
            c = int(np.ravel_multi_index(col, counts))
            pos = [col[i] * strides[i] + offset[i] * dil[i] - pads[i] for i in range(k)]
            if all(0 <= pos[i] < image[i] for i in range(k)):
                matrix[o, c, int(np.ravel_multi_index(pos, image))] = 1
    grouped = b.op("Reshape", [x, b.const(np.array([n, channels, kprod * cols], np.int64))])
    placed = b.op("MatMul", [grouped, b.const(matrix.reshape(kprod * cols, -1))])
    return [b.op("Reshape", [placed, b.const(np.array([n, channels, *image], np.int64))])]


def _conv_transpose_output_shape(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    attr = node.attributes.get("output_shape")
    x, w = node.inputs[0], node.inputs[1]
    xs, ws = _static_shape(x), _static_shape(w)
    if attr is None or xs is None or ws is None:
        return None
    k = len(xs) - 2
    out = list(attr.value)[-k:]
    strides = list(node.attributes.get_ints("strides", [1] * k))
    dil = list(node.attributes.get_ints("dilations", [1] * k))
    extra = list(node.attributes.get_ints("output_padding", [0] * k))
    kernel = list(node.attributes.get_ints("kernel_shape", ws[2:]))
    upper = node.attributes.get_string("auto_pad", "NOTSET") == "SAME_UPPER"
    begin, end, padding = [], [], []
    for i in range(k):
        total = strides[i] * (xs[2 + i] - 1) + extra[i] + ((kernel[i] - 1) * dil[i] + 1) - out[i]
        grow = max(0, -total)  # a larger output than the kernel covers: output_padding
        total = max(0, total)
        begin.append(total // 2 if upper else total - total // 2)
        end.append(total - total // 2 if upper else total // 2)
        padding.append(extra[i] + grow)
    if any(p >= max(s, d) for p, s, d in zip(padding, strides, dil)):
        return None
    attrs = {name: a.value for name, a in node.attributes.items() if name not in ("output_shape", "auto_pad", "pads", "output_padding")}
    return [b.op("ConvTranspose", list(node.inputs), **attrs, pads=begin + end, output_padding=padding)]


def _binarizer(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    x = node.inputs[0]
    dtype = _dtype(x) if x is not None else None
    if dtype is None:
        return None
    threshold = node.attributes.get_float("threshold", 0.0)
    above = b.op("Greater", [x, b.const(np.asarray(threshold, dtype))])
    return [b.op("Where", [above, b.const(np.asarray(1, dtype)), b.const(np.asarray(0, dtype))])]


def _array_feature_extractor(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    x, indices = node.inputs[0], node.inputs[1]
    shape, ishape = _static_shape(x), _static_shape(indices)
    if shape is None or ishape is None:
        return None
    count = int(np.prod(ishape))
    flat = b.op("Reshape", [indices, b.const(np.array([count], np.int64))])
    picked = b.op("Gather", [x, flat], axis=-1)
    out = [1, count] if len(shape) == 1 else [*shape[:-1], count]  # as ONNX Runtime shapes it
    return [b.op("Reshape", [picked, b.const(np.array(out, np.int64))])]


_DECOMPOSERS = {
    ("", "Resize"): _resize,
    ("", "Upsample"): _resize,
    ("", "QLinearMatMul"): _qlinear_matmul,
    ("", "ReverseSequence"): _reverse_sequence,
    ("", "BatchNormalization"): _batchnorm_training,
    ("", "Col2Im"): _col2im,
    ("", "ConvTranspose"): _conv_transpose_output_shape,
    ("ai.onnx.ml", "Binarizer"): _binarizer,
    ("ai.onnx.ml", "ArrayFeatureExtractor"): _array_feature_extractor,
}

#: the ops :class:`Decompose` writes as simpler ones
DECOMPOSED_OPS = tuple(sorted({op for _, op in _DECOMPOSERS}))


@register
class Decompose(Pass):
    """Write ops without an ONNX function body as simpler ONNX ops, where shapes are static."""

    name = "decompose"
    family = "fusion"
    description = "Resize/Upsample as per-axis Gather or MatMul, QLinearMatMul as MatMulInteger, ReverseSequence, Col2Im, ... (static shapes)"

    @dataclasses.dataclass
    class Options:
        ops: str = option("|".join(DECOMPOSED_OPS), help="ops to decompose ('|'-separated)")

    def __init__(self, **options) -> None:
        super().__init__(**options)
        unknown = sorted({op.strip() for op in self.options.ops.split("|") if op.strip()} - set(DECOMPOSED_OPS))
        if unknown:
            raise SpecError(f"pass 'decompose': unknown op '{unknown[0]}' in ops; known: {', '.join(DECOMPOSED_OPS)}")

    def wanted(self, node: ir.Node) -> bool:
        """Whether to decompose ``node`` (of an op :data:`DECOMPOSED_OPS` lists); every one by default."""
        return True

    def call(self, model: ir.Model) -> PassResult:
        chosen = {op.strip() for op in self.options.ops.split("|") if op.strip()}
        done: dict[str, int] = {}
        left: list[str] = []
        opset = model.opset_imports.get("", 0)
        for node in list(model.graph):
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            fn = _DECOMPOSERS.get((domain, node.op_type))
            if fn is None or node.op_type not in chosen or not self.wanted(node):
                continue
            if node.op_type == "Resize" and opset < 11:  # opset 10's Resize: other defaults
                left.append(node.name or node.op_type)
                continue
            b = _Builder(node, f"{node.name or node.op_type}/decomposed", opset)
            outputs = fn(node, b)
            if outputs is None:
                if node.op_type not in ("BatchNormalization", "ConvTranspose"):  # those only decompose in one mode
                    left.append(node.name or node.op_type)
                continue
            b.replace(model, outputs)
            done[node.op_type] = done.get(node.op_type, 0) + 1
        stats: dict = {"decomposed": sum(done.values())}
        if done:
            stats["ops"] = done
        if left:
            stats["left"] = left
        return PassResult(model, bool(done), stats)
