"""Corrections to TVM's ONNX converters, where TVM computes something else than ONNX defines.

Found by ``benchmarks/conformance.py`` (ONNX's node tests, compiled and compared with ONNX
Runtime). Each correction replaces one converter while a model is imported
(:func:`corrected_converters`, used by :func:`graphpress.backends.tvm.lower.to_relax`), the
way the integer converters are registered; ops that have an ONNX function body are expanded
instead (:mod:`graphpress.backends.tvm.expand`).

* ``IsInf``: TVM ignores ``detect_positive``/``detect_negative`` (both infinities are reported).
* ``Pow``: TVM's power takes floats of one type only; ONNX allows an integer base (computed
  in float64 and truncated back, as ONNX Runtime's ``std::pow`` does) and an exponent of
  another type.
* ``Constant``: TVM reads only the ``value`` attribute; ``value_int(s)``/``value_float(s)``
  (what constant folding of a ``Shape`` writes, opset 12 on) fail to import.

* ``ReduceMax``/``ReduceMin`` of floats: TVM starts the reduction at the lowest (highest)
  *finite* value, so a row of ``-inf`` (an attention row whose keys are all masked) and an
  empty reduction give ``-3.4e38`` instead of ``-inf``; reduced here from ``-inf``/``+inf``.
  Of booleans: TVM has no minimum of ``bool``; reduced as ``uint8``.
* ``EyeLike``: TVM refuses a ``dtype`` attribute other than the input's type (and its
  ``eye_like`` computes something else there); the input's shape is static, the result a constant.
* ``Elu`` (and ``Celu``'s body): TVM's constants are float32, which float16 inputs refuse.
* ``BitShift``: shifts by a negative amount or by at least the width give 0 (ONNX Runtime),
  not what the machine's shift instruction leaves.
* ``Mod`` with ``fmod=0`` on floats: the result takes the divisor's sign (``numpy.mod``,
  ONNX Runtime), infinite divisors included.
* ``Split`` with zero-size parts: TVM's split needs strictly increasing indices.
* ``NonMaxSuppression``: TVM suppresses a box whose IoU equals the threshold, ONNX only one
  above it (the threshold is passed as the next float32 up).
* ``Clip`` with constant bounds, ``HardSigmoid`` and ``HardSwish`` as Relax ``maximum``/
  ``minimum``/arithmetic: TVM emits TE calls, which layout passes cannot see through (a
  transpose on each side of every ReLU6 in NHWC, and no fusion with the convolution).
* ``Unsqueeze`` with a scalar ``axes`` (ONNX Runtime takes it; AffineGrid's body writes it).
* ``Max``/``Min``/``Sum`` of tensors as a fold of ``maximum``/``minimum``/``add``: TVM stacks
  the inputs on a new axis and reduces it, a 5-D tensor ``ConvertLayout`` cannot move (a model
  with a ``Max`` after its convolutions, openWakeWord's embedding, stayed NCHW).

And three TVM has no converter for (nor ONNX a function body):

* ``CumProd`` (opset 26): ``relax.op.cumprod`` with ``exclusive`` and ``reverse``, as TVM's
  ``CumSum``;
* ``LpNormalization``: ``x / ||x||_p`` along ``axis`` (p = 1 or 2; a zero vector stays zero),
  as ONNX Runtime computes it;
* ``BitCast`` (opset 26) between types of one width: a reinterpretation of the bits.

And one correction of the importer itself: TVM converts an ``If``'s branches into the block
around the ``If``, so both branches ran, op by op, before every ``If`` (openWakeWord's wake-word
classifier ran its verifier on every call). Each branch is now bound in a block of its own, and
one that computes more than a value becomes a private function the ``If`` calls, whose ops
``FuseOps`` fuses (it fuses only a function's top-level blocks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["corrected_converters"]


@contextlib.contextmanager
def corrected_converters() -> Iterator[None]:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    original_map = onnx_frontend._get_convert_map

    class IsInf(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x = inputs[0]
            inf = relax.op.isinf(x)
            positive, negative = attr.get("detect_positive", 1), attr.get("detect_negative", 1)
            if positive and negative:
                return inf
            zero = relax.const(0, str(x.ty.dtype.dtype))
            if positive:
                return relax.op.logical_and(inf, relax.op.greater(x, zero))
            if negative:
                return relax.op.logical_and(inf, relax.op.less(x, zero))
            return relax.op.logical_and(inf, relax.op.logical_not(inf))

    table = original_map()
    base_constant = table["Constant"]

    class Constant(base_constant):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            import numpy as np

            for key, dtype in (("value_int", "int64"), ("value_ints", "int64"), ("value_float", "float32"), ("value_floats", "float32")):
                if key in attr:
                    return relax.const(np.asarray(attr[key], dtype=dtype), dtype)
            return base_constant._impl_v13(bb, inputs, attr, params)

    base_pow = table["Pow"]

    class Pow(base_pow):
        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):
            x, y = bb.normalize(inputs[0]), bb.normalize(inputs[1])
            xd, yd = str(x.ty.dtype.dtype), str(y.ty.dtype.dtype)
            if xd == yd and xd.startswith("float"):
                return base_pow._impl_v7(bb, inputs, attr, params)
            if xd.startswith("float"):
                return relax.op.power(x, relax.op.astype(y, xd))
            wide = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
            return relax.op.astype(wide, xd)

    class CumProd(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            from tvm import topi

            axis_value = onnx_frontend.get_constant(inputs[1], params)
            if not isinstance(axis_value, tvm.ir.GenericConst):
                raise ValueError("CumProd needs a constant axis")
            axis = int(axis_value.value.numpy().reshape(-1)[0])
            data = inputs[0]
            reverse = attr.get("reverse", 0) != 0
            if reverse:
                data = bb.emit_te(topi.flip, data, axis=axis)
            data = bb.normalize(relax.op.cumprod(data, axis, exclusive=attr.get("exclusive", 0) != 0))
            return bb.emit_te(topi.flip, data, axis=axis) if reverse else data

    class LpNormalization(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, axis, p = inputs[0], int(attr.get("axis", -1)), int(attr.get("p", 2))
            if p == 1:
                norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
            elif p == 2:
                norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
            else:
                raise ValueError(f"LpNormalization with p={p} (ONNX allows 1 and 2)")
            # a zero vector stays zero (ONNX Runtime's and the reference's result), not 0/0
            one = relax.const(1, str(x.ty.dtype.dtype))
            zero = relax.const(0, str(x.ty.dtype.dtype))
            return relax.op.divide(x, relax.op.where(relax.op.equal(norm, zero), one, norm))

    def patched():
        return {**original_map(), "IsInf": IsInf, "Constant": Constant, "Pow": Pow, "CumProd": CumProd, "LpNormalization": LpNormalization,
                **_more_converters(table)}  # fmt: skip

    importer = onnx_frontend.ONNXGraphImporter
    original_subgraph = importer._convert_subgraph

    def scoped_subgraph(self, bb, graph):
        # TVM emits a branch's bindings into the enclosing block: both branches of every If
        # then run before the If. Bound in a block of their own, they become the branch's body,
        # a function of its own when it computes more than one value: FuseOps fuses only the
        # top-level blocks of a function, so a branch inline would run one kernel per op.
        bb._begin_binding_block()
        try:
            result = original_subgraph(self, bb, graph)
            leaf = (relax.Var, tvm.ir.expr.Constant)
            if isinstance(result, relax.Tuple):  # several outputs
                result = bb.normalize(relax.Tuple([f if isinstance(f, leaf) else bb.emit(f) for f in result.fields]))
            elif not isinstance(result, leaf):
                result = bb.emit(result)
        finally:
            block = bb._end_block()
        if not block.bindings:
            return result
        body = relax.SeqExpr([block], result)
        params = relax.analysis.free_vars(body)
        if len(block.bindings) < 2 or relax.analysis.free_symbolic_vars(body):
            return body
        func = relax.utils.copy_with_new_vars(relax.Function(params, body, ret_ty=result.ty))
        return relax.Call(bb.add_func(func, f"{graph.name or 'branch'}_branch"), params)

    onnx_frontend._get_convert_map = patched
    importer._convert_subgraph = scoped_subgraph
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original_map
        importer._convert_subgraph = original_subgraph


def _dtype(expr) -> str:
    return str(expr.ty.dtype.dtype)


def _reduce_from_infinity(data, axes: list[int], keepdims: bool, largest: bool):
    """A TE max (``largest``) or min reduction of a float tensor over the (normalized, sorted)
    ``axes`` that starts at -inf (+inf)."""
    from tvm import te
    from tvm import tirx as tir

    ndim = len(data.shape)
    extents = [data.shape[a] for a in axes]
    identity = float("-inf") if largest else float("inf")
    combine = tir.max if largest else tir.min
    reducer = te.comm_reducer(lambda x, y: combine(x, y), lambda t: tir.const(identity, t), name="max_inf" if largest else "min_inf")
    out_shape = [1 if d in axes else data.shape[d] for d in range(ndim)] if keepdims else [data.shape[d] for d in range(ndim) if d not in axes]

    last = data.shape[-1]
    if axes == [ndim - 1] and hasattr(last, "value") and int(last) >= 64 and int(last) % 16 == 0:
        # each row in two steps: 16 partial results side by side (one vector), then those 16; as
        # one chain of dependent scalar min/max a 128 x 1536 row reduction took 47 us on 2 cores
        # (a per-token quantization's range); the custom +-inf reducer cannot be rfactor-ed
        lanes = 16
        outer = te.reduce_axis((0, int(last) // lanes), name="r_outer")
        partial = te.compute([*data.shape[:-1], lanes], lambda *i: reducer(data(*i[:-1], outer * lanes + i[-1]), axis=outer), name="partial_max" if largest else "partial_min")
        inner = te.reduce_axis((0, lanes), name="r_lanes")
        rows = (lambda i: i[:-1]) if keepdims else (lambda i: i)  # the output's index without the reduced axis
        return te.compute(out_shape, lambda *i: reducer(partial(*rows(i), inner), axis=inner), name="reduce_max" if largest else "reduce_min")

    def compute(*index):
        rvars = [te.reduce_axis((0, e), name=f"r{i}") for i, e in enumerate(extents)]
        full, it, rv = [], iter(index), iter(rvars)
        for d in range(ndim):
            if d in axes:
                full.append(next(rv))
                if keepdims:
                    next(it)
            else:
                full.append(next(it))
        return reducer(data(*full), axis=rvars)

    return te.compute(out_shape, compute, name="reduce_max" if largest else "reduce_min")


def _more_converters(table) -> dict:
    import numpy as np
    import tvm
    from tvm import relax, topi
    from tvm.relax.frontend.onnx import onnx_frontend

    def reduce_converter(base, largest: bool):
        relax_reduce = relax.op.max if largest else relax.op.min

        def convert(bb, inputs, attr, axes):
            data = bb.normalize(inputs[0])
            keepdims = bool(attr.get("keepdims", 1))
            dtype = _dtype(data)
            if dtype == "bool":
                return relax.op.astype(relax_reduce(relax.op.astype(data, "uint8"), axes, keepdims), "bool")
            if not dtype.startswith(("float", "bfloat")):
                return relax_reduce(data, axes, keepdims)
            shape = [int(d) for d in data.ty.shape]
            reduced = sorted({int(a) % len(shape) for a in axes}) if axes is not None else list(range(len(shape)))
            if any(shape[a] == 0 for a in reduced):  # an empty reduction: TVM's loops would leave the output unwritten
                out = [1 if d in reduced else n for d, n in enumerate(shape)] if keepdims else [n for d, n in enumerate(shape) if d not in reduced]
                return relax.const(np.full(out, -np.inf if largest else np.inf, dtype=dtype), dtype)
            return bb.emit_te(_reduce_from_infinity, data, reduced, keepdims, largest)

        class Reduce(base):
            @classmethod
            def _impl_v11(cls, bb, inputs, attr, params):
                return convert(bb, inputs, attr, attr.get("axes", None))

            @classmethod
            def _impl_v18(cls, bb, inputs, attr, params):
                axes = None
                if len(inputs) > 1 and inputs[1] is not None:
                    axes_const = onnx_frontend.get_constant(inputs[1], params)
                    if not isinstance(axes_const, tvm.ir.GenericConst):
                        raise ValueError("Only constant axes are supported")
                    axes = axes_const.value.numpy().reshape(-1).tolist()
                if not axes:
                    if attr.get("noop_with_empty_axes", 0):
                        return inputs[0]
                    axes = None
                return convert(bb, inputs, attr, axes)

        return Reduce

    base_eye = table["EyeLike"]

    class EyeLike(base_eye):
        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            x = bb.normalize(inputs[0])
            dtype = onnx_frontend.get_type(attr["dtype"]) if "dtype" in attr else _dtype(x)
            rows, cols = (int(d) for d in x.ty.shape)  # static: an identity of that shape is a constant
            return relax.const(np.eye(rows, cols, int(attr.get("k", 0)), dtype=dtype), dtype)

    class Elu(table["Elu"]):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            dtype = _dtype(x)
            alpha = relax.const(-float(attr.get("alpha", 1.0)), dtype)
            one = relax.const(1.0, dtype)
            return relax.op.add(relax.op.multiply(alpha, relax.op.nn.relu(relax.op.subtract(one, relax.op.exp(x)))), relax.op.nn.relu(x))

    base_shift = table["BitShift"]

    class BitShift(base_shift):
        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            shifted = base_shift._impl_v11(bb, inputs, attr, params)
            if not isinstance(shifted, relax.Expr) or isinstance(shifted, tvm.ir.GenericConst):
                return shifted
            x, y = bb.normalize(inputs[0]), bb.normalize(inputs[1])
            dtype = _dtype(x)
            width = relax.const(np.dtype(dtype).itemsize * 8, _dtype(y))
            out_of_range = relax.op.greater_equal(y, width)
            if not dtype.startswith("uint"):
                out_of_range = relax.op.logical_or(out_of_range, relax.op.less(y, relax.const(0, _dtype(y))))
            zero = relax.const(0, dtype)
            if attr.get("direction", b"LEFT") in (b"RIGHT", "RIGHT") and not dtype.startswith("uint"):
                zero = relax.op.where(relax.op.less(x, zero), relax.const(-1, dtype), zero)  # an arithmetic shift fills with the sign
            return relax.op.where(out_of_range, zero, shifted)

    base_mod = table["Mod"]

    class Mod(base_mod):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, y = inputs[0], inputs[1]
            if attr.get("fmod", 0) != 0 or not isinstance(x, relax.Expr) or not _dtype(bb.normalize(x)).startswith("float"):
                return base_mod._impl_v10(bb, inputs, attr, params)
            x, y = bb.normalize(x), bb.normalize(y)
            zero = relax.const(0, _dtype(x))
            r = bb.normalize(relax.op.mod(x, y))  # truncated: the sign of x
            wrong_sign = relax.op.logical_and(relax.op.not_equal(r, zero), relax.op.logical_xor(relax.op.less(r, zero), relax.op.less(y, zero)))
            return relax.op.where(wrong_sign, relax.op.add(r, y), r)

    base_split = table["Split"]

    class Split(base_split):
        @classmethod
        def _sizes(cls, inputs, attr, params):
            if "split" in attr:
                return [int(s) for s in attr["split"]]
            if len(inputs) > 1 and inputs[1] is not None:
                const = onnx_frontend.get_constant(inputs[1], params)
                if isinstance(const, tvm.ir.GenericConst):
                    return [int(s) for s in const.value.numpy().reshape(-1)]
            return None

        @classmethod
        def _split(cls, bb, inputs, attr, params, base_impl):
            sizes = cls._sizes(inputs, attr, params)
            if not sizes or all(sizes):
                return base_impl(bb, inputs, attr, params)
            data = bb.normalize(inputs[0])
            axis = int(attr.get("axis", 0)) % data.ty.ndim
            shape = [int(d) for d in data.ty.shape]
            nonzero = [s for s in sizes if s]
            parts = []
            if len(nonzero) > 1:
                bounds = list(np.cumsum(nonzero)[:-1])
                pieces = bb.emit(relax.op.split(data, [int(b) for b in bounds], axis))
                parts = [bb.emit(relax.TupleGetItem(pieces, i)) for i in range(len(nonzero))]
            elif nonzero:
                parts = [data]
            it = iter(parts)
            out = []
            for s in sizes:
                if s:
                    out.append(next(it))
                else:
                    empty = list(shape)
                    empty[axis] = 0
                    out.append(relax.const(np.zeros(empty, dtype=_dtype(data)), _dtype(data)))
            return relax.Tuple(out)

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return cls._split(bb, inputs, attr, params, base_split._impl_v1)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            return cls._split(bb, inputs, attr, params, base_split._impl_v13)

    base_unsqueeze = table["Unsqueeze"]

    class Unsqueeze(base_unsqueeze):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            axes = onnx_frontend.get_constant(inputs[1], params) if len(inputs) > 1 and inputs[1] is not None else None
            if isinstance(axes, tvm.ir.GenericConst) and axes.value.numpy().ndim == 0:  # a scalar axis (ONNX Runtime takes it)
                inputs = [inputs[0], relax.const(axes.value.numpy().reshape(1), "int64"), *inputs[2:]]
            return base_unsqueeze._impl_v13(bb, inputs, attr, params)

    base_nms = table["NonMaxSuppression"]

    class NonMaxSuppression(base_nms):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            inputs = list(inputs)
            if len(inputs) > 3 and isinstance(inputs[3], tvm.ir.GenericConst):
                # ONNX suppresses a box whose IoU is *above* the threshold; TVM's kernel also
                # suppresses one exactly at it: the next float32 up makes its test ONNX's
                t = np.float32(inputs[3].value.numpy().reshape(-1)[0])
                inputs[3] = relax.const(np.nextafter(t, np.float32(np.inf)).reshape(1), "float32")
            return base_nms._impl_v10(bb, inputs, attr, params)

    base_clip = table["Clip"]

    class Clip(base_clip):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            # relax's maximum/minimum instead of TE calls: layout passes (NHWC convolutions)
            # see through them, where a call_tir needs a transpose on each side
            x = bb.normalize(inputs[0])
            bounds = [b for b in inputs[1:3] if b is not None]
            if not all(isinstance(b, tvm.ir.GenericConst) for b in bounds):
                return base_clip._impl_v13(bb, inputs, attr, params)
            dtype = _dtype(x)
            out = x
            for bound, largest in ((inputs[1] if len(inputs) > 1 else None, True), (inputs[2] if len(inputs) > 2 else None, False)):
                if bound is None:
                    continue
                value = bound.value.numpy().reshape(-1)[0]
                if np.isnan(value):  # a NaN bound is no bound (ONNX Runtime)
                    continue
                const = relax.const(np.asarray(value, dtype=dtype), dtype)
                out = relax.op.maximum(out, const) if largest else relax.op.minimum(out, const)
            return out

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return cls._impl_v13(bb, inputs, attr, params)

    def hard_sigmoid(x, alpha: float, beta: float):
        dtype = _dtype(x)
        linear = relax.op.add(relax.op.multiply(x, relax.const(alpha, dtype)), relax.const(beta, dtype))
        return relax.op.minimum(relax.op.maximum(linear, relax.const(0.0, dtype)), relax.const(1.0, dtype))

    class HardSigmoid(table["HardSigmoid"]):
        @classmethod
        def _impl_v6(cls, bb, inputs, attr, params):
            return hard_sigmoid(bb.normalize(inputs[0]), float(attr.get("alpha", 0.2)), float(attr.get("beta", 0.5)))

    class HardSwish(table["HardSwish"]):
        @classmethod
        def _impl_v14(cls, bb, inputs, attr, params):
            x = bb.normalize(inputs[0])
            return relax.op.multiply(x, hard_sigmoid(x, 1.0 / 6.0, 0.5))

    class BitCast(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = bb.normalize(inputs[0])
            to = onnx_frontend.get_type(attr["to"])
            if np.dtype(_dtype(x)).itemsize != np.dtype(to).itemsize:
                raise ValueError(f"BitCast from {_dtype(x)} to {to}: the types differ in width")
            return bb.emit_te(topi.reinterpret, x, to)

    def pairwise(base):
        class Pairwise(base):
            @classmethod
            def _impl_v1(cls, bb, inputs, attr, params):
                # folded with the binary op (it broadcasts): TVM stacks the inputs along a new
                # leading axis and reduces it, a 5-D tensor that ConvertLayout cannot move (the
                # whole model stays NCHW) and a copy of every input
                if len(inputs) < 2 or all(isinstance(i, tvm.ir.GenericConst) for i in inputs) or base.binary_op is None:
                    return base._impl_v1(bb, inputs, attr, params)
                return base._impl_dynamic(bb, inputs)

        Pairwise.__name__ = base.__name__
        return Pairwise

    return {"ReduceMax": reduce_converter(table["ReduceMax"], True), "ReduceMin": reduce_converter(table["ReduceMin"], False),
            "EyeLike": EyeLike, "Elu": Elu, "BitShift": BitShift, "Mod": Mod, "Split": Split, "Unsqueeze": Unsqueeze, "NonMaxSuppression": NonMaxSuppression,
            "Clip": Clip, "HardSigmoid": HardSigmoid, "HardSwish": HardSwish, "BitCast": BitCast,
            "Max": pairwise(table["Max"]), "Min": pairwise(table["Min"]), "Sum": pairwise(table["Sum"])}  # fmt: skip
