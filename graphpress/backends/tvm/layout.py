"""Relax passes around TVM's ``ConvertLayout``: what it leaves behind when convolutions move to NHWC.

``ConvertLayout`` moves a convolution and every op with a layout rule after it (elementwise ops,
pooling, reductions) to NHWC, and puts a ``permute_dims`` in front of the first op without one.
``quantize``/``dequantize`` and ``pad`` have none, so a quantized model would transpose its
activations back to NCHW at every quantize (and at the zero-point padding of an integer
convolution) and forth again at the next convolution. :func:`sink_permutes` moves a transpose
below a quantize/dequantize (their channel axis follows it) or a constant pad (its widths
follow it), past elementwise ops, slices, squeezes and reductions (what a 1-D model's NCHW
chain after its convolution has) and cancels a transpose followed by its inverse;
:func:`fold_constants` computes the transposed constants (and what else is constant) in numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv1d_as_conv2d", "conv_transpose_as_conv", "convs_to_nhwc", "fold_constants", "pad_output_channels", "pad_output_width", "positive_squeeze_axes", "relax_module_pass", "scalar_constants",
           "sink_permutes", "softmax_on_last_axis", "unit_width_convs_along_width"]


def relax_module_pass(mutator_class, name: str):
    """A module pass running a ``PyExprMutator`` class over every Relax function of a module
    (what the mutator emits through its builder, such as kernels, lands in the module)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod, _ctx):
        mutator = mutator_class(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return run


def call_rewrite_pass(op_names, rewrite, name: str):
    """A module pass calling ``rewrite(mutator, call)`` on every call of one of the Relax ops
    ``op_names`` (its arguments already rewritten); it returns the replacement (emitting what it
    needs through ``mutator.builder_``) or None to keep the call."""
    import tvm
    from tvm.relax.expr_functor import PyExprMutator, mutator

    ops = [tvm.ir.Op.get(op) for op in op_names]

    @mutator
    class Rewrite(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if any(call.op.same_as(op) for op in ops):
                replaced = rewrite(self, call)
                if replaced is not None:
                    return replaced
            return call

    return relax_module_pass(Rewrite, name)


def _axes(call, ndim: int) -> list[int]:
    axes = call.attrs.axes
    return [int(a) for a in axes] if axes is not None else list(range(ndim))[::-1]


def _typed(attrs) -> dict:
    """The ``out_dtype`` keyword of a convolution's attributes, when it sets one."""
    out_dtype = str(attrs.out_dtype)
    return {"out_dtype": out_dtype} if out_dtype not in ("", "None", "void") else {}


def _constant(mutator, expr):
    """The constant ``expr`` is, directly or bound to a variable, else None."""
    import tvm
    from tvm import relax

    bound = mutator.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
    return bound if isinstance(bound, tvm.ir.GenericConst) else None


def _nchw_conv2d(call) -> bool:
    a = call.attrs
    return str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW" and str(a.out_layout) == "NCHW"


#: elementwise ops of one tensor (other arguments, if any, scalars): a permute moves past them
_UNARY = {f"relax.{op}" for op in ("tanh", "sigmoid", "exp", "log", "sqrt", "rsqrt", "negative", "abs", "erf", "square", "round", "floor", "ceil",
                                   "clip", "astype", "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "nn.leakyrelu")}  # fmt: skip
#: elementwise ops of two tensors: a permute moves past them when the other operand is permuted
#: the same way, a constant or of one element
_BINARY = {f"relax.{op}" for op in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")}
#: reductions over given axes (``relax.op.<name>(x, axis, keepdims)``)
_REDUCTIONS = {f"relax.{op}" for op in ("max", "min", "sum", "mean", "prod")}


def _whole_slice(call) -> bool:
    """Whether a ``strided_slice`` takes every element of its input, in order."""
    import tvm

    shape = call.args[0].ty.shape
    if shape is None:
        return False
    try:
        axes, begins, ends = (arg.fields for arg in call.args[1:4])
        strides = [int(v.value) for v in call.args[4].fields] if len(call.args) > 4 else [1] * len(axes)
        for axis, begin, end, stride in zip(axes, begins, ends, strides):
            dim = shape[int(axis.value) % len(shape)]  # a negative axis counts from the end
            if not isinstance(dim, tvm.tirx.IntImm) or stride != 1 or int(begin.value) not in (0, -int(dim)) or int(end.value) < int(dim):
                return False
    except (AttributeError, TypeError):  # a begin or end computed at run time
        return False
    return True


def sink_permutes():
    """A Relax pass: ``quantize/dequantize(permute_dims(x, p))`` becomes
    ``permute_dims(quantize/dequantize(x), p)`` (the channel axis moves with it), a constant
    ``pad`` likewise (its widths move with it), an NCHW ``max_pool2d`` of an NHWC tensor made
    NCHW becomes an NHWC pool (an integer pool after a quantize ``ConvertLayout`` has no rule
    for), and ``permute_dims(permute_dims(x, p), q)`` becomes ``x`` when ``q`` undoes ``p``.
    A permute also moves past elementwise ops (the other operand of a binary one permuted the
    same way, a constant, transposed here, or one element), ``strided_slice``, ``squeeze`` and
    reductions over given axes, their axes mapped: the NCHW transpose after an NHWC
    convolution then reaches the reduction that ends the chain (Magika's 1-D convolution, its
    GELU and max over the sequence: the transpose was 1 MB; after the max it is 2 KB) and the
    chain fuses into the convolution's NHWC output, its channels in vectors."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    permute = tvm.ir.Op.get("relax.permute_dims")
    qdq = {"relax.quantize": relax.op.quantize, "relax.dequantize": relax.op.dequantize}

    @mutator
    class Sink(PyExprMutator):
        def _permuted(self, expr):
            """(x, axes) when ``expr`` is bound to ``permute_dims(x, axes)``."""
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
            while isinstance(bound, relax.Var):  # a variable bound to a variable (a slice of everything, dropped)
                bound = self.lookup_binding(bound)
            if isinstance(bound, relax.Call) and bound.op.same_as(permute) and bound.args[0].ty.shape is not None:
                x = bound.args[0]
                return x, _axes(bound, len(x.ty.shape))
            return None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            name = call.op.name
            if name in qdq:
                inner = self._permuted(call.args[0])
                if inner is not None:
                    x, axes = inner
                    axis = int(call.attrs.axis) % len(axes)
                    moved = self.builder_.emit(qdq[name](x, call.args[1], call.args[2], axis=axes[axis], out_dtype=str(call.attrs.out_dtype)))
                    return relax.op.permute_dims(moved, axes)
            elif name == "relax.nn.pad" and str(call.attrs.pad_mode) == "constant":
                inner = self._permuted(call.args[0])
                if inner is not None:  # axis i of the permuted tensor is axis axes[i] of x
                    x, axes = inner
                    width = [int(v) for v in call.attrs.pad_width]
                    moved = [0] * len(width)
                    for i, a in enumerate(axes):
                        moved[2 * a : 2 * a + 2] = width[2 * i : 2 * i + 2]
                    padded = self.builder_.emit(relax.op.nn.pad(x, moved, pad_mode="constant", pad_value=float(call.attrs.pad_value)))
                    return relax.op.permute_dims(padded, axes)
            elif name == "relax.nn.max_pool2d" and str(call.attrs.layout) == "NCHW" and str(call.attrs.out_layout) == "NCHW":
                inner = self._permuted(call.args[0])
                if inner is not None and list(inner[1]) == [0, 3, 1, 2]:
                    a = call.attrs
                    pooled = self.builder_.emit(relax.op.nn.max_pool2d(inner[0], a.pool_size, a.strides, a.padding, a.dilation, bool(a.ceil_mode), bool(a.count_include_pad), layout="NHWC", out_layout="NHWC"))
                    return relax.op.permute_dims(pooled, [0, 3, 1, 2])
            elif call.op.same_as(permute):
                inner = self._permuted(call.args[0])
                if inner is not None:
                    x, first = inner
                    second = _axes(call, len(first))
                    if [first[a] for a in second] == list(range(len(first))):
                        return x
            elif name in _UNARY:
                inner = self._permuted(call.args[0])
                if inner is not None:
                    x, axes = inner
                    return relax.op.permute_dims(self.builder_.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs)), axes)
            elif name in _BINARY:
                moved = self._binary(call)
                if moved is not None:
                    return moved
            elif name in _REDUCTIONS or name == "relax.squeeze":
                inner = self._permuted(call.args[0])
                if inner is not None and call.attrs.axis is not None:
                    x, axes = inner
                    rank = len(axes)
                    dropped = sorted({int(a) % rank for a in call.attrs.axis})
                    kept = name != "relax.squeeze" and bool(call.attrs.keepdims)
                    source = [axes[a] for a in dropped]  # the same axes of x
                    if name == "relax.squeeze":
                        out = self.builder_.emit(relax.op.squeeze(x, source))
                    else:
                        out = self.builder_.emit(getattr(relax.op, name[len("relax."):])(x, source, kept))
                    if kept:
                        return relax.op.permute_dims(out, axes)
                    left = [a for a in range(rank) if a not in source]  # x's axes that remain, in order
                    order = [left.index(axes[i]) for i in range(rank) if i not in dropped]
                    return out if order == list(range(len(order))) else relax.op.permute_dims(out, order)
            elif name == "relax.strided_slice":
                if _whole_slice(call):  # tf2onnx's x[:, :, :, :]: between a convolution and its epilogue it keeps them apart
                    return call.args[0]
                inner = self._permuted(call.args[0])
                if inner is not None:
                    x, axes = inner
                    rank = len(axes)
                    sliced = [axes[int(a.value) % rank] for a in call.args[1].fields]
                    out = self.builder_.emit(relax.op.strided_slice(x, sliced, *call.args[2:], assume_inbound=bool(call.attrs.assume_inbound)))
                    return relax.op.permute_dims(out, axes)
            return call

        def _binary(self, call):
            """``op(permute(x, p), b)`` as ``permute(op(x, b'), p)``: ``b`` permuted the same way,
            a constant (transposed here), or of one element; else None."""
            a, b = call.args
            left, right = self._permuted(a), self._permuted(b)
            if left is not None and right is not None:
                if list(left[1]) != list(right[1]):
                    return None
                return relax.op.permute_dims(self.builder_.emit(relax.Call(call.op, [left[0], right[0]], call.attrs)), left[1])
            inner, other = (left, b) if left is not None else (right, a)
            if inner is None:
                return None
            x, axes = inner
            if other.ty.shape is None:
                return None
            dims = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in other.ty.shape]
            if all(d == 1 for d in dims):  # a scalar, or ones: the same in any layout
                moved = other
            elif len(dims) <= len(axes) and (constant := _constant(self, other)) is not None:
                inverse = [0] * len(axes)
                for i, j in enumerate(axes):
                    inverse[j] = i
                value = constant.value.numpy()
                value = value.reshape((1,) * (len(axes) - value.ndim) + value.shape)  # broadcast's leading ones
                moved = relax.const(np.ascontiguousarray(np.transpose(value, inverse)))
            else:
                return None
            operands = [x, moved] if left is not None else [moved, x]
            return relax.op.permute_dims(self.builder_.emit(relax.Call(call.op, operands, call.attrs)), axes)

    return relax_module_pass(Sink, "SinkPermutes")


#: elementwise ops computed in numpy when every operand is a constant: exact in IEEE arithmetic
#: (and wrapping for integers) as TVM's kernels are. Not exp/log/erf (libm and TVM's polynomials
#: differ in the last bit), not integer division (TVM's rounding; a zero divisor kills the
#: compiler with SIGFPE), not float-to-integer casts (NaN handling)
_FOLD_UNARY = {"relax.sqrt": np.sqrt, "relax.rsqrt": lambda a: np.ones((), a.dtype) / np.sqrt(a), "relax.negative": np.negative, "relax.abs": np.abs}
_FOLD_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide}
#: the ops :func:`fold_constants` computes whose first argument alone is the tensor
_FOLD_SHAPE = {f"relax.{op}" for op in ("permute_dims", "reshape", "broadcast_to", "expand_dims", "squeeze", "astype")}
_FOLDED = _FOLD_SHAPE | set(_FOLD_UNARY) | set(_FOLD_BINARY)


def _fold(call, args: list[np.ndarray]) -> np.ndarray | None:
    """``call`` (a Relax op) computed in numpy on the constant ``args``, or None where it is not
    one :func:`fold_constants` computes."""
    import tvm
    from tvm import relax

    name, a = call.op.name, args[0]
    if name == "relax.permute_dims":
        return a.transpose(_axes(call, a.ndim))
    if name in ("relax.reshape", "relax.broadcast_to"):
        shape = call.args[1]
        if not (isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in shape.values)):
            return None
        dims = [int(v) for v in shape.values]
        return a.reshape(dims) if name == "relax.reshape" else np.broadcast_to(a, dims)
    if name == "relax.expand_dims":
        return np.expand_dims(a, tuple(int(x) for x in call.attrs.axis))
    if name == "relax.squeeze":
        return np.squeeze(a, None if call.attrs.axis is None else tuple(int(x) for x in call.attrs.axis))
    if name == "relax.astype":  # to a float type (exact, or rounded to nearest as TVM does) or between integers
        dtype = np.dtype(str(call.attrs.dtype))
        return a.astype(dtype) if dtype.kind == "f" or (dtype.kind in "iu" and a.dtype.kind in "iub") else None
    if name in _FOLD_UNARY and a.dtype.kind == "f":
        return _FOLD_UNARY[name](a)
    if name in _FOLD_BINARY and len(args) == 2 and args[1].dtype == a.dtype and (a.dtype.kind == "f" or name != "relax.divide"):
        return _FOLD_BINARY[name](a, args[1])
    return None


def fold_constants():
    """A Relax pass that computes once, in numpy, every op of :func:`_fold`'s list whose operands
    are all constants (directly or bound to variables): the HWIO weights and the bias transposes
    ``ConvertLayout`` asks for, the importer's bias reshapes, and the per-channel constants of a
    ``BatchNormalization`` that could not fold into its convolution (decomposed into
    ``expand_dims``, ``add``, ``sqrt`` of its statistics; a quantized convolution's). Not
    ``FoldConstant``: that builds and runs a TVM kernel for each constant subexpression -- a code
    generation each: ResNet-18's 20 bias transposes 0.6-1.4 s of every lowering, PP-OCR's
    classifier's 35 batch norms 704 kernels and 35 s -- and an integer division by zero among them
    kills the compiler (SIGFPE). A result whose shape or dtype is not the call's stays a call."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Folder(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.args or not isinstance(call.op, tvm.ir.Op) or call.op.name not in _FOLDED:
                return call
            tensors = call.args[:1] if call.op.name in _FOLD_SHAPE else call.args
            consts = [_constant(self, x) for x in tensors]
            if any(c is None for c in consts):
                return call
            with np.errstate(all="ignore"):  # a zero divisor gives inf, as the kernel would
                value = _fold(call, [c.value.numpy() for c in consts])
            info = self.builder_.normalize(call).ty
            if value is None or not isinstance(info, relax.TensorType) or str(info.dtype) != str(value.dtype) or info.shape is None:
                return call
            if [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in info.shape] != list(value.shape):
                return call
            return relax.const(np.ascontiguousarray(value), str(value.dtype))

    return relax_module_pass(Folder, "FoldConstantsInNumpy")


def convs_to_nhwc():
    """A Relax pass putting each NCHW/OIHW ``conv2d`` alone in NHWC/HWIO, transposed in and out:
    for a model whose layout ``ConvertLayout`` cannot move as a whole (its rules fail on an op
    after a convolution: a 5-D tensor, as TVM's importer made of a ``Max`` before it was folded
    pairwise), so the convolutions still get the analytic NHWC schedules instead of TVM's
    default loop nests (Magika's 1-D convolution: 146 ms). :func:`sink_permutes` then cancels
    the transposes between consecutive convolutions."""
    from tvm import relax

    def rewrite(self, call):
        a = call.attrs
        if not _nchw_conv2d(call):
            return None
        strides, padding, dilation = [int(v) for v in a.strides], [int(v) for v in a.padding], [int(v) for v in a.dilation]
        into, weights, back = [0, 2, 3, 1], [2, 3, 1, 0], [0, 3, 1, 2]
        x = self.builder_.emit(relax.op.permute_dims(call.args[0], into))
        w = relax.op.permute_dims(call.args[1], weights)
        typed = _typed(a)
        y = self.builder_.emit(relax.op.nn.conv2d(x, w, strides=strides, padding=padding, dilation=dilation, groups=int(a.groups),
                                                  data_layout="NHWC", kernel_layout="HWIO", **typed))  # fmt: skip
        return relax.op.permute_dims(y, back)

    return call_rewrite_pass(["relax.nn.conv2d"], rewrite, "ConvsToNHWC")


def _is_one(dim) -> bool:
    import tvm

    return isinstance(dim, tvm.tirx.IntImm) and int(dim) == 1


def unit_width_convs_along_width():
    """A Relax pass turning an NCHW ``conv2d`` of width 1 (a 1-D convolution along the height, as
    tf2onnx writes them: Magika's) on its side, height and width swapped in and out, so that in
    NHWC its length is the width, the axis the register tile runs along (left as it was, the
    tile was one pixel: 4.0 ms at 166 GFLOP/s against 1.5 ms)."""
    import numpy as np
    from tvm import relax

    def rewrite(self, call):
        a = call.attrs
        if not _nchw_conv2d(call):
            return None
        strides, padding, dilation = [int(v) for v in a.strides], [int(v) for v in a.padding], [int(v) for v in a.dilation]
        x_shape, w_shape = call.args[0].ty.shape, call.args[1].ty.shape
        if (x_shape is None or w_shape is None or not _is_one(x_shape[3]) or not _is_one(w_shape[3]) or _is_one(x_shape[2])
                or strides[1] != 1 or dilation[1] != 1 or padding[1] or padding[3]):  # fmt: skip
            return None
        x = self.builder_.emit(relax.op.permute_dims(call.args[0], [0, 1, 3, 2]))
        w = call.args[1]
        bound = _constant(self, w)
        if bound is not None:  # the weight swapped here, not by a kernel at run time
            array = bound.value.numpy()
            w = relax.const(np.ascontiguousarray(array.transpose(0, 1, 3, 2)), str(array.dtype))
        else:
            w = relax.op.permute_dims(w, [0, 1, 3, 2])
        typed = _typed(a)
        y = self.builder_.emit(relax.op.nn.conv2d(x, w, strides=strides[::-1], padding=[padding[1], padding[0], padding[3], padding[2]],
                                                  dilation=dilation[::-1], groups=int(a.groups), **typed))  # fmt: skip
        return relax.op.permute_dims(y, [0, 1, 3, 2])

    return call_rewrite_pass(["relax.nn.conv2d"], rewrite, "UnitWidthConvsAlongWidth")


def conv1d_as_conv2d():
    """A Relax pass writing each NCW/OIW ``conv1d`` as a 2-D NCHW ``conv2d`` of height 1 (its
    length as the width, the axis the register tile runs along), reshaped in and out, so the
    1-D convolutions take the NHWC path and the analytic schedules too. (openWakeWord's
    mel spectrogram: its STFT is a 1-D convolution of 257 filters of 512 taps, stride 160; left
    1-D, TVM's default loop nest took 9.9 ms a call.)"""
    import numpy as np
    from tvm import relax

    def rewrite(self, call):
        a = call.attrs
        if str(a.data_layout) != "NCW" or str(a.kernel_layout) != "OIW" or str(a.out_layout) != "NCW":
            return None
        x_shape, w_shape, y_shape = call.args[0].ty.shape, call.args[1].ty.shape, call.ty.shape
        if x_shape is None or w_shape is None or y_shape is None:
            return None
        x = self.builder_.emit(relax.op.reshape(call.args[0], [x_shape[0], x_shape[1], 1, x_shape[2]]))
        w, constant = call.args[1], _constant(self, call.args[1])
        if constant is not None:  # the weight reshaped here, not by a kernel at run time
            array = constant.value.numpy()
            w = relax.const(np.ascontiguousarray(array[:, :, None, :]), str(array.dtype))
        else:
            w = self.builder_.emit(relax.op.reshape(w, [w_shape[0], w_shape[1], 1, w_shape[2]]))
        typed = _typed(a)
        (pad_left, pad_right), stride, dilation = [int(p) for p in a.padding], int(a.strides[0]), int(a.dilation[0])
        y = self.builder_.emit(relax.op.nn.conv2d(x, w, strides=[1, stride], padding=[0, pad_left, 0, pad_right], dilation=[1, dilation],
                                                  groups=int(a.groups), data_layout="NCHW", kernel_layout="OIHW", **typed))  # fmt: skip
        return relax.op.reshape(y, list(y_shape))

    return call_rewrite_pass(["relax.nn.conv1d"], rewrite, "Conv1DAsConv2D")


#: the most work padding may add to give a kernel whose output channels are a multiple of 4 but
#: not of the vector full vectors (24 channels on AVX-512: 32, 1.33x the work on vectors twice as
#: wide). 1.0: never. At 1.5, PP-OCRv4 det's 24-channel 3x3 convolution took 3.4 ms instead of 5.2
#: alone (one thread), but whole models moved within noise (PP-OCRv4 det -4 %, MobileNetV2 -1 %,
#: openWakeWord's embedding +4 %), so it stays off
WIDEN_GROWTH = 1.0


def padded_channels(n: int, lanes: int) -> int | None:
    """The output channel count ``n`` is padded to for vectors of ``lanes`` floats, or None: a
    count no multiple of 4 (no register tile at all) of at least ``lanes``, to the next multiple
    of ``lanes``; a multiple of 4 only while the padding adds at most :data:`WIDEN_GROWTH` x
    the work."""
    if n % lanes == 0 or n < lanes:
        return None
    padded = -(-n // lanes) * lanes
    return padded if n % 4 or padded <= WIDEN_GROWTH * n else None


def pad_output_channels(lanes: int = 16):
    """A Relax pass padding the output channels of a float NHWC/HWIO ``conv2d`` (one group) or
    a ``matmul`` by a constant weight with zero filters (:func:`padded_channels` says to how
    many), and slicing them off after: the analytic register tile needs whole vectors along the
    output channels, and without one the kernel runs TVM's default loop nest (the mel
    spectrogram's 257 frequency bins)."""
    import numpy as np
    from tvm import relax

    def rewrite(self, call):
        constant = _constant(self, call.args[1])
        if constant is None:
            return None
        weight = constant.value.numpy()
        width = padded_channels(weight.shape[-1], lanes) if weight.ndim >= 2 else None
        if weight.dtype != np.float32 or width is None:
            return None
        if call.op.name == "relax.nn.conv2d" and (str(call.attrs.data_layout) != "NHWC" or str(call.attrs.kernel_layout) != "HWIO" or int(call.attrs.groups) != 1):
            return None
        n = weight.shape[-1]
        padded = np.zeros((*weight.shape[:-1], width), np.float32)
        padded[..., :n] = weight
        y = self.builder_.emit(relax.Call(call.op, [call.args[0], relax.const(padded, "float32"), *call.args[2:]], call.attrs))
        ndim = len(call.ty.shape)
        return relax.op.strided_slice(y, [ndim - 1], [0], [n], assume_inbound=True)

    return call_rewrite_pass(["relax.nn.conv2d", "relax.matmul"], rewrite, "PadOutputChannels")


#: the most extra output columns :func:`pad_output_width` adds, as a fraction of the width
WIDTH_GROWTH = 0.125


def tile_efficiency(mr: int, v: int) -> float:
    """The fraction of FMA peak an ``mr`` x ``v`` register tile can reach, per step along the
    reduction: ``mr * v`` FMAs on two ports, ``mr`` broadcasts and ``v`` vectors loaded on two
    ports, and each accumulator's chain one FMA per 4 cycles of latency. 1 x 1: 0.125; 7 x 1:
    0.875; 14 x 2: 1.0."""
    fmas = mr * v
    return (fmas / 2) / max(fmas / 2, (mr + v) / 2, 4.0)


def padded_width(m: int, n: int, lanes: int, registers: int) -> int | None:
    """The output width ``m`` of an NHWC convolution to ``n`` channels is computed at, or None
    to keep it: the analytic register tile takes rows that divide the width, so a prime one (the
    mel spectrogram's 97 frames) got one row per tile, an eighth of the FMA peak
    (:func:`tile_efficiency`). Among widths up to :data:`WIDTH_GROWTH` wider, the one whose tile
    does the most useful work per cycle, when that beats ``m``'s own by a tenth."""
    from graphpress.backends.tvm import schedules

    def score(width: int) -> float:
        tile = schedules.register_tile(width, n, lanes, registers, schedules.RANK_BY_LOADS)
        return tile_efficiency(*tile) * m / width if tile else 0.0

    best = max(range(m, m + max(1, int(m * WIDTH_GROWTH)) + 1), key=lambda w: (score(w), -w))
    return best if best != m and score(best) > 1.1 * score(m) > 0 else None


def pad_output_width(lanes: int = 16, registers: int = 32):
    """A Relax pass computing the rows of a float NHWC ``conv2d`` (one group, constant weight)
    or of a ``matmul`` by a constant weight at :func:`padded_width`, and slicing the extra rows
    off after, so every tile has a full register block of them: the convolution's right padding
    grows (the extra columns read zeros, or the input's own last samples); the matmul's left
    operand gets zero rows (a padded copy, which FuseOps folds into the kernel that produces it:
    an STFT's framing)."""
    import tvm
    from tvm import relax

    def static(shape) -> bool:
        return shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in shape)

    def rewrite(self, call):
        shape = call.ty.shape
        if str(call.ty.dtype) != "float32" or not static(shape) or len(shape) < 2 or _constant(self, call.args[1]) is None:
            return None
        conv = call.op.name == "relax.nn.conv2d"
        if conv:
            a = call.attrs
            if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NHWC", "HWIO", "NHWC") or int(a.groups) != 1:
                return None
        else:
            x = call.args[0]
            if x.ty.shape is None or len(x.ty.shape) != len(shape) or len(call.args[1].ty.shape) != 2:
                return None
        rank = len(shape)
        m, n = int(shape[2 if conv else -2]), int(shape[-1])
        width = padded_width(m, n, lanes, registers) if n % lanes == 0 else None
        if width is None:
            return None
        if conv:
            top, left, bottom, right = (int(v) for v in a.padding)
            padding = [top, left, bottom, right + (width - m) * int(a.strides[1])]
            y = self.builder_.emit(relax.op.nn.conv2d(call.args[0], call.args[1], a.strides, padding, a.dilation, a.groups, a.data_layout, a.kernel_layout, a.out_layout, **_typed(a)))
            return relax.op.strided_slice(y, [2], [0], [m], assume_inbound=True)
        x = self.builder_.emit(relax.op.nn.pad(x, [0, 0] * (rank - 2) + [0, width - m, 0, 0]))
        y = self.builder_.emit(relax.op.matmul(x, call.args[1], **_typed(call.attrs)))
        return relax.op.strided_slice(y, [rank - 2], [0], [m], assume_inbound=True)

    return call_rewrite_pass(["relax.nn.conv2d", "relax.matmul"], rewrite, "PadOutputWidth")


def conv_transpose_as_conv():
    """A Relax pass writing a ``conv2d_transpose`` whose windows do not overlap (kernel equal to
    stride, no padding, one group: DBNet's 2x2 upsampling, U-Net decoders) as a 1x1 ``conv2d``
    to ``out_channels * kh * kw`` channels followed by a depth-to-space rearrangement: every
    output pixel is one input pixel times one kernel tap. The 1x1 convolution then moves to NHWC
    and takes the analytic GEMM schedule; TVM lowers ``conv2d_transpose`` only in NCHW, as a
    zero-dilated convolution four times the work (PP-OCRv4 det's two: most of its time)."""
    import numpy as np
    import tvm
    from tvm import relax

    def rewrite(self, call):
        a = call.attrs
        weight = _constant(self, call.args[1])
        if weight is None or call.ty.shape is None or call.args[0].ty.shape is None:
            return None
        w = weight.value.numpy()  # (in, out, kh, kw)
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "IOHW", "NCHW") or int(a.groups) != 1 or w.ndim != 4:
            return None
        strides = [int(v) for v in a.strides]
        if (strides != list(w.shape[2:]) or any(int(v) for v in a.padding) or any(int(v) for v in a.output_padding)
                or any(int(v) != 1 for v in a.dilation)):  # fmt: skip
            return None
        if not all(isinstance(d, tvm.tirx.IntImm) for d in call.args[0].ty.shape):
            return None
        n, ci, h, wd = (int(d) for d in call.args[0].ty.shape)
        co, kh, kw = (int(d) for d in w.shape[1:])
        # out channel (i, j, o) of the 1x1 convolution: tap (i, j) of output channel o (the
        # output channels innermost, so in NHWC each output pixel copies a contiguous run)
        taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * co, ci, 1, 1))
        typed = _typed(a)
        y = self.builder_.emit(relax.op.nn.conv2d(call.args[0], relax.const(taps, str(w.dtype)), **typed))
        y = self.builder_.emit(relax.op.reshape(y, [n, kh, kw, co, h, wd]))
        y = self.builder_.emit(relax.op.permute_dims(y, [0, 3, 4, 1, 5, 2]))  # n, o, h, i, w, j
        return relax.op.reshape(y, [n, co, h * kh, wd * kw])

    return call_rewrite_pass(["relax.nn.conv2d_transpose"], rewrite, "ConvTransposeAsConv")


def softmax_on_last_axis():
    """A Relax pass moving the axis of a ``softmax`` over any other axis last, and back after:
    over a middle axis (YOLOv8's distribution of box edges, 16 bins on axis 1) every output row
    recomputed the maximum and the sum of its whole column, strided (nudenet: 3 ms, a tenth of
    the model); along the last axis the rows are contiguous and independent."""
    from tvm import relax

    def rewrite(self, call):
        if call.ty.shape is None:
            return None
        ndim, axis = len(call.ty.shape), int(call.attrs.axis)
        axis = axis + ndim if axis < 0 else axis
        if axis == ndim - 1:
            return None
        order = [i for i in range(ndim) if i != axis] + [axis]
        back = [order.index(i) for i in range(ndim)]
        moved = self.builder_.emit(relax.op.permute_dims(call.args[0], order))
        y = self.builder_.emit(relax.op.nn.softmax(moved, axis=-1))
        return relax.op.permute_dims(y, back)

    return call_rewrite_pass(["relax.nn.softmax"], rewrite, "SoftmaxOnLastAxis")


def positive_squeeze_axes():
    """A Relax pass giving each ``squeeze`` of a known rank its axes as non-negative numbers.
    ``ConvertLayout`` stops on a negative one (``std::bad_alloc``: TVM 0.27's layout inference of
    ``squeeze`` sizes a vector by it), so a model with ``Squeeze(axes=[-1])`` anywhere kept NCHW
    and ran each convolution between two transposes."""
    from tvm import relax

    def rewrite(self, call):
        axes = call.attrs.axis
        rank = getattr(call.args[0].ty, "ndim", -1)
        if axes is None or rank is None or rank < 0 or all(int(a) >= 0 for a in axes):
            return None
        return relax.op.squeeze(call.args[0], [int(a) % rank for a in axes])

    return call_rewrite_pass(["relax.squeeze"], rewrite, "PositiveSqueezeAxes")


#: the binary elementwise Relax ops whose one-element constant operand becomes a scalar
_SCALAR_OPERAND_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum", "relax.power")


def scalar_constants():
    """A Relax pass making a one-element constant operand of a binary elementwise op a scalar
    (rank 0) when the other operand has at least its rank, which leaves the result unchanged.
    ``ConvertLayout`` has no layout for a rank-1 ``[3.0]`` beside a 4-D activation, so it moved
    the op back to NCHW with a transpose on each side (Paddle's HardSwish, ``x * clip(x + [3],
    0, 6) / [6]`` after every convolution of PicoDet: four transposes per layer)."""
    import numpy as np
    from tvm import relax

    def rewrite(self, call):
        if len(call.args) != 2:
            return None
        args = list(call.args)
        for i in (0, 1):
            value = _constant(self, args[i])
            other = args[1 - i].ty
            if (value is not None and value.value.numpy().size == 1 and value.value.numpy().ndim >= 1
                    and getattr(other, "shape", None) is not None and len(other.shape) >= value.value.numpy().ndim):  # fmt: skip
                array = value.value.numpy()
                args[i] = relax.const(np.asarray(array.reshape(())), str(array.dtype))
        if all(a.same_as(b) for a, b in zip(args, call.args)):
            return None
        return relax.Call(call.op, args, call.attrs)

    return call_rewrite_pass(_SCALAR_OPERAND_OPS, rewrite, "ScalarConstants")
