"""Which integer layers get an integer kernel: the per-layer guard.

For every ``MatMulInteger``/``ConvInteger`` with a constant int8 weight, the integer kernel and the
fp32 kernel that layer would otherwise get (same shapes, the fp32 build's schedules and tuning
databases) are compiled and timed on this machine. A layer whose integer kernel is not faster is
rewritten to float compute with the same integer result, and the report says so. A layer no
integer kernel takes (dynamic shapes, a weight zero point) says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.backends.tvm.int8.conv_layout import conv_geometry, kernel_label, onnx_conv_key
from graphpress.backends.tvm.int8.dot import schedule_dot_kernels
from graphpress.backends.tvm.int8.emit import FALLBACK, INT8_ATTR, dense_unsupported, emit_conv, emit_matmul, k_padded, lower_int8_convs
from graphpress.backends.tvm.int8.isa import Isa
from graphpress.backends.tvm.int8.qdq import const
from graphpress.backends.tvm.runtime import load_program, time_side_by_side
from graphpress.backends.tvm.schedules import schedule_injective
from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline
from graphpress.backends.tvm.tuning import Tuning, schedule_cpu
from graphpress.ir.edit import add_initializer, replace_value

__all__ = ["Int8Decision", "plan_int8", "to_float"]


@dataclasses.dataclass
class Int8Decision:
    """What the guard decided for one MatMulInteger/ConvInteger node."""

    node: str
    shape: tuple[int, int, int]  # M, N, K
    int8_ms: float | None
    fp32_ms: float | None
    lowered: bool
    reason: str
    kernel: str = ""  # the integer kernel a lowered node runs on
    isa: str = ""  # the ISA of the faster integer kernel where two were timed (a tile ISA and its fallback)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _int8_pipeline(mod, target, isa: Isa):
    """What the model build does to the int8 path: the integer convolutions onto their kernels,
    the zero pipeline, then the schedules for the elementwise epilogue kernels (so the guard
    times what would ship)."""
    import tvm
    from tvm import relax

    with target:
        steps = [lower_int8_convs(isa), relax.transform.CanonicalizeBindings(), relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero")]
        mod = tvm.transform.Sequential(steps)(mod)
    return schedule_injective(schedule_dot_kernels(mod)[0])[0]


@dataclasses.dataclass
class _Pair:
    """One layer to time both ways: ``emit_*(bb, x)`` emit it on an input like ``x_*``."""

    emit_int8: Callable
    emit_fp32: Callable
    x_int8: np.ndarray
    x_fp32: np.ndarray


def _time_pairs(pairs: list[_Pair], spec, tuning: Tuning, repeat: int, isa: Isa, fallback: list[_Pair | None] | None = None) -> list[tuple[float, float, float | None]]:
    """(int8 ms, fp32 ms, fallback int8 ms) of each layer of ``pairs`` built both ways for
    ``spec``: every layer's integer kernel a function of one module (through the int8 build's
    pipeline), every fp32 one a function of another (the fp32 build's schedules), so a model's
    guard is two builds and two loads however many layers it times (it was two per layer:
    PP-OCR's classifier, 33 layer shapes, 6 s); each layer's functions timed side by side.
    ``fallback``: for a tile ISA, each layer's integer kernel on ``isa.fallback`` too (``None``
    where the layer does not take the tile ISA): a third module, timed with the other two."""
    import tvm
    from tvm import relax

    target = spec.tvm_target()

    def module(chosen: list[tuple[int, _Pair]], integer: bool):
        bb = relax.BlockBuilder()
        for i, pair in chosen:
            x_np = pair.x_int8 if integer else pair.x_fp32
            x = relax.Var("x", relax.TensorType(x_np.shape, str(x_np.dtype)))
            with bb.function(f"layer{i}", [x]):
                with bb.dataflow():
                    out = bb.emit_output((pair.emit_int8 if integer else pair.emit_fp32)(bb, x))
                bb.emit_func_output(out)
        return bb.get()

    def load(mod):
        return load_program(tvm.compile(mod, target=target, tir_pipeline=cpu_tir_pipeline()))

    every = list(enumerate(pairs))
    int8_vm = load(_int8_pipeline(module(every, True), target, isa))
    candidates, _ = schedule_cpu(module(every, False), spec, dataclasses.replace(tuning, trials=0))
    fp32_vm = load(next(iter(candidates.values()))[0])
    others = [(i, p) for i, p in enumerate(fallback or []) if p is not None]
    fallback_vm = load(_int8_pipeline(module(others, True), target, isa.fallback)) if others and isa.fallback is not None else None
    timings = []
    for i, pair in enumerate(pairs):
        runs = [(int8_vm, [pair.x_int8]), (fp32_vm, [pair.x_fp32])]
        alternative = fallback[i] if fallback_vm is not None and fallback is not None else None
        if alternative is not None:
            runs.append((fallback_vm, [alternative.x_int8]))
        ms = time_side_by_side(runs, number=max(1, repeat // 10), rounds=5, function=f"layer{i}")
        timings.append((ms[0], ms[1], ms[2] if alternative is not None else None))
    return timings


def _random_weight(shape, narrow: int) -> np.ndarray:
    """A random int8 weight for timing, that takes the kernel ``narrow`` steps down the ISA's
    chain of narrow ones as the layer's own weight does (:meth:`Isa.for_weight`): 7 bits for
    one step (no pair saturates int16), 6 for two (no group of four)."""
    bound = 127 >> narrow
    return np.random.default_rng(0).integers(-bound, bound + 1, shape, dtype=np.int8)


def _dense_pair(m: int, n: int, k: int, a_dtype: str, isa: Isa, narrow: int) -> _Pair:
    """One dense layer to time both ways."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w = _random_weight((k, n), narrow)
    return _Pair(
        lambda bb, x: emit_matmul(bb, x, w, relax.const(3, a_dtype), isa),
        lambda bb, x: relax.op.matmul(x, relax.const(w.astype(np.float32))),
        rng.integers(0, 128, (m, k)).astype(a_dtype), rng.standard_normal((m, k)).astype(np.float32),
    )  # fmt: skip


def _conv_pair(x_shape, w_shape, attrs: dict, zero_point: int, narrow: int) -> _Pair:
    """One convolution to time both ways, both in NHWC (the layout the model build gives
    convolutions and their neighbours)."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w = _random_weight(w_shape, narrow)
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    n, c, h, wd = x_shape

    def fp32(bb, x):
        return relax.op.nn.conv2d(x, relax.const(w.transpose(2, 3, 1, 0).astype(np.float32)), strides=tuple(attrs.get("strides", (1, 1))),
                                  padding=(pads[0], pads[1], pads[2], pads[3]), dilation=tuple(attrs.get("dilations", (1, 1))),
                                  data_layout="NHWC", kernel_layout="HWIO")  # fmt: skip

    return _Pair(
        lambda bb, x: emit_conv(bb, x, w, zero_point, attrs, layout="NHWC"), fp32,
        rng.integers(0, 256, (n, h, wd, c)).astype(np.uint8), rng.standard_normal((n, h, wd, c)).astype(np.float32),
    )  # fmt: skip


def to_float(graph: ir.Graph, node: ir.Node, w: np.ndarray) -> None:
    """Replace ``MatMulInteger``/``ConvInteger(x, W, zx)`` by float compute (MatMul/Conv on the
    float weight) with the same integer result."""
    base = node.name or node.outputs[0].name
    cast_a = ir.node("Cast", [node.inputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{base}/fp32_x")
    new = [cast_a]
    x = cast_a.outputs[0]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        cast_z = ir.node("Cast", [node.inputs[2]], attributes={"to": ir.DataType.FLOAT}, name=f"{base}/fp32_zx")
        sub = ir.node("Sub", [x, cast_z.outputs[0]], name=f"{base}/fp32_sub")
        new += [cast_z, sub]
        x = sub.outputs[0]
    op = "Conv" if node.op_type == "ConvInteger" else "MatMul"
    attrs = {k: v.value for k, v in node.attributes.items() if k != INT8_ATTR}
    fp32 = ir.node(op, [x, add_initializer(graph, f"{base}.fp32_weight", w.astype(np.float32))], attributes=attrs or None, name=f"{base}/fp32_{op.lower()}")
    # the accumulator is an integer: round, not truncate, back to int32
    rnd = ir.node("Round", [fp32.outputs[0]], name=f"{base}/fp32_round")
    out = node.outputs[0]
    consumers = list(out.consumers())
    is_float_cast = lambda c: c.op_type == "Cast" and c.attributes.get_int("to", 0) == ir.DataType.FLOAT  # noqa: E731
    if consumers and all(is_float_cast(c) for c in consumers) and not out.is_graph_output():
        # Cast(float, Cast(int32, r)) is r itself (an integer below 2**31): the pair left out, and
        # with it TVM's float->int32 cast (NaN/inf and wrap-around handling, 0.09 ms for a
        # 112x32x8x8 map) in front of the requantization
        graph.insert_before(node, [*new, fp32, rnd])
        for cast in consumers:
            replace_value(cast.outputs[0], rnd.outputs[0])
            graph.remove(cast, safe=True)
        graph.remove(node, safe=True)
        return
    back = ir.node("Cast", [rnd.outputs[0]], attributes={"to": ir.DataType.INT32}, name=f"{base}/fp32_int32")
    new += [fp32, rnd, back]
    graph.insert_before(node, new)
    replace_value(node.outputs[0], back.outputs[0])
    graph.remove(node, safe=True)


def _static(value: ir.Value) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in (value.shape or [])]


@dataclasses.dataclass(eq=False)
class _Layer:
    """An integer layer an integer kernel takes: what its decision needs, and the pair of kernels
    the guard times for it (layers with one ``key`` share one timing)."""

    node: ir.Node
    w: np.ndarray
    mnk: tuple[int, int, int]
    kernel: str
    key: tuple
    pair: Callable[[], _Pair]
    narrow: int  # steps down the ISA's chain of narrow kernels the weight fits (0: the ISA's own)
    # a layer on a tile ISA (AMX): the same layer on the ISA's fallback, timed too, and its kernel
    fallback: Callable[[], _Pair] | None = None
    fallback_kernel: str = ""
    conv: tuple[int, ...] = ()  # a convolution's :func:`~.conv_layout.conv_key`


@dataclasses.dataclass
class _Planner:
    graph: ir.Graph
    isa: Isa

    def conv(self, node: ir.Node) -> Int8Decision | _Layer:
        x, w = node.inputs[0], const(node.inputs[1])
        zx = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros((), np.uint8)
        shape = _static(x)
        attrs = {k: tuple(v.value) for k, v in node.attributes.items() if k in ("pads", "strides", "dilations")}
        reason = None
        if w is None or w.dtype != np.int8 or w.ndim != 4 or zx is None or zx.dtype != np.uint8:
            reason = "weight or zero point is not constant int8/uint8"
        elif len(shape) != 4 or None in shape:
            reason = "activation shape is not static 4-D"
        if reason is not None:
            if w is not None:
                to_float(self.graph, node, w)
            return Int8Decision(node.name or node.outputs[0].name, (0, 0, 0), None, None, False, reason + ": kept in fp32")
        g = conv_geometry(shape, w.shape, attrs, self.isa, w)
        zp = int(zx.reshape(-1)[0])
        narrow = self.isa.narrowing(g["isa"])
        key = ("conv", tuple(shape), w.shape, tuple(sorted(attrs.items())), narrow)
        layer = _Layer(node, w, (g["m"], g["oc"], g["k"]), kernel_label(g), key, lambda: _conv_pair(shape, w.shape, attrs, zp, narrow), narrow)
        layer.conv = onnx_conv_key(shape, w.shape, attrs, zp)
        if g["isa"].tiles is not None and g["isa"].fallback is not None:  # the same pair: the int8 module's pipeline picks the ISA
            layer.fallback, layer.fallback_kernel = layer.pair, kernel_label(conv_geometry(shape, w.shape, attrs, g["isa"].fallback, w))
        return layer

    def dense(self, node: ir.Node) -> Int8Decision | _Layer:
        a, w = node.inputs[0], const(node.inputs[1])
        zb = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        shape = _static(a)
        a_dtype = {ir.DataType.UINT8: "uint8", ir.DataType.INT8: "int8"}.get(a.dtype, str(a.dtype))
        reason = dense_unsupported(w, zb, a_dtype, shape)
        if reason is not None:
            return Int8Decision(node.name or node.outputs[0].name, (0, 0, 0), None, None, False, reason)
        k, n = w.shape
        m = int(np.prod(shape[:-1]))
        padded = k_padded(w)  # as emit_matmul takes it: a tile ISA may fit the padded K only
        isa = self.isa.for_shape(m, padded.shape[0]).for_weight(padded)
        narrow = self.isa.narrowing(isa)
        layer = _Layer(node, w, (m, n, k), f"{isa.label} kernel", (m, n, k, a_dtype, narrow), lambda: _dense_pair(m, n, k, a_dtype, self.isa, narrow), narrow)
        if isa.tiles is not None and isa.fallback is not None:
            layer.fallback, layer.fallback_kernel = (lambda: _dense_pair(m, n, k, a_dtype, isa.fallback, 0)), f"{isa.fallback.label} kernel"
        return layer


def _decide(graph: ir.Graph, layer: _Layer, timing: tuple[float, float, float | None] | None, only: frozenset[str] | None, isa: Isa,
            fallback: frozenset[str] = frozenset()) -> Int8Decision:  # fmt: skip
    """Lower ``layer`` to its integer kernel unless the guard's ``timing`` (int8 ms, fp32 ms,
    fallback int8 ms) has it no faster than fp32 (or, given ``only``, unless it is not among those
    nodes: nothing timed; those in ``fallback`` on the ISA's fallback). A layer a tile ISA takes
    runs on the ISA's fallback where that kernel was faster (marked :data:`~.emit.FALLBACK`)."""
    node = layer.node
    name = node.name or node.outputs[0].name
    int8_ms = fp32_ms = None
    kernel, mark, chosen = layer.kernel, 1, ""
    lowered, why = True, f"{layer.kernel} (guard off)"
    if only is not None:
        if layer.fallback is not None:
            kernel, mark, chosen = (layer.fallback_kernel, FALLBACK, isa.fallback.name) if name in fallback else (layer.kernel, 1, isa.name)
        lowered, why = name in only, f"{kernel} (chosen by name)"
    elif timing is not None:
        int8_ms, fp32_ms, other_ms = (*timing, None)[:3]  # no third figure: nothing timed on the fallback
        why = ""
        if other_ms is not None:
            first = other_ms < int8_ms
            why = f"{isa.label} {int8_ms:.4f} ms {'>=' if first else '<'} {isa.fallback.label} {other_ms:.4f} ms; "
            kernel, mark, chosen = (layer.fallback_kernel, FALLBACK, isa.fallback.name) if first else (layer.kernel, 1, isa.name)
            int8_ms = min(int8_ms, other_ms)
        lowered = int8_ms < fp32_ms
        why += f"int8 {int8_ms:.4f} ms {'<' if lowered else '>='} fp32 {fp32_ms:.4f} ms"
    if lowered:
        node.attributes[INT8_ATTR] = ir.AttrInt64(INT8_ATTR, mark)
    else:
        to_float(graph, node, layer.w)
        why += ": kept in fp32"
    return Int8Decision(name, layer.mnk, int8_ms, fp32_ms, lowered, why, kernel if lowered else "", chosen)


def plan_int8(
    model: ir.Model, spec, isa: Isa, tuning: Tuning | None = None, *, guard: bool = True, repeat: int = 50, progress: Callable[[str], None] | None = None,
    only: frozenset[str] | None = None, fallback: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Mark the integer layers of ``model`` (in place) that take ``isa``'s kernels.

    With ``guard``, each distinct layer shape is timed both ways first (:func:`_time_pairs`: the
    fp32 side with the fp32 build's schedules and the ``tuning`` databases); layers whose int8
    kernel is not faster are rewritten to float compute; ``progress`` gets a line saying what is
    timed. ``only``: the names of the nodes to lower, the others to float (nothing timed), those
    in ``fallback`` on ``isa.fallback``. For a tile ISA (AMX) each layer it takes is timed on
    its fallback's kernel too, and runs on the faster one: the tile kernel reads an im2col copy
    and writes its int32 result whole, the fallback's reads the input in place and requantizes on
    its tiles (MobileNetV2's 1x1 convolutions: 4-6x faster on VNNI, ResNet-18's 3x3 ones on AMX).
    Returns the report: decisions per node (``fallback_convs``: the convolution shapes that run
    on the fallback, for :func:`~.emit.lower_int8_convs`).
    """
    planner = _Planner(model.graph, isa)
    layers = [n for n in model.graph if n.domain in ("", "ai.onnx") and n.op_type in ("ConvInteger", "MatMulInteger")]
    found = [planner.conv(node) if node.op_type == "ConvInteger" else planner.dense(node) for node in layers]
    timings: dict[tuple, tuple[float, float, float | None]] = {}
    first: dict[tuple, _Layer] = {}  # the first layer of each key, in the graph's order
    for f in found:
        if isinstance(f, _Layer):
            first.setdefault(f.key, f)
    if guard and only is None and first:
        if progress is not None:
            progress(f"int8 guard: {len(first)} layer shape(s) of the {len(layers)} integer layers built with integer and with fp32 kernels, each timed both ways")
        pairs = [f.pair() for f in first.values()]
        alternatives = [(p if f.fallback is f.pair else f.fallback()) if f.fallback is not None else None for f, p in zip(first.values(), pairs)]
        timings = dict(zip(first, _time_pairs(pairs, spec, tuning or Tuning(), repeat, isa, alternatives)))
    decisions = [f if isinstance(f, Int8Decision) else _decide(model.graph, f, timings.get(f.key), only, isa, fallback) for f in found]
    report = {
        "lowered": sum(d.lowered for d in decisions),
        "kept_fp32": sum(1 for d in decisions if not d.lowered),
        "guard": guard,
        "nodes": [d.to_dict() for d in decisions],
        # every convolution the fallback was faster for, lowered or not (a close call may lower it later)
        "fallback_convs": [list(k) for k in sorted({f.conv for f in found if isinstance(f, _Layer) and f.conv and f.fallback is not None
                                                    and ((f.node.name or f.node.outputs[0].name) in fallback if only is not None else _prefers_fallback(timings.get(f.key)))})],
    }
    wide = sum(1 for f in found if isinstance(f, _Layer) and f.narrow == 0)
    if isa.narrow is not None and wide:
        # the AVX2 class: 8-bit weights take the exact int16 kernel (vpmaddwd), twice the
        # multiplies of vpmaddubsw, whose int16 pair sums 8-bit weights can saturate
        report["wide_weights"] = wide
        report["hint"] = (f"{wide} of the {len(layers)} integer layers have weights that use all 8 bits, so their products take the {isa.label} int16 kernel; "
                          f"quantized for this target instead (compile the fp32 model with --passes cleanup,fuse,quantize:mode=static), their weights get 7 bits "
                          f"and the {isa.narrow.label} kernels (vpmaddubsw: half the multiplies)")  # fmt: skip
    return report


def _prefers_fallback(timing: tuple[float, float, float | None] | None) -> bool:
    other = (*timing, None)[2] if timing is not None else None
    return other is not None and other < timing[0]


def all_to_float(model: ir.Model) -> None:
    """Every integer layer of ``model`` with a constant weight to float compute (in place): the
    all-fp32 build the whole-model guard times against."""
    for node in list(model.graph):
        if node.op_type in ("ConvInteger", "MatMulInteger") and node.domain in ("", "ai.onnx"):
            w = const(node.inputs[1])
            if w is not None:
                to_float(model.graph, node, w)
