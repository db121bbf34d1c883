"""Integer lowering of quantized dense layers and convolutions for TVM on x86 with AVX-512 VNNI
and AMX.

TVM's ONNX importer computes QDQ graphs in float, lowers ``MatMulInteger`` to an int32 x int32
matmul that no schedule tensorizes, and has no ``ConvInteger``. This module makes them real
u8 x s8 -> s32 code:

1. :func:`qdq_to_integer` (ONNX level, on the backend's private copy): a static QDQ dense
   layer ``DQ(xq) -> MatMul/Gemm(DQ(Wq int8, per-channel, zero point 0)) [+ bias]`` becomes
   ``MatMulInteger(xq, Wq, zx) -> Cast -> Mul(sx*sw) [-> Add(bias)]``, a group-1 QDQ Conv with
   uint8 activations the same with ``ConvInteger``. Exact in integers.
2. The per-node guard (:func:`plan_int8`): for every ``MatMulInteger``/``ConvInteger`` with a
   constant int8 weight, the integer kernel and the fp32 kernel that node would otherwise get
   (same shapes, same tuning databases) are compiled and timed on this machine. A node whose
   int8 kernel is not faster is rewritten to float compute and the report says so.
3. :func:`vnni_converters` replaces the importer's converters for the chosen nodes. Dense: the
   weight is packed at compile time to ``[N/16, K/4, 16, 4]``; the kernel is AMX tiles
   (:func:`amx_dense_kernel`, when the target and host have AMX-INT8 and the shape fills the
   tiles) or VNNI (:func:`vnni_dense_kernel`: rows x 4 blocks of 16 columns per micro-tile, the
   fixed ``dot_16x4_vnni`` intrinsic on the innermost 16 x 4). The activation zero point is
   applied afterwards with the weight's column sums: ``Σ(a - za)·w = Σ a·w - za·Σ w``; int8
   activations are moved to uint8 (``a + 128``, ``za + 128``), which both need. Convolution: a
   padded NHWC copy of the input and an im2col kernel (padding holds the zero point) feed the
   same dense kernels, and a tiled kernel applies the zero point while turning the NHWC result
   back to NCHW.

Integer results equal ONNX Runtime's ``MatMulInteger`` and a numpy ``ConvInteger`` bit for bit
(tested, both kernels). Depthwise and grouped convolutions have no integer kernel yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.backends.tvm.int8 import VNNI_INTRIN, register_sdot_intrinsic, register_vnni_intrinsic

__all__ = ["ISAS", "Int8Decision", "amx_dense_kernel", "plan_int8", "qdq_to_integer", "sdot_dense_kernel", "vnni_converters", "vnni_dense_kernel"]

#: attribute set on MatMulInteger nodes (in the backend's copy only) that get the VNNI kernel
VNNI_ATTR = "_graphpress_vnni"


# ----------------------------------------------------------------------------- 1. QDQ -> integer


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None


def _dense_match(node: ir.Node) -> dict[str, Any] | str:
    """The pieces of a static QDQ dense layer at ``node``, or why it is not one."""
    if node.op_type == "Gemm":
        a = {k: v.value for k, v in node.attributes.items()}
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return "Gemm with transA/alpha/beta"
        trans_b = bool(a.get("transB", 0))
    elif node.op_type == "MatMul":
        trans_b = False
    else:
        return "not a dense op"
    dqx = _producer(node.inputs[0], "DequantizeLinear")
    dqw = _producer(node.inputs[1], "DequantizeLinear")
    if dqx is None or dqw is None:
        return "inputs are not DequantizeLinear"
    sx, zx = _const(dqx.inputs[1]), _const(dqx.inputs[2]) if len(dqx.inputs) > 2 else np.array(0, np.uint8)
    if sx is None or zx is None or sx.size != 1 or zx.size != 1:
        return "activation scale/zero point not constant per-tensor"
    wq, sw = _const(dqw.inputs[0]), _const(dqw.inputs[1])
    zw = _const(dqw.inputs[2]) if len(dqw.inputs) > 2 and dqw.inputs[2] is not None else np.zeros(1, np.int8)
    if wq is None or sw is None or zw is None or wq.dtype != np.int8 or wq.ndim != 2 or np.any(zw != 0):
        return "weight is not constant symmetric int8"
    w_kn = wq.T if trans_b else wq
    n = w_kn.shape[1]
    if sw.size not in (1, n):
        return "weight scale is neither per-tensor nor per output channel"
    if sw.size == n and sw.size > 1:
        axis = dqw.attributes["axis"].value if "axis" in dqw.attributes else 1
        if axis % 2 != (0 if trans_b else 1):
            return "weight scale axis is not the output channel"
    bias = None
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        dqb = _producer(node.inputs[2], "DequantizeLinear")
        if dqb is not None:
            bq, sb = _const(dqb.inputs[0]), _const(dqb.inputs[1])
            if bq is None or sb is None:
                return "bias is not constant"
            bias = (bq.astype(np.float64) * sb.astype(np.float64)).astype(np.float32)
        else:
            bias = _const(node.inputs[2])
            if bias is None:
                return "bias is not constant"
    return {"xq": dqx.inputs[0], "zx": dqx.inputs[2] if len(dqx.inputs) > 2 else None, "w": np.ascontiguousarray(w_kn),
            "scale": (sx.astype(np.float64) * sw.astype(np.float64).reshape(-1)).astype(np.float32), "bias": bias}  # fmt: skip


def _conv_match(node: ir.Node) -> dict[str, Any] | str:
    """The pieces of a static QDQ 2-D convolution (group 1, uint8 activations) at ``node``."""
    a = {k: v.value for k, v in node.attributes.items()}
    if a.get("group", 1) != 1:
        return "grouped/depthwise convolution"
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return "auto_pad"
    dqx = _producer(node.inputs[0], "DequantizeLinear")
    dqw = _producer(node.inputs[1], "DequantizeLinear")
    if dqx is None or dqw is None:
        return "inputs are not DequantizeLinear"
    sx = _const(dqx.inputs[1])
    zx = _const(dqx.inputs[2]) if len(dqx.inputs) > 2 and dqx.inputs[2] is not None else None
    if sx is None or zx is None or sx.size != 1 or zx.dtype != np.uint8:
        return "activation is not constant per-tensor uint8"
    wq, sw = _const(dqw.inputs[0]), _const(dqw.inputs[1])
    zw = _const(dqw.inputs[2]) if len(dqw.inputs) > 2 and dqw.inputs[2] is not None else np.zeros(1, np.int8)
    if wq is None or sw is None or wq.dtype != np.int8 or wq.ndim != 4 or np.any(zw != 0):
        return "weight is not constant symmetric int8 (2-D conv)"
    oc = wq.shape[0]
    if sw.size not in (1, oc):
        return "weight scale is neither per-tensor nor per output channel"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        dqb = _producer(node.inputs[2], "DequantizeLinear")
        if dqb is not None:
            bq, sb = _const(dqb.inputs[0]), _const(dqb.inputs[1])
            bias = None if bq is None or sb is None else (bq.astype(np.float64) * sb.astype(np.float64)).astype(np.float32)
        else:
            bias = _const(node.inputs[2])
        if bias is None:
            return "bias is not constant"
    scale = (sx.astype(np.float64) * np.broadcast_to(sw.astype(np.float64).reshape(-1), (oc,))).astype(np.float32)
    return {"xq": dqx.inputs[0], "zx": dqx.inputs[2], "w": wq, "scale": scale.reshape(1, oc, 1, 1),
            "bias": None if bias is None else bias.reshape(1, oc, 1, 1),
            "attrs": {k: a[k] for k in ("pads", "strides", "dilations") if k in a}}  # fmt: skip


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(list(array.shape))
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.initializers.add(value)
    return value


def _replace(old: ir.Value, new: ir.Value) -> None:
    """Every use of ``old`` (graph outputs included, keeping their names) reads ``new``."""
    new.shape, new.type = old.shape, old.type
    name = old.name
    was_output = old.is_graph_output()
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        old.name = f"{name}__replaced"
        new.name = name


def qdq_to_integer(model: ir.Model) -> dict[str, Any]:
    """Rewrite static QDQ MatMul/Gemm layers of ``model`` (in place) into MatMulInteger form and
    group-1 2-D convolutions with uint8 activations into ConvInteger form (+ Cast, rescale, bias)."""
    import onnx_ir.passes.common as common_passes

    graph = model.graph
    rewritten, skipped = [], {}
    for node in list(graph):
        if node.op_type not in ("MatMul", "Gemm", "Conv") or node.domain not in ("", "ai.onnx"):
            continue
        m = _conv_match(node) if node.op_type == "Conv" else _dense_match(node)
        if isinstance(m, str):
            skipped[node.name] = m
            continue
        base = node.name or node.outputs[0].name
        w = _initializer(graph, f"{base}.int8_weight", m["w"])
        inputs = [m["xq"], w] + ([m["zx"]] if m["zx"] is not None else [])
        if node.op_type == "Conv":
            mmi = ir.node("ConvInteger", inputs, attributes=m["attrs"] or None, name=f"{base}/conv_integer")
        else:
            mmi = ir.node("MatMulInteger", inputs, name=f"{base}/matmul_integer")
        cast = ir.node("Cast", [mmi.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{base}/cast")
        mul = ir.node("Mul", [cast.outputs[0], _initializer(graph, f"{base}.int8_scale", m["scale"])], name=f"{base}/rescale")
        new = [mmi, cast, mul]
        if m["bias"] is not None:
            new.append(ir.node("Add", [mul.outputs[0], _initializer(graph, f"{base}.bias", m["bias"])], name=f"{base}/bias"))
        graph.insert_before(node, new)
        _replace(node.outputs[0], new[-1].outputs[0])
        graph.remove(node, safe=True)
        rewritten.append(base)
    common_passes.RemoveUnusedNodesPass()(model)
    return {"rewritten": rewritten, "skipped": skipped}


def fold_weight_dequantize(model: ir.Model) -> dict[str, Any]:
    """Fold every constant ``DequantizeLinear`` (weights of layers with no integer kernel here,
    such as convolutions) into a float initializer holding the quantized values (in place).

    TVM then runs those layers as fp32 kernels on the same weights ONNX Runtime dequantizes;
    the activation Quantize/Dequantize pairs stay (they clip to the calibrated range, which is
    part of the quantized model's function)."""
    from graphpress.passes.cleanup import fold_nodes

    def constant_dq(node: ir.Node) -> bool:
        return node.op_type == "DequantizeLinear" and all(v is None or v.const_value is not None for v in node.inputs)

    layers = {u.node.name or u.node.op_type for n in model.graph if constant_dq(n) for u in n.outputs[0].uses()}
    fold_nodes(model, constant_dq)
    return {"fp32_layers": sorted(layers)}


def bypass_float_qdq(model: ir.Model) -> int:
    """Drop the activation ``QuantizeLinear -> DequantizeLinear`` pairs whose result only feeds
    float layers (in place); returns how many. Where the pair's range starts at 0 (a ReLU the
    quantizer folded into it), a Relu takes its place; the calibrated upper clip is dropped, as
    in the fp32 model. Those layers run as fp32 kernels anyway, and the
    extra rounding ops would stop TVM from fusing and scheduling them as it does the fp32 model
    (ResNet-18: 24 unscheduled kernels, 1.85 s instead of 84 ms). Pairs feeding an integer
    kernel read the QuantizeLinear directly and stay; pairs at graph outputs stay."""
    import onnx_ir.passes.common as common_passes

    bypassed = 0
    for node in list(model.graph):
        if node.op_type != "DequantizeLinear" or node.outputs[0].is_graph_output():
            continue
        q = _producer(node.inputs[0], "QuantizeLinear")
        zp = _const(q.inputs[2]) if q is not None and len(q.inputs) > 2 and q.inputs[2] is not None else None
        if q is None or zp is None or zp.size != 1:
            continue
        x = q.inputs[0]
        if int(zp) == np.iinfo(zp.dtype).min:
            # the quantizer removed a Relu here: the range [0, max] did its work; put it back
            relu = ir.node("Relu", [x], name=f"{node.name or x.name}/relu")
            model.graph.insert_before(node, relu)
            relu.outputs[0].shape, relu.outputs[0].type = x.shape, x.type
            x = relu.outputs[0]
        node.outputs[0].replace_all_uses_with(x)
        model.graph.remove(node, safe=True)
        bypassed += 1
    common_passes.RemoveUnusedNodesPass()(model)
    return bypassed


# ----------------------------------------------------------------------------- 3. the kernel

_KERNELS: dict[tuple[int, int, int], Any] = {}


def _largest_divisor(n: int, options: tuple[int, ...]) -> int:
    return next(d for d in options if n % d == 0)


def _dot_dense_kernel(m: int, n: int, k: int, a_dtype: str, lanes: int, intrin: str, prefix: str):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (a_dtype) · B^T`` with ``B`` int8 packed
    ``[n/lanes, k/4, lanes, 4]`` and ``intrin`` (``lanes`` int32 outputs x 4 bytes of K) tensorizing
    the innermost ``lanes x 4``: rows x 4 blocks of ``lanes`` columns per micro-tile."""
    key = (prefix, m, n, k)
    if key in _KERNELS:
        return _KERNELS[key]
    import tvm
    from tvm import te

    a = te.placeholder((m, k), a_dtype, name="A")
    b = te.placeholder((n // lanes, k // 4, lanes, 4), "int8", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j // lanes, r // 4, j % lanes, r % 4].astype("int32"), axis=r), name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    rows = _largest_divisor(m, (4, 3, 2, 1))
    cols = _largest_divisor(n // lanes, (4, 2, 1))
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, lanes])
    joo, joi = sch.split(jo, [None, cols])
    ko, ki = sch.split(kk, [None, 4])
    # column panels outermost (parallel): a panel of B (cols x lanes x K bytes) stays in L1 while
    # every row block passes over it; 91.8 vs 121 us with rows outermost at 128x512x512 (VNNI)
    sch.reorder(joo, io, ko, ii, joi, ji, ki)
    sch.parallel(joo if n // lanes // cols >= 2 else sch.fuse(joo, io))
    sch.unroll(ii)
    sch.unroll(joi)
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    func = sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_{prefix}_dense_{m}x{n}x{k}"})
    _KERNELS[key] = func
    return func


def vnni_dense_kernel(m: int, n: int, k: int):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` with ``B`` packed ``[n/16, k/4, 16, 4]``
    (int8), the fixed VNNI intrinsic on the innermost 16 x 4."""
    register_vnni_intrinsic()
    return _dot_dense_kernel(m, n, k, "uint8", 16, VNNI_INTRIN, "vnni")


def sdot_dense_kernel(m: int, n: int, k: int):
    """Scheduled TIR ``C[m, n] (int32) = A[m, k] (int8) · B^T`` for aarch64 with the dot-product
    extension, ``B`` packed ``[n/4, k/4, 4, 4]`` (int8), the ``sdot`` intrinsic (4 int32 lanes x
    4 bytes of K per NEON instruction) on the
    innermost 4 x 4."""
    return _dot_dense_kernel(m, n, k, "int8", 4, register_sdot_intrinsic(), "sdot")


#: Linux x86-64: arch_prctl syscall number, its request for an extended state component, AMX tile data
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_dense_kernel(m: int, n: int, k: int):
    """TIR ``C[m, n] (int32) = A[m, k] (uint8) · B^T`` on AMX tiles (``TDPBUSD``), ``B`` int8 packed
    ``[n/16, k/4, 16, 4]`` (the VNNI packing is exactly AMX's B-tile layout: 16 rows of 16 columns x
    4 bytes per 64 of K).

    Needs ``m % 32 == n % 32 == k % 64 == 0``. Per 32 x 32 block of C, four 16 x 16 int32
    accumulator tiles (tmm0-3) take the products of two A tiles (tmm4-5) and two B tiles (tmm6-7)
    per 64 of K and are stored at the end. The cores split the side with more blocks, so the other
    side's operand is read once per core. Linux hands out the tile state on request only: the
    kernel asks (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, per process, idempotent) before the first
    tile instruction, so a library built here runs in any process. 3.0 TOP/s at 784x128x1152 on
    2 cores, 4.5x the VNNI kernel.
    """
    key = ("amx", m, n, k)
    if key in _KERNELS:
        return _KERNELS[key]
    from tvm.script import tirx as T

    if m % 32 or n % 32 or k % 64:
        raise ValueError(f"AMX dense {m}x{n}x{k}: M and N must be multiples of 32, K of 64")
    mb, nb, kb = m // 32, n // 32, k // 64
    rows_outer = int(mb >= nb)  # 1: the cores split the rows of C, 0: its columns
    outer, inner = (mb, nb) if rows_outer else (nb, mb)

    def tile(op: str, *args):
        return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{op}", *args))

    @T.prim_func
    def main(A: T.Buffer((m, k), "uint8"), B: T.Buffer((n // 16, k // 4, 16, 4), "int8"), C: T.Buffer((m, n), "int32")):
        T.func_attr({"tirx.noalias": True})
        T.evaluate(T.call_extern("int64", "syscall", T.int64(_SYS_ARCH_PRCTL), T.int64(_ARCH_REQ_XCOMP_PERM), T.int64(_XFEATURE_XTILEDATA)))
        for o in T.parallel(outer):
            # tile configuration (palette 1): eight tiles of 16 rows x 64 bytes
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for t in range(8):
                cfg[16 + 2 * t] = T.uint8(64)
                cfg[48 + t] = T.uint8(16)
            tile("ldtilecfg", T.address_of(cfg[0]))
            for i in range(inner):
                mi = o * rows_outer + i * (1 - rows_outer)
                nj = i * rows_outer + o * (1 - rows_outer)
                tile("tilezero", T.int8(0))
                tile("tilezero", T.int8(1))
                tile("tilezero", T.int8(2))
                tile("tilezero", T.int8(3))
                for kk in range(kb):
                    tile("tileloadd64", T.int8(4), T.address_of(A[mi * 32, kk * 64]), T.int64(k))
                    tile("tileloadd64", T.int8(5), T.address_of(A[mi * 32 + 16, kk * 64]), T.int64(k))
                    tile("tileloadd64", T.int8(6), T.address_of(B[nj * 2, kk * 16, 0, 0]), T.int64(64))
                    tile("tileloadd64", T.int8(7), T.address_of(B[nj * 2 + 1, kk * 16, 0, 0]), T.int64(64))
                    tile("tdpbusd", T.int8(0), T.int8(4), T.int8(6))
                    tile("tdpbusd", T.int8(1), T.int8(4), T.int8(7))
                    tile("tdpbusd", T.int8(2), T.int8(5), T.int8(6))
                    tile("tdpbusd", T.int8(3), T.int8(5), T.int8(7))
                tile("tilestored64", T.int8(0), T.address_of(C[mi * 32, nj * 32]), T.int64(n * 4))
                tile("tilestored64", T.int8(1), T.address_of(C[mi * 32, nj * 32 + 16]), T.int64(n * 4))
                tile("tilestored64", T.int8(2), T.address_of(C[mi * 32 + 16, nj * 32]), T.int64(n * 4))
                tile("tilestored64", T.int8(3), T.address_of(C[mi * 32 + 16, nj * 32 + 16]), T.int64(n * 4))
            tile("tilerelease")

    func = main.with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_amx_dense_{m}x{n}x{k}"})
    _KERNELS[key] = func
    return func


#: the integer kernels by instruction set: "vnni" (x86 AVX-512 VNNI), "amx" (AMX tiles where the
#: shapes fill them, VNNI elsewhere), "sdot" (aarch64 dot product)
ISAS = ("vnni", "amx", "sdot")


def _lanes(isa: str) -> int:
    """Output columns per packed weight block: 16 int32 lanes (x86 zmm), 4 (NEON)."""
    return 4 if isa == "sdot" else 16


def _dense(isa: str, m: int, n: int, k: int):
    if isa == "amx":
        return amx_dense_kernel(m, n, k)
    return sdot_dense_kernel(m, n, k) if isa == "sdot" else vnni_dense_kernel(m, n, k)


def _to_kernel_dtype(a, a_dtype: str, za, isa: str):
    """The activation (and zero point) in the kernel's dtype: VNNI and AMX multiply uint8 by int8
    (int8 activations move up by 128), sdot int8 by int8 (uint8 ones move down by 128)."""
    from tvm import relax

    want = "int8" if isa == "sdot" else "uint8"
    if a_dtype == want:
        return a, za
    shift = 128 if want == "uint8" else -128
    a = relax.op.astype(relax.op.add(relax.op.astype(a, "int32"), relax.const(shift, "int32")), want)
    za = relax.const(shift, "int32") if za is None else relax.op.add(relax.op.astype(za, "int32"), relax.const(shift, "int32"))
    return a, za


def _pack(w_kn: np.ndarray, multiple: int = 16, lanes: int = 16) -> tuple[np.ndarray, np.ndarray, int]:
    """int8 ``[K, N]`` -> (packed ``[Np/lanes, K/4, lanes, 4]``, column sums ``[Np]`` int32, Np); N
    is padded to ``multiple`` columns, K must be a multiple of 4 (zero rows may pad it)."""
    k, n = w_kn.shape
    npad = -(-n // multiple) * multiple
    w = np.zeros((k, npad), np.int8)
    w[:, :n] = w_kn
    packed = np.ascontiguousarray(w.T.reshape(npad // lanes, lanes, k // 4, 4).transpose(0, 2, 1, 3))
    return packed, w.astype(np.int32).sum(0), npad


def _amx_fits(m: int, k: int) -> bool:
    return m % 32 == 0 and k % 64 == 0


def _emit_vnni_matmul(bb, a, w_kn: np.ndarray, za, isa: str = "vnni"):
    """Relax for ``MatMulInteger(a, w, za)`` (``a``: [..., K] uint8/int8) on the ``isa``'s kernel
    (``amx``: AMX where the shape fills its tiles, VNNI otherwise)."""
    from tvm import relax

    shape = [int(d) for d in a.ty.shape]
    k, n = w_kn.shape
    m = int(np.prod(shape[:-1]))
    if isa == "amx" and not _amx_fits(m, k):
        isa = "vnni"
    packed, colsum, npad = _pack(w_kn, 32 if isa == "amx" else _lanes(isa), _lanes(isa))
    a2, za = _to_kernel_dtype(relax.op.reshape(a, (m, k)), _dtype(a.ty), za, isa)
    func = _dense(isa, m, npad, k)
    kernel = bb.add_func(func, str(func.attrs["global_symbol"]))
    acc = bb.emit(relax.call_tir(kernel, [bb.emit(a2), relax.const(packed)], relax.TensorType((m, npad), "int32")))
    if za is not None:
        acc = relax.op.subtract(acc, relax.op.multiply(relax.op.astype(relax.op.reshape(za, ()), "int32"), relax.const(colsum)))
    if npad != n:
        acc = relax.op.strided_slice(acc, axes=[1], begin=[0], end=[n])
    return relax.op.reshape(acc, [*shape[:-1], n])


def _conv_geometry(x_shape, w_shape, attrs, isa: str = "vnni") -> dict[str, Any]:
    """Shapes of the unfolded convolution. ``Cp``: channels padded to whole 4-byte VNNI groups, or
    for AMX until a row of the unfolded input is whole 64-byte tiles (AMX is chosen only while that
    pads K by at most half, plus one tile: not for a 7x7 stem of 3 channels). ``Mp``: output
    pixels padded to the kernel's row block (4 VNNI, 32 AMX)."""
    n, c, h, w = (int(d) for d in x_shape)
    oc, _, kh, kw = (int(d) for d in w_shape)
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
    dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    cp = -(-c // 4) * 4
    amx = isa == "amx"
    if amx:
        ca = cp
        while (kh * kw * ca) % 64:
            ca += 4
        amx = kh * kw * ca <= 1.5 * kh * kw * c + 64
        cp = ca if amx else cp
    rows = 32 if amx else 4
    m = n * oh * ow
    return {"n": n, "c": c, "h": h, "w": w, "oc": oc, "kh": kh, "kw": kw, "pads": pads, "strides": (sh, sw), "dilations": (dh, dw),
            "oh": oh, "ow": ow, "m": m, "mp": -(-m // rows) * rows, "k": c * kh * kw, "cp": cp, "kp": cp * kh * kw,
            "hp": h + pads[0] + pads[2], "wp": w + pads[1] + pads[3], "amx": amx, "isa": "amx" if amx else ("sdot" if isa == "sdot" else "vnni")}  # fmt: skip


def _pointwise(g: dict[str, Any]) -> bool:
    """A 1x1, stride-1, unpadded convolution whose pixel count needs no padding: its padded NHWC
    input already is the unfolded one."""
    return g["kh"] == g["kw"] == 1 and g["strides"] == (1, 1) and not any(g["pads"]) and g["mp"] == g["m"]


def _kernel_func(sch, prefix: str):
    name = f"graphpress_{prefix}_{len(_KERNELS)}"
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": name})


def nhwc_pad_kernel(g: dict[str, Any], zero_point: int):
    """Scheduled TIR: uint8 ``X[N, C, H, W]`` -> ``XP[N, Hp, Wp, Cp]``, the spatially padded NHWC copy
    (padding and channels ``C..Cp`` hold the zero point, so they add nothing). Transposed in
    16 x 16 (pixel, channel) tiles. For a pointwise convolution it is written as the 2-D
    ``[N*H*W, Cp]`` the dense kernel reads."""
    import tvm
    from tvm import te

    key = ("nhwc", tuple(sorted((k, str(v)) for k, v in g.items())), zero_point)
    if key in _KERNELS:
        return _KERNELS[key]
    x = te.placeholder((g["n"], g["c"], g["h"], g["w"]), "uint8", name="X")
    pt, pl = g["pads"][:2]

    def value(b, y, xx, ci):
        iy, ix = y - pt, xx - pl
        inside = te.all(ci < g["c"], iy >= 0, iy < g["h"], ix >= 0, ix < g["w"])
        return te.if_then_else(inside, x[b, ci, iy, ix], tvm.tirx.const(zero_point, "uint8"))

    out = te.compute((g["n"], g["hp"], g["wp"], g["cp"]), value, name="xp")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    block = sch.get_sblock("xp")
    b, y, xx, ci = sch.get_loops(block)
    xo, xi = sch.split(xx, [None, 16])
    co, cj = sch.split(ci, [None, 16])
    sch.reorder(b, y, xo, co, cj, xi)  # reads along W, the tile stays in L1 for the writes
    sch.parallel(sch.fuse(b, y))
    if _pointwise(g):
        hp, wp = g["hp"], g["wp"]
        sch.transform_layout(block, ("write", 0), lambda b, y, xx, c: ((b * hp + y) * wp + xx, c))
    func = _kernel_func(sch, "nhwc_pad")
    _KERNELS[key] = func
    return func


def im2col_kernel(g: dict[str, Any]):
    """Scheduled TIR: the padded NHWC input ``XP`` -> the unfolded input ``col[Mp, KH*KW*Cp]``
    (columns ordered ky, kx, channel): every (pixel, ky, kx) is one contiguous run of ``Cp`` bytes,
    copied with vector moves. Rows past the last pixel (``Mp``: padded to the kernel's row block)
    repeat it; their results are dropped."""
    import tvm
    from tvm import te

    key = ("im2col", tuple(sorted((k, str(v)) for k, v in g.items())))
    if key in _KERNELS:
        return _KERNELS[key]
    xp = te.placeholder((g["n"], g["hp"], g["wp"], g["cp"]), "uint8", name="XP")
    (sh, sw), (dh, dw) = g["strides"], g["dilations"]
    oh, ow, last = g["oh"], g["ow"], g["m"] - 1

    def col(p, ky, kx, ci):
        q = te.min(p, last)
        return xp[q // (oh * ow), (q // ow) % oh * sh + ky * dh, q % ow * sw + kx * dw, ci]

    out = te.compute((g["mp"], g["kh"], g["kw"], g["cp"]), col, name="col")
    sch = tvm.s_tir.Schedule(te.create_prim_func([xp, out]))
    block = sch.get_sblock("col")
    p, _, _, ci = sch.get_loops(block)
    sch.parallel(p)
    if g["cp"] % 16 == 0:
        _, lanes = sch.split(ci, [None, 16])
        sch.vectorize(lanes)
    kw, cp = g["kw"], g["cp"]
    # the same bytes seen as the 2-D matrix the dense kernel reads (a Relax reshape would copy)
    sch.transform_layout(block, ("write", 0), lambda p, ky, kx, c: (p, (ky * kw + kx) * cp + c))
    func = _kernel_func(sch, "im2col")
    _KERNELS[key] = func
    return func


def to_nchw_kernel(g: dict[str, Any], npad: int):
    """Scheduled TIR: the dense result ``acc[Mp, Npad]`` minus the zero-point term ``corr[Npad]``
    -> ``out[N, OC, OH, OW]``, in 16 x 16 tiles (a plain elementwise schedule reads one int32 per
    cache line here: 4.5 ms for the ResNet-18 stem)."""
    import tvm
    from tvm import te

    key = ("nchw", g["n"], g["oh"], g["ow"], g["oc"], g["mp"], npad)
    if key in _KERNELS:
        return _KERNELS[key]
    acc = te.placeholder((g["mp"], npad), "int32", name="acc")
    corr = te.placeholder((npad,), "int32", name="corr")
    oh, ow = g["oh"], g["ow"]
    out = te.compute((g["n"], g["oc"], oh * ow), lambda b, c, p: acc[b * oh * ow + p, c] - corr[c], name="nchw")
    sch = tvm.s_tir.Schedule(te.create_prim_func([acc, corr, out]))
    block = sch.get_sblock("nchw")
    b, c, p = sch.get_loops(block)
    co, ci = sch.split(c, [None, 16])
    po, pi = sch.split(p, [None, 16])
    sch.reorder(b, po, co, ci, pi)
    sch.parallel(sch.fuse(b, po))
    sch.vectorize(pi)
    sch.transform_layout(block, ("write", 0), lambda b, c, p: (b, c, p // ow, p % ow))  # NCHW, no copy
    func = _kernel_func(sch, "to_nchw")
    _KERNELS[key] = func
    return func


def _emit_vnni_conv(bb, x, w_oihw: np.ndarray, zero_point: int, attrs, isa: str = "vnni"):
    """Relax for ``ConvInteger(x, w, zx)`` (uint8 NCHW ``x``, group 1): a padded NHWC copy, im2col
    (skipped for pointwise convolutions), the AMX or VNNI dense, the zero point and NCHW."""
    from tvm import relax

    g = _conv_geometry(x.ty.shape, w_oihw.shape, attrs, isa)
    w_padded = np.zeros((g["oc"], g["kh"], g["kw"], g["cp"]), np.int8)  # columns ordered ky, kx, channel
    w_padded[..., : g["c"]] = w_oihw.transpose(0, 2, 3, 1)
    packed, colsum, npad = _pack(np.ascontiguousarray(w_padded.reshape(g["oc"], g["kp"]).T), 32 if g["amx"] else _lanes(g["isa"]), _lanes(g["isa"]))

    def call(func, args, shape, dtype):
        return bb.emit(relax.call_tir(bb.add_func(func, str(func.attrs["global_symbol"])), args, relax.TensorType(shape, dtype)))

    pad = nhwc_pad_kernel(g, zero_point)
    if _pointwise(g):
        col = call(pad, [x], (g["mp"], g["kp"]), "uint8")
    else:
        xp = call(pad, [x], (g["n"], g["hp"], g["wp"], g["cp"]), "uint8")
        col = call(im2col_kernel(g), [xp], (g["mp"], g["kp"]), "uint8")
    corr = colsum * zero_point
    if g["isa"] == "sdot":  # int8 x int8: the unfolded input moves down by 128, and its zero point
        col = bb.emit(relax.op.astype(relax.op.subtract(relax.op.astype(col, "int32"), relax.const(128, "int32")), "int8"))
        corr = colsum * (zero_point - 128)
    acc = call(_dense(g["isa"], g["mp"], npad, g["kp"]), [col, relax.const(packed)], (g["mp"], npad), "int32")
    nchw = to_nchw_kernel(g, npad)
    return relax.call_tir(bb.add_func(nchw, str(nchw.attrs["global_symbol"])), [acc, relax.const(corr.astype(np.int32))],
                          relax.TensorType((g["n"], g["oc"], g["oh"], g["ow"]), "int32"))  # fmt: skip


def _dtype(ty) -> str:
    return str(ty.dtype.dtype)


def _vnni_ready(a_ty, w: np.ndarray | None, zb) -> str | None:
    """Why a MatMulInteger cannot take the VNNI kernel, or None."""
    if w is None or w.dtype != np.int8 or w.ndim != 2:
        return "weight is not a constant 2-D int8 tensor"
    if zb is not None and np.any(zb != 0):
        return "weight zero point is not 0"
    if _dtype(a_ty) not in ("uint8", "int8"):
        return f"activation dtype {_dtype(a_ty)}"
    if a_ty.shape is None or any(not hasattr(d, "value") for d in a_ty.shape):
        return "dynamic activation shape"
    if w.shape[0] % 4:
        return f"K={w.shape[0]} is not a multiple of 4"
    return None


@contextlib.contextmanager
def vnni_converters(isa: str = "vnni"):
    """Within the block, TVM's ONNX importer lowers MatMulInteger nodes marked with
    :data:`VNNI_ATTR` onto the integer kernels of ``isa`` (:data:`ISAS`; others keep the
    importer's converter)."""
    import tvm
    from tvm.relax.frontend.onnx import onnx_frontend

    original_map = onnx_frontend._get_convert_map
    base = original_map()["MatMulInteger"]

    class VnniMatMulInteger(base):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            if attr.get(VNNI_ATTR):
                a, b = inputs[0], inputs[1]
                za = inputs[2] if len(inputs) > 2 else None
                zb = inputs[3] if len(inputs) > 3 else None
                w = b.value.numpy() if isinstance(b, tvm.ir.GenericConst) else None
                zb_np = zb.value.numpy() if isinstance(zb, tvm.ir.GenericConst) else (None if zb is None else np.array([1]))
                if _vnni_ready(bb.normalize(a).ty, w, zb_np) is None:
                    return _emit_vnni_matmul(bb, bb.normalize(a), w, za, isa)
            return base._impl_v10(bb, inputs, attr, params)

    class VnniConvInteger(base):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            from tvm import relax

            x, w = bb.normalize(inputs[0]), inputs[1]
            zx = inputs[2] if len(inputs) > 2 else None
            w_np = w.value.numpy() if isinstance(w, tvm.ir.GenericConst) else None
            zx_np = zx.value.numpy() if isinstance(zx, tvm.ir.GenericConst) else (np.zeros((), np.uint8) if zx is None else None)
            if attr.get(VNNI_ATTR) and w_np is not None and zx_np is not None and _dtype(x.ty) == "uint8":
                return _emit_vnni_conv(bb, x, w_np, int(zx_np.reshape(-1)[0]), attr, isa)
            # generic (slow) integer convolution; the int8 plan never leaves a node here
            xi = relax.op.astype(x, "int32")
            if zx is not None:
                xi = relax.op.subtract(xi, relax.op.astype(zx, "int32"))
            pads = attr.get("pads", (0, 0, 0, 0))
            return relax.op.nn.conv2d(xi, relax.op.astype(w, "int32"), strides=attr.get("strides", (1, 1)), padding=pads,
                                      dilation=attr.get("dilations", (1, 1)), out_dtype="int32")  # fmt: skip

    def patched():
        table = original_map()
        table["MatMulInteger"] = VnniMatMulInteger
        table["ConvInteger"] = VnniConvInteger
        return table

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original_map


# ----------------------------------------------------------------------------- 2. the guard


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _time(executable, args: list, repeat: int) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    dev_args = [tvm.runtime.tensor(x, tvm.cpu()) for x in args]
    vm["main"](*dev_args)
    evaluator = vm.time_evaluator("main", tvm.cpu(), number=max(1, repeat // 5), repeat=5)
    return float(np.median(evaluator(*dev_args).results)) * 1e3


def _int8_pipeline(mod, target):
    """What the model build does to the int8 path: the zero pipeline, then the schedules for the
    elementwise epilogue kernels (so the guard times what would ship)."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.schedules import schedule_injective

    with target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero")])(mod)
    return schedule_injective(mod)[0]


def _kernel_pair_ms(m: int, n: int, k: int, a_dtype: str, spec, schedule_fp32, repeat: int, isa: str) -> tuple[float, float]:
    """(int8 ms, fp32 ms) of one dense layer compiled both ways for ``spec``."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    target = spec.tvm_target()

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), a_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(_emit_vnni_matmul(bb, x, w, relax.const(3, a_dtype), isa))
        bb.emit_func_output(out)
    int8_exe = tvm.compile(_int8_pipeline(bb.get(), target), target=target)
    xq = rng.integers(0, 128, (m, k)).astype(a_dtype)
    int8_ms = _time(int8_exe, [xq], repeat)

    bb = relax.BlockBuilder()
    xf = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [xf]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(xf, relax.const(w.astype(np.float32))))
        bb.emit_func_output(out)
    fp32_mod, _ = schedule_fp32(bb.get())
    fp32_exe = tvm.compile(fp32_mod, target=target)
    fp32_ms = _time(fp32_exe, [rng.standard_normal((m, k)).astype(np.float32)], repeat)
    return int8_ms, fp32_ms


def _conv_pair_ms(x_shape, w_shape, attrs: dict, zero_point: int, spec, schedule_fp32, repeat: int, isa: str) -> tuple[float, float]:
    """(int8 ms, fp32 ms) of one convolution compiled both ways for ``spec``."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, w_shape, dtype=np.int8)
    target = spec.tvm_target()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(tuple(x_shape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(_emit_vnni_conv(bb, x, w, zero_point, attrs, isa))
        bb.emit_func_output(out)
    int8_ms = _time(tvm.compile(_int8_pipeline(bb.get(), target), target=target), [rng.integers(0, 256, x_shape).astype(np.uint8)], repeat)

    bb = relax.BlockBuilder()
    xf = relax.Var("x", relax.TensorType(tuple(x_shape), "float32"))
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    with bb.function("main", [xf]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(xf, relax.const(w.astype(np.float32)), strides=tuple(attrs.get("strides", (1, 1))),
                                      padding=(pads[0], pads[1], pads[2], pads[3]), dilation=tuple(attrs.get("dilations", (1, 1))))  # fmt: skip
            out = bb.emit_output(conv)
        bb.emit_func_output(out)
    fp32_mod, _ = schedule_fp32(bb.get())
    fp32_ms = _time(tvm.compile(fp32_mod, target=target), [rng.standard_normal(x_shape).astype(np.float32)], repeat)
    return int8_ms, fp32_ms


def _to_float(graph: ir.Graph, node: ir.Node, w: np.ndarray) -> None:
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
    attrs = {k: v.value for k, v in node.attributes.items() if k != VNNI_ATTR}
    fp32 = ir.node(op, [x, _initializer(graph, f"{base}.fp32_weight", w.astype(np.float32))], attributes=attrs or None, name=f"{base}/fp32_{op.lower()}")
    # the accumulator is an integer: round, not truncate, back to int32
    rnd = ir.node("Round", [fp32.outputs[0]], name=f"{base}/fp32_round")
    back = ir.node("Cast", [rnd.outputs[0]], attributes={"to": ir.DataType.INT32}, name=f"{base}/fp32_int32")
    new += [fp32, rnd, back]
    graph.insert_before(node, new)
    _replace(node.outputs[0], back.outputs[0])
    graph.remove(node, safe=True)


def _plan_conv(graph: ir.Graph, node: ir.Node, spec, schedule_fp32, guard: bool, repeat: int, timings: dict, isa: str) -> Int8Decision:
    x, w = node.inputs[0], _const(node.inputs[1])
    zx = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros((), np.uint8)
    name = node.name or node.outputs[0].name
    shape = [d if isinstance(d, int) else None for d in (x.shape or [])]
    attrs = {k: tuple(v.value) for k, v in node.attributes.items() if k in ("pads", "strides", "dilations")}
    reason = None
    if w is None or w.dtype != np.int8 or w.ndim != 4 or zx is None or zx.dtype != np.uint8:
        reason = "weight or zero point is not constant int8/uint8"
    elif len(shape) != 4 or None in shape:
        reason = "activation shape is not static 4-D"
    if reason is not None:
        if w is not None:
            _to_float(graph, node, w)
        return Int8Decision(name, (0, 0, 0), None, None, False, reason + ": kept in fp32")
    g = _conv_geometry(shape, w.shape, attrs)
    key = ("conv", tuple(shape), w.shape, tuple(sorted(attrs.items())))

    def measure():
        return _conv_pair_ms(shape, w.shape, attrs, int(zx.reshape(-1)[0]), spec, schedule_fp32, repeat, isa)

    kernel = f"im2col + {_conv_geometry(shape, w.shape, attrs, isa)['isa'].upper()} kernel"
    return _decide(graph, node, w, (g["m"], g["oc"], g["k"]), kernel, guard, timings, key, measure)


def _decide(graph, node, w, mnk, kernel: str, guard: bool, timings: dict, key, measure) -> Int8Decision:
    """Lower ``node`` to its integer kernel unless the guard measured it slower than fp32."""
    int8_ms = fp32_ms = None
    lowered, why = True, f"{kernel} (guard off)"
    if guard:
        if key not in timings:
            timings[key] = measure()
        int8_ms, fp32_ms = timings[key]
        lowered = int8_ms < fp32_ms
        why = f"int8 {int8_ms:.4f} ms {'<' if lowered else '>='} fp32 {fp32_ms:.4f} ms"
    if lowered:
        node.attributes[VNNI_ATTR] = ir.AttrInt64(VNNI_ATTR, 1)
    else:
        _to_float(graph, node, w)
        why += ": kept in fp32"
    return Int8Decision(node.name or node.outputs[0].name, mnk, int8_ms, fp32_ms, lowered, why, kernel if lowered else "")


def plan_int8(model: ir.Model, spec, schedule_fp32, *, guard: bool = True, repeat: int = 50, force_fp32: bool = False, isa: str = "vnni") -> dict[str, Any]:
    """Mark the MatMulInteger nodes of ``model`` (in place) that take the VNNI kernel.

    With ``guard``, each distinct (M, N, K, dtype) is timed both ways first (``schedule_fp32``
    applies the fp32 build's schedules to a Relax module); nodes whose int8 kernel is not faster
    are rewritten to float compute. Returns the report: decisions per node.
    """
    graph = model.graph
    decisions: list[Int8Decision] = []
    timings: dict[tuple, tuple[float, float]] = {}
    for node in list(graph):
        if force_fp32 and node.op_type in ("ConvInteger", "MatMulInteger"):
            w = _const(node.inputs[1])
            if w is not None:
                _to_float(graph, node, w)
            continue
        if node.op_type == "ConvInteger" and node.domain in ("", "ai.onnx"):
            decisions.append(_plan_conv(graph, node, spec, schedule_fp32, guard, repeat, timings, isa))
            continue
        if node.op_type != "MatMulInteger" or node.domain not in ("", "ai.onnx"):
            continue
        a, b = node.inputs[0], node.inputs[1]
        w = _const(b)
        zb = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        name = node.name or node.outputs[0].name
        shape = [d if isinstance(d, int) else None for d in (a.shape or [])]
        reason = None
        if w is None or w.dtype != np.int8 or w.ndim != 2:
            reason = "weight is not a constant 2-D int8 tensor"
        elif zb is not None and np.any(zb != 0):
            reason = "weight zero point is not 0"
        elif a.dtype not in (ir.DataType.UINT8, ir.DataType.INT8):
            reason = "activation is not uint8/int8"
        elif not shape or None in shape:
            reason = "activation shape is not static"
        elif w.shape[0] % 4:
            reason = f"K={w.shape[0]} is not a multiple of 4"
        if reason is not None:
            decisions.append(Int8Decision(name, (0, 0, 0), None, None, False, reason))
            continue
        k, n = w.shape
        m = int(np.prod(shape[:-1]))
        dtype = "uint8" if a.dtype == ir.DataType.UINT8 else "int8"
        key = (m, n, k, dtype)

        def measure(m=m, n=n, k=k, dtype=dtype):
            return _kernel_pair_ms(m, n, k, dtype, spec, schedule_fp32, repeat, isa)

        kernel = "AMX kernel" if isa == "amx" and _amx_fits(m, k) else f"{'SDOT' if isa == 'sdot' else 'VNNI'} kernel"
        decisions.append(_decide(graph, node, w, (m, n, k), kernel, guard, timings, key, measure))
    return {
        "lowered": sum(d.lowered for d in decisions),
        "kept_fp32": sum(1 for d in decisions if not d.lowered),
        "guard": guard,
        "nodes": [d.to_dict() for d in decisions],
    }

