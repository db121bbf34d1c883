"""Vectorizable float math for CPU builds.

TVM lowers ``erf``, ``exp``, ``tanh`` and ``sigmoid`` to scalar libm calls, one per element:
MiniLM's GELU epilogues took 11.6 of its 26 ms; YOLOv8's SiLU after every convolution
(nudenet) a sigmoid per output. :func:`fast_math_legalization` maps those ops (and GELU and
softmax, which contain them; sigmoid as ``1 / (1 + fast_exp(-x))``) onto TVM's own polynomial forms (``topi.fast_erf``/``fast_exp``/
``fast_tanh``, from Eigen), which compile to straight-line vector code.

They are approximations: measured over their whole float32 range here, ``fast_erf`` is within
3.3e-7 absolute of ``math.erf`` (libm: 4.9e-8), ``fast_exp`` within 2.8e-7 relative
(libm: 5.9e-8), ``fast_tanh`` within 2.7e-7 — a few float32 ulps, inside the fp32 tolerance
every build is checked with. ``compile_model(fast_math=False)`` keeps libm.

:func:`exact_legalization` is no approximation: a ``quantize`` by one scale divides
each element by it (a vector division, about ten cycles a vector), and computes the same
quotient as a multiply by the inverted scale and two FMAs (Markstein's correction), so the
integers are those of ONNX Runtime's division; ``Pow(x, 2)`` (a libm ``pow`` call per element)
is ``x * x``, as ONNX Runtime computes it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAST_MATH_OPS", "exact_legalization", "fast_math_legalization"]

#: the Relax ops given polynomial forms (float32 only; other dtypes keep TVM's legalization)
FAST_MATH_OPS = ("relax.erf", "relax.exp", "relax.tanh", "relax.sigmoid", "relax.nn.gelu", "relax.nn.softmax")


def fast_math_legalization() -> dict[str, Any]:
    """A ``customize_legalize_map`` for ``relax.transform.LegalizeOps``."""
    import tvm
    from tvm import tirx, topi

    def float32(call) -> bool:
        ty = call.args[0].ty
        return hasattr(ty, "dtype") and str(ty.dtype.dtype) == "float32"

    def fast(name: str, emit):
        default = tvm.ir.Op.get(name).get_attr("FLegalize")

        def legalize(bb, call):
            return emit(bb, call) if float32(call) else default(bb, call)

        return legalize

    def unary(name: str, fn):
        return fast(name, lambda bb, call: bb.call_te(fn, call.args[0], primfunc_name_hint=name.split(".")[-1]))

    def gelu(x):
        return x * (tirx.const(0.5, "float32") + topi.fast_erf(x * tirx.const(0.5**0.5, "float32")) * tirx.const(0.5, "float32"))

    def sigmoid(x):  # 1 / (1 + e^-x): fast_exp clamps its argument, so no infinity for very negative x
        one = tirx.const(1.0, "float32")
        return one / (one + topi.fast_exp(-x))

    def softmax(bb, call):
        return bb.call_te(_fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")

    return {"relax.erf": unary("relax.erf", topi.fast_erf), "relax.exp": unary("relax.exp", topi.fast_exp),
             "relax.tanh": unary("relax.tanh", topi.fast_tanh), "relax.sigmoid": unary("relax.sigmoid", sigmoid), "relax.nn.gelu": unary("relax.nn.gelu", gelu),
             "relax.nn.softmax": fast("relax.nn.softmax", softmax)}  # fmt: skip


def _fast_softmax(x, axis: int):
    """``topi.nn.fast_softmax`` (the same blocks, so the schedules see the same kernel) with each
    row's sum inverted once and multiplied in, as ONNX Runtime's softmax does, instead of one
    division per element: a vector division costs about ten cycles a vector, a multiply half of
    one (MiniLM's softmax over 12 x 128 rows of 128)."""
    from tvm import te, tirx, topi

    shape = x.shape
    axis = axis + len(shape) if axis < 0 else axis
    k1, k2 = te.reduce_axis((0, shape[axis]), name="k"), te.reduce_axis((0, shape[axis]), name="k")

    def at(indices, k):
        return indices[:axis] + (k,) + indices[axis:]

    def row(indices):
        return tuple(v for i, v in enumerate(indices) if i != axis)

    reduced = tuple(d for i, d in enumerate(shape) if i != axis)
    max_elem = te.compute(reduced, lambda *i: te.max(x[at(i, k1)], axis=k1), name="T_softmax_maxelem")
    delta = te.compute(shape, lambda *i: x[i] - max_elem[row(i)], name="T_softmax_delta")
    exp = topi.fast_exp(delta)
    expsum = te.compute(reduced, lambda *i: te.sum(exp[at(i, k2)], axis=k2), name="T_softmax_expsum")
    one = tirx.const(1.0, x.dtype)
    return te.compute(shape, lambda *i: exp[i] * (one / expsum[row(i)]), name="T_softmax_norm", attrs={"axis": axis})


#: the scales whose quotients :func:`exact_legalization` corrects: every intermediate
#: stays a normal float for quotients up to :data:`_EXACT_QUOTIENT`; others divide
_SCALE_RANGE = (2.0**-100, 2.0**100)
#: quotients beyond this are clipped to the integer range anyway: taken as the multiply gave them
_EXACT_QUOTIENT = 2.0**22


def exact_legalization() -> dict[str, Any]:
    """A ``customize_legalize_map`` with the same results as TVM's, faster: ``relax.power`` by
    the constant 2 as a product (TVM calls libm's ``pow`` per element; ONNX Runtime squares), and
    ``relax.quantize`` of float32 data by one scale:
    ``round(x / s)`` computed as ``q = x * (1 / s)``, ``e = fma(-q, s, x)`` (exact), ``q + e / s``
    as ``fma(e, 1 / s, q)``: with ``1 / s`` correctly rounded and ``q`` within an ulp of the
    quotient, that is the correctly rounded quotient (Markstein's theorem; no overflow or
    underflow in the range used), so rounding it gives the integers a division gives. One
    division per call instead of one per element (MiniLM's dynamic quantizers). Constant scales,
    per-channel scales, other dtypes and scales outside :data:`_SCALE_RANGE` keep TVM's legalization."""
    import tvm
    from tvm import te, tirx
    from tvm.relax.transform.legalize_ops.common import _try_convert_to_scalar_const

    default = tvm.ir.Op.get("relax.quantize").get_attr("FLegalize")

    def legalize(bb, call):
        x, scale, zp = call.args[0], _try_convert_to_scalar_const(call.args[1]), _try_convert_to_scalar_const(call.args[2])
        out_dtype = str(call.attrs.out_dtype)
        if not (hasattr(x.ty, "dtype") and str(x.ty.dtype.dtype) == "float32" and "int" in out_dtype):
            return default(bb, call)
        if isinstance(scale, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
            # a constant scale keeps the division: the multiply with its correction (5 more vector
            # operations per vector) measured level or slower in integer kernels' write-backs
            # (whole models, both forms timed alternately: MobileNetV2 quantized for AVX2
            # 0.99x-1.00x, ResNet-18 int8 on AVX2 0.996x, on AMX 0.991x); the requantization
            # right behind an integer layer comes here with the scale 1 (int8.qdq.fold_requantize)
            return default(bb, call)
        if not all(int(d) == 1 for d in getattr(getattr(scale.ty, "shape", None), "values", [0])):
            return default(bb, call)  # one scale per channel (or a shape not known here)

        def compute(data, s, z):
            def at(t):  # the one element of a scale or zero point, or the constant
                return t[(0,) * len(t.shape)] if isinstance(t, te.Tensor) else t

            def element(*i):
                sv, zv = at(s), at(z).astype("float32")
                inv = tirx.const(1.0, "float32") / sv
                xv = data[i]
                q = xv * inv
                e = tirx.call_llvm_pure_intrin("float32", "llvm.fma", -q, sv, xv)
                fixed = tirx.Select(tirx.abs(q) < tirx.const(_EXACT_QUOTIENT, "float32"), tirx.call_llvm_pure_intrin("float32", "llvm.fma", e, inv, q), q)
                normal = tirx.all(sv >= tirx.const(_SCALE_RANGE[0], "float32"), sv <= tirx.const(_SCALE_RANGE[1], "float32"))
                quotient = tirx.if_then_else(normal, fixed, xv / sv)
                rounded = te.round(quotient) + zv
                return te.max(te.min(rounded, tirx.max_value(out_dtype).astype("float32")), tirx.min_value(out_dtype).astype("float32")).astype(out_dtype)

            return te.compute(data.shape, element, name="quantized")

        return bb.call_te(compute, x, scale, zp, primfunc_name_hint="quantize")

    default_power = tvm.ir.Op.get("relax.power").get_attr("FLegalize")

    def power(bb, call):
        exponent = _try_convert_to_scalar_const(call.args[1], python_native=True)
        x = call.args[0]
        if exponent != 2 or not (hasattr(x.ty, "dtype") and str(x.ty.dtype.dtype) in ("float32", "float64")) or call.args[1].ty.dtype.dtype != x.ty.dtype.dtype:
            return default_power(bb, call)
        return bb.call_te(lambda t: te.compute(t.shape, lambda *i: t[i] * t[i], name="T_power"), x, primfunc_name_hint="power")

    return {"relax.quantize": legalize, "relax.power": power}
