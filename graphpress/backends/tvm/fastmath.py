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
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAST_MATH_OPS", "fast_math_legalization"]

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
