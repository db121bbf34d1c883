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

And two TVM has no converter for (nor ONNX a function body):

* ``CumProd`` (opset 26): ``relax.op.cumprod`` with ``exclusive`` and ``reverse``, as TVM's
  ``CumSum``;
* ``LpNormalization``: ``x / ||x||_p`` along ``axis`` (p = 1 or 2; a zero vector stays zero),
  as ONNX Runtime computes it.
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
        return {**original_map(), "IsInf": IsInf, "Constant": Constant, "Pow": Pow, "CumProd": CumProd, "LpNormalization": LpNormalization}

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original_map
