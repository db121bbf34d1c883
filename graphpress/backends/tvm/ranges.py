"""A dynamically quantized activation's range, read once.

ONNX's ``DynamicQuantizeLinear`` (what a dynamically quantized MatMul's input goes through)
becomes ``max(x)`` and ``min(x)`` of the whole activation in TVM's frontend: two kernels, each
reading ``x`` from memory. :func:`fused_ranges` makes every such pair one kernel of two outputs,
``max(x)`` and ``-min(x)``, both computed as the maximum over the pair ``(x, -x)``: negation is
exact, so ``min(x) = -max(-x)`` bit for bit. ``schedules._ranges_reduction`` unrolls the pair
inside the loop over vector lanes, so that each vector of ``x`` is loaded once for both.
"""

from __future__ import annotations

from graphpress.backends.tvm.layout import relax_module_pass
from graphpress.backends.tvm.schedules import RANGES_ATTR

__all__ = ["RANGES", "fused_ranges", "ranges_compute"]

#: the Relax rewrite is applied (a switch for A/B measurements)
RANGES = True

_OPAQUE = 8  # FuseOps' pattern kind: the kernel stays alone, and its schedule sees only its own block

#: the element types whose negation is exact and whose ranges are fused
_FLOATS = ("float32", "float16", "bfloat16")


def ranges_compute(x):
    """The TE compute of ``(max(x), -min(x))`` over every element of ``x``."""
    from tvm import te, tirx

    axes = [te.reduce_axis((0, d), name=f"k{i}") for i, d in enumerate(x.shape)]
    return te.compute(
        (2,), lambda j: te.max(tirx.Select(j == 0, x[tuple(axes)], -x[tuple(axes)]), axis=axes), name="ranges", attrs={RANGES_ATTR: 1}
    )


def _whole_reduction(call, ops) -> bool:
    """``call`` is ``max``/``min`` over every axis of a float tensor of static shape, to a scalar."""
    if not isinstance(call, _relax().Call) or not any(call.op.same_as(op) for op in ops) or call.attrs.axis is not None or call.attrs.keepdims:
        return False
    ty = call.args[0].ty
    shape = getattr(ty, "shape", None)
    if str(getattr(ty, "dtype", "")) not in _FLOATS or shape is None or not hasattr(shape, "values"):
        return False
    return len(shape.values) > 0 and all(hasattr(d, "value") for d in shape.values)


def _relax():
    from tvm import relax

    return relax


def _paired(mod, ops) -> set:
    """The variables of which one binding block of ``mod`` takes both the max and the min."""
    relax = _relax()
    paired = set()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            seen: dict = {}
            for binding in block.bindings:
                value = getattr(binding, "value", None)
                if _whole_reduction(value, ops) and isinstance(value.args[0], relax.Var):
                    seen.setdefault(value.args[0], set()).add(0 if value.op.same_as(ops[0]) else 1)
            paired |= {x for x, kinds in seen.items() if kinds == {0, 1}}
    return paired


def fused_ranges():
    """A Relax pass making the ``max`` and ``min`` of the same tensor in one binding block (a
    dynamic quantizer's range) one kernel reading it once (:func:`ranges_compute`)."""
    import tvm
    from tvm import te
    from tvm.relax.expr_functor import PyExprMutator, mutator

    relax = _relax()
    ops = [tvm.ir.Op.get("relax.max"), tvm.ir.Op.get("relax.min")]

    @mutator
    class Ranges(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.paired = _paired(mod, ops) if RANGES else set()
            self.kernels: dict = {}  # in the block being visited: the range kernel of each paired tensor

        def visit_dataflow_block_(self, block):
            self.kernels = {}
            return super().visit_dataflow_block_(block)

        def visit_binding_block_(self, block):
            self.kernels = {}
            return super().visit_binding_block_(block)

        def visit_call_(self, call):
            x = call.args[0] if _whole_reduction(call, ops) else None
            new = super().visit_call_(call)
            if x is None or x not in self.paired:
                return new
            if x not in self.kernels:
                arg = new.args[0]
                placeholder = te.placeholder([int(d) for d in arg.ty.shape.values], str(arg.ty.dtype), "x")
                func = te.create_prim_func([placeholder, ranges_compute(placeholder)]).without_attr("global_symbol").with_attr("op_pattern", _OPAQUE)
                kernel = relax.call_tir(self.builder_.add_func(func, "ranges"), [arg], relax.TensorType([2], str(arg.ty.dtype)))
                self.kernels[x] = self.builder_.emit(kernel)
            which = 0 if call.op.same_as(ops[0]) else 1
            # a slice, not a take: FuseOps sees a take's indirect load as opaque, and each take
            # stayed a kernel of its own instead of fusing into the scale's arithmetic
            one = self.builder_.emit(relax.op.strided_slice(self.kernels[x], axes=[0], begin=[which], end=[which + 1]))
            value = relax.op.reshape(one, [])
            return value if which == 0 else relax.op.negative(self.builder_.emit(value))

    return relax_module_pass(Ranges, "FusedRanges")
