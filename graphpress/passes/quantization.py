"""The ``quantize`` pass: standard QDQ quantization, calibrated, with an accuracy budget.

Modes:

* ``static``: activations calibrated on sample inputs and weights quantized, written as
  QuantizeLinear/DequantizeLinear pairs (QDQ) around Conv/ConvTranspose/Gemm/MatMul (and the
  ops ONNX Runtime's quantizer passes through in the quantized domain). Insertion and
  calibration (``minmax``, ``percentile``, ``entropy``) are ONNX Runtime's quantization tool,
  run on a serialized copy; graphpress adds the scheme choice, the per-layer report and the
  accuracy control.
* ``dynamic``: int8 weights, activations quantized at run time (DynamicQuantizeLinear +
  MatMulInteger/ConvInteger): the usual choice for transformer MatMuls.
* ``weight_only``: per-output-channel symmetric int8 weights behind a DequantizeLinear, or
  (``bits=4``) block-wise symmetric int4 weights (``block_size`` per scale along the reduction
  axis, opset 21 ``DequantizeLinear``) for MatMul/Gemm/Gather; the compute stays float
  (smaller files, same speed).
* ``fp16``: float16 weights and compute, float32 inputs/outputs.

Scheme (``scheme=auto``): uint8 activations (asymmetric) × int8 weights (symmetric,
per output channel), "U8S8", the fast recipe of ONNX Runtime's x86 and ARM kernels; S8S8 is
what its default recipe uses and is slower than fp32 on this project's machine. ``reduce_range``
(7-bit weights, where u8×s8 products can saturate) is used only when the pass context's target
says it has no int8 dot product (x86 without VNNI); the host this runs on is never read. For
such a target the few groups of four weights that could saturate the int16 sums of AVX2's
fastest kernel are brought within range too (:func:`fit_weight_quads`,
:mod:`~graphpress.passes.int16_sums`).

Accuracy control (``tolerance > 0``): quantize everything, score each quantized layer by its
SQNR (signal-to-quantization-noise ratio of its output, in dB; for dense layers their own error,
emulated with the activation grid that ships: per tensor, or per row with ``activations=token``),
and move the worst layer back to
fp32 until the metric (lowest output cosine to the fp32 model by default; any callable from
Python) is within ``tolerance``. The stats list each layer's decision, SQNR and MSE.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from graphpress.errors import GraphpressError, one_line
from graphpress.ir.edit import add_initializer, graph_names
from graphpress.ir.numeric import output_similarity
from graphpress.ir.external_data import rebase
from graphpress.ir.io import MAX_IR_VERSION, _materialize, clone, to_proto
from graphpress.passes.context import TargetFacts
from graphpress.passes.int16_sums import conv_kernel_order, fit_int16_quads
from graphpress.passes.base import Pass, PassResult, option
from graphpress.passes.per_token import per_token_activations
from graphpress.passes.registry import register
from graphpress.passes.smooth import smooth_activations

__all__ = ["INTEGER_LAYERS", "QUANTIZED_OPS", "Quantize", "fit_weight_quads", "is_quantized", "layer_errors", "mse_ranges", "quantize_model"]

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: layers on integers (ONNX's, and ONNX Runtime's QOperator and dynamic forms)
INTEGER_LAYERS = frozenset({"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})

#: the ops of a model that is quantized already
QUANTIZED_OPS = INTEGER_LAYERS | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def is_quantized(model: ir.Model) -> collections.Counter:
    """The quantized ops of ``model`` (any of its graphs) by type: empty (false) for a float model."""
    return collections.Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type in QUANTIZED_OPS)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[Mapping[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - ORT calls it only for some methods
        pass


def _replace_contents(model: ir.Model, proto: onnx.ModelProto) -> None:
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    new = ir.serde.deserialize_model(proto)
    model.graph = new.graph
    for key in list(model.functions):
        if key not in new.functions:
            del model.functions[key]
    for key, fn in new.functions.items():
        model.functions[key] = fn
    # ORT's float16 converter appends its input Casts at the end of the node list
    ir.passes.common.TopologicalSortPass()(model)


def quantize_model(
    model: ir.Model,
    *,
    mode: str = "static",
    calibration: list[Mapping[str, np.ndarray]] | None = None,
    method: str = "minmax",
    per_channel: bool = True,
    scheme: str = "auto",
    ops: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    percentile: float = 99.999,
    bits: int = 8,
    block_size: int = 32,
    target: TargetFacts | None = None,
    activations: str = "tensor",
) -> dict[str, Any]:
    """Quantize ``model`` in place (see the module docstring); returns what was done.

    ``target``: where the model will run; 7-bit weights (``reduce_range``) only when it says
    it has no int8 dot product (never from the machine this runs on). ``activations="token"``
    (dynamic): one scale and zero point per row of the last axis
    (:func:`~graphpress.passes.per_token.per_token_activations`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = list(ops) if ops is not None else None
    exclude = list(exclude)
    if scheme == "auto":
        scheme = "u8s8"
    act_type = QuantType.QUInt8 if scheme == "u8s8" else QuantType.QInt8
    reduce_range = scheme == "u8s8" and target is not None and target.int8_dot_product is False
    flattened = _gemm_biases_1d(model.graph) if mode == "static" else 0  # biases ORT's weight-scale adjustment cannot index
    proto = _materialize(to_proto(model), model)  # ORT's tools read the weights from this proto or its copy
    info: dict[str, Any] = {"mode": mode, "scheme": scheme, "per_channel": per_channel, "reduce_range": reduce_range}
    if flattened:
        info["gemm_biases_flattened"] = flattened
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        _replace_contents(model, convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True))
        return info
    if mode == "weight_only":
        if bits == 4:
            info.update(_weight_only_int4(model, ops or ["MatMul", "Gemm", "Gather"], exclude, block_size))
        else:
            info["weights"] = _weight_only(model, ops or list(QUANTIZABLE), exclude)
        return info
    # nodes ORT's quantizer (1.32) mishandles stay float (found by the fuzzer, see _unquantizable)
    kept = _unquantizable(proto, mode)
    if kept:
        info["kept_float"] = dict(collections.Counter(kept.values()))
        exclude = [*exclude, *kept]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(proto, src)
        if mode == "dynamic":
            quantize_dynamic(
                src, dst, op_types_to_quantize=[o for o in (ops or ["MatMul", "Gemm"]) if o in ("MatMul", "Gemm", "Conv")], per_channel=per_channel,
                # ORT's dynamic quantizer splits a Gemm into "<name>_MatMul" + Add before it
                # looks at the exclusions
                reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=[*exclude, *(f"{n}_MatMul" for n in exclude)],
            )  # fmt: skip
        elif mode == "static":
            if not calibration:
                raise GraphpressError("quantize: static mode needs calibration inputs (an .npz, a Python iterable, or generated)")
            methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
                       "mse": CalibrationMethod.MinMax}  # fmt: skip
            extra = {"ActivationSymmetric": scheme == "s8s8", "WeightSymmetric": True, "CalibPercentile": percentile}
            if method == "mse":
                ranges = mse_ranges(model, calibration, symmetric=scheme == "s8s8")
                extra["TensorQuantOverrides"] = {k: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for k, (lo, hi) in ranges.items()}
                info["mse_clipped_tensors"] = ranges.clipped
            quantize_static(
                src, dst, _Reader(calibration), quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=act_type, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                calibrate_method=methods[method], extra_options=extra,
            )  # fmt: skip
        else:
            raise GraphpressError(f"quantize: unknown mode '{mode}'")
        out = onnx.load(dst)
    _replace_contents(model, out)
    if reduce_range:
        info["int16_quads_fitted"], info["int16_quads"] = fit_weight_quads(model)
    if mode == "dynamic" and activations == "token":
        info["per_token_activations"] = per_token_activations(model)
    return info


def _kernel_order(node: ir.Node, w: np.ndarray) -> tuple[np.ndarray, int, Callable[[np.ndarray], np.ndarray]] | None:
    """An int8 weight of ``node`` as the ``[K, N]`` its integer kernel reads
    (:func:`~graphpress.passes.int16_sums.conv_kernel_order` for a convolution), how many of its
    entries are weights, and the way back; None where no kernel groups its K by 8."""
    attrs = {k: v.value for k, v in node.attributes.items()}
    if node.op_type in ("Conv", "ConvInteger") and w.ndim == 4 and attrs.get("group", 1) == 1:
        return conv_kernel_order(w, int(attrs.get("dilations", (1, 1))[-1]))
    if node.op_type in ("MatMul", "MatMulInteger") and w.ndim == 2:
        return w, w.size, lambda kn: kn
    if node.op_type == "Gemm" and w.ndim == 2:
        return (w.T, w.size, lambda kn: kn.T) if attrs.get("transB", 0) else (w, w.size, lambda kn: kn)
    return None


def fit_weight_quads(model: ir.Model) -> tuple[int, int]:
    """Every int8 weight of a Conv/MatMul/Gemm (behind its DequantizeLinear) or a
    ConvInteger/MatMulInteger with no four-weight int16 group over the limit of AVX2's
    ``vpmaddubsw`` kernels (:func:`~graphpress.passes.int16_sums.fit_int16_quads`); returns
    (groups changed, groups). A weight its consumers read in different K orders stays."""
    consumers: dict[ir.Value, list[ir.Node]] = collections.defaultdict(list)
    for node in model.graph:
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if node.op_type in ("ConvInteger", "MatMulInteger") and i == 1:
                consumers[v].append(node)
            elif node.op_type == "DequantizeLinear" and i == 0:
                consumers[v].extend(c for c, j in node.outputs[0].uses() if j == 1 and c.op_type in ("Conv", "MatMul", "Gemm"))
    changed = total = 0
    for v, nodes in consumers.items():
        if v.const_value is None or v.dtype != ir.DataType.INT8 or not nodes:
            continue
        w = v.const_value.numpy()
        orders = [_kernel_order(n, w) for n in nodes]
        if any(o is None for o in orders) or len({n.op_type.replace("Integer", "") for n in nodes}) > 1:
            continue
        kn, weights, back = orders[0]
        fitted, count = fit_int16_quads(kn, weights=weights)
        total += kn.shape[0] // 4 * kn.shape[1] if kn.shape[0] % 8 == 0 else 0
        if count:
            changed += count
            v.const_value = ir.tensor(np.ascontiguousarray(back(fitted)), name=v.const_value.name)
    return changed, total


_OTHER_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _gemm_biases_1d(graph: ir.Graph) -> int:
    """Every Gemm's constant ``C`` of shape ``[1, N]`` (tf2onnx's and Keras's Dense layers; what
    ``fuse`` makes of ``MatMul + Add`` with such a bias) as ``[N]`` -- the same broadcast -- in a
    new initializer (the old one dropped when nothing else reads it); returns how many. ORT's
    static quantizer (1.32) adjusts a per-channel weight's scales so that its int32 bias fits,
    indexing the bias one output channel at a time: on a ``[1, N]`` bias the first index is the
    whole row, and it stops with numpy's "truth value of an array is ambiguous" (Magika's
    classifier)."""
    taken = graph_names(graph)
    count = 0
    for node in list(graph):
        c = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) == 3 else None
        if c is None or c.const_value is None or not c.is_initializer() or len(c.const_value.shape) != 2 or c.const_value.shape[0] != 1:
            continue
        node.replace_input_with(2, add_initializer(graph, f"{c.name}_1d", c.const_value.numpy().reshape(-1), taken))
        if not c.uses() and not c.is_graph_output():
            graph.initializers.pop(c.name)
        count += 1
    return count


def _unquantizable(proto: onnx.ModelProto, mode: str) -> dict[str, str]:
    """Nodes ORT's quantizer (onnxruntime 1.32) mishandles, by name (unnamed ones get a name), with why:

    * a float16/float64/bfloat16 input or output: the quantizer handles float32 only and writes
      float32 Q/DQ on them, an invalid graph, or stops (NNSmith seeds 13, 20);
    * a Conv/MatMul/Gemm whose data input is a constant: the quantizer takes it for a weight,
      and a Conv bias then gets the wrong number of scales (seed 731); such nodes compute a
      constant anyway;
    * dynamic mode, a MatMul whose weight is not 2-D: the per-channel zero point of the
      MatMulInteger it writes is a shape ORT's kernel refuses (seed 674).
    """
    try:
        typed = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort; declared types still count
        typed = proto
    graph = typed.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = {t.name: t for t in graph.initializer} | {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    kept = {}
    for i, (node, original) in enumerate(zip(graph.node, proto.graph.node)):
        reason = None
        if any(types.get(v) in _OTHER_FLOATS for v in (*node.input, *node.output) if v):
            reason = "non-float32 tensors"
        elif node.op_type in ("Conv", "MatMul", "Gemm") and node.input and node.input[0] in constants:
            reason = "constant data input"
        elif mode == "dynamic" and node.op_type == "MatMul" and len(node.input) > 1 and isinstance(constants.get(node.input[1]), onnx.TensorProto) \
                and len(constants[node.input[1]].dims) != 2:  # fmt: skip
            reason = "weight not 2-D"
        if reason:
            if not original.name:
                original.name = f"graphpress_unnamed_{i}"
            kept[original.name] = reason
    return kept


class _Ranges(dict):
    """Activation name -> (rmin, rmax); ``clipped``: how many are narrower than min/max."""

    clipped = 0


def _quant_mse(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> float:
    if symmetric:
        bound = max(abs(lo), abs(hi))
        scale = bound / 127.0 if bound > 0 else 1.0
        q = np.clip(np.round(x / scale), -127, 127)
        return float(np.mean((q * scale - x) ** 2))
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = np.clip(np.round(-lo / scale), 0, 255)
    q = np.clip(np.round(x / scale) + zp, 0, 255)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def mse_ranges(model: ir.Model, calibration: list[Mapping[str, np.ndarray]], *, symmetric: bool = False, samples: int = 200_000) -> _Ranges:
    """Per activation tensor, the range that minimizes the quantization MSE over the calibration
    data: the min/max range shrunk by a factor in [0.2, 1] (41 steps, 0 stays inside), searched on
    up to ``samples`` values of each tensor. What ``method=mse`` gives ONNX Runtime's quantizer."""
    import onnxruntime as ort

    copy = clone(model)
    names = {v.name for v in copy.graph.outputs}
    for node in copy.graph:
        for out in node.outputs:
            if out.dtype == ir.DataType.FLOAT and out.name not in names:
                copy.graph.outputs.append(out)
                names.add(out.name)
    for value in copy.graph.inputs:
        if value.dtype == ir.DataType.FLOAT and value.name not in names and value.name not in copy.graph.initializers:
            copy.graph.outputs.append(value)
    sess = ort.InferenceSession(_materialize(to_proto(copy), copy).SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {}
    for feeds in calibration:
        for name, arr in zip(out_names, sess.run(None, dict(feeds))):
            if arr.dtype == np.float32 and arr.size:
                collected.setdefault(name, []).append(arr.ravel())
    rng = np.random.default_rng(0)
    ranges = _Ranges()
    for name, parts in collected.items():
        x = np.concatenate(parts)
        if x.size > samples:
            x = rng.choice(x, samples, replace=False)
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        if hi == lo:
            continue
        best = min((_quant_mse(x, a * lo, a * hi, symmetric), a) for a in np.linspace(0.2, 1.0, 41))
        ranges[name] = (best[1] * lo, best[1] * hi)
        ranges.clipped += best[1] < 1.0
    return ranges


def _quantize_weights(model: ir.Model, ops: list[str], exclude: list[str], quantize) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Put a ``DequantizeLinear`` in front of every float initializer weight of ``ops`` (input 1;
    Gather: input 0). ``quantize(node, array)`` returns ``(q, scale, attributes)`` or None to
    leave the weight alone. A weight used by several nodes is quantized once. Returns
    ``(weight, q, scale)`` per quantized weight."""
    graph = model.graph
    done: dict[str, ir.Value] = {}  # weight name -> its DequantizeLinear output (shared weights)
    quantized = []
    for node in list(graph):
        if node.op_type not in ops or any(e in node.name for e in exclude):
            continue
        index = 0 if node.op_type == "Gather" else 1
        if len(node.inputs) <= index or node.inputs[index] is None:
            continue
        w = node.inputs[index]
        if w.name in done:
            node.replace_input_with(index, done[w.name])
            continue
        if w.const_value is None or not w.is_initializer() or w.const_value.dtype != ir.DataType.FLOAT:
            continue
        arr = w.const_value.numpy()
        result = quantize(node, arr)
        if result is None:
            continue
        q, scale, attributes = result
        suffix = "int8" if q.dtype == np.int8 else "int4"
        qv = add_initializer(graph, f"{w.name}_{suffix}", q)
        sv = add_initializer(graph, f"{w.name}_scale", np.ascontiguousarray(scale))
        dq = ir.node("DequantizeLinear", [qv, sv], attributes=attributes, name=f"{w.name}_dq")
        dq.outputs[0].name = f"{w.name}_dequantized"
        dq.outputs[0].shape, dq.outputs[0].type = w.shape, w.type
        graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        done[w.name] = dq.outputs[0]
        quantized.append((arr, q, scale))
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        graph.initializers.pop(name)
    return quantized


def _weight_only(model: ir.Model, ops: list[str], exclude: list[str]) -> int:
    """int8 per-output-channel symmetric weights + DequantizeLinear for MatMul/Gemm/Conv/Gather constants."""

    def per_channel(node: ir.Node, arr: np.ndarray):
        if arr.ndim < 2:
            return None
        axis = {"MatMul": arr.ndim - 1, "Gemm": 0 if node.attributes.get_int("transB", 0) else 1, "Gather": 0}.get(node.op_type, 0)
        moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        scale = (np.abs(moved).max(axis=1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        shape = [1] * arr.ndim
        shape[axis] = -1
        return np.clip(np.round(arr / scale.reshape(shape)), -127, 127).astype(np.int8), scale, {"axis": axis}

    return len(_quantize_weights(model, [*ops, "Gather"], exclude, per_channel))


def _reduction_axis(node: ir.Node, rank: int) -> int | None:
    """The axis of a 2-D weight that the op sums over (int4 blocks run along it)."""
    if node.op_type == "MatMul":
        return rank - 2
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transB", 0) else 0
    if node.op_type == "Gather":
        return 1 if node.attributes.get_int("axis", 0) == 0 and rank == 2 else None
    return None


def _weight_only_int4(model: ir.Model, ops: list[str], exclude: list[str], block_size: int) -> dict[str, Any]:
    """Block-wise symmetric int4 weights (one fp32 scale per ``block_size`` weights along the
    reduction axis) behind an opset-21 ``DequantizeLinear(block_size=...)``; the model is moved
    to opset 21 (ONNX Runtime runs it)."""
    import ml_dtypes

    if model.opset_imports.get("", 0) < 21:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(to_proto(model), 21)
        except Exception as e:  # noqa: BLE001 - the converter raises several types
            raise GraphpressError(f"quantize: int4 weights need opset 21 and the model does not convert ({one_line(e)})") from None
        _replace_contents(model, converted)
        model.opset_imports[""] = 21
    skipped = 0

    def block_wise(node: ir.Node, arr: np.ndarray):
        nonlocal skipped
        if arr.ndim != 2:
            return None
        axis = _reduction_axis(node, arr.ndim)
        if axis is None or arr.shape[axis] % block_size:
            skipped += 1
            return None
        moved = np.moveaxis(arr, axis, 0)  # [K, rest]
        blocks = moved.reshape(-1, block_size, moved.shape[1])
        scale = (np.abs(blocks).max(axis=1) / 7.0).astype(np.float32)  # [K/B, rest]
        scale[scale == 0] = 1.0
        q = np.clip(np.round(blocks / scale[:, None, :]), -8, 7).reshape(moved.shape)
        return np.moveaxis(q, 0, axis).astype(ml_dtypes.int4), np.moveaxis(scale, 0, axis), {"axis": axis, "block_size": block_size}

    done = _quantize_weights(model, [o for o in ops if o in ("MatMul", "Gemm", "Gather")], exclude, block_wise)
    return {"weights": len(done), "bits": 4, "block_size": block_size, "skipped_not_divisible": skipped,
            "weight_bytes_before": sum(a.nbytes for a, _, _ in done),
            "weight_bytes_after": sum((q.size + 1) // 2 + sc.nbytes for _, q, sc in done)}  # fmt: skip


def layer_errors(reference: ir.Model, quantized: ir.Model, names: list[str], feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """SQNR (dB) and MSE of the named values of ``quantized`` against the same-named values of ``reference``.

    ONNX Runtime's quantizer drops a Relu/Clip after a quantized layer (the quantization range
    clamps instead) and gives the layer the activation's output name; the activation is then
    applied to the quantized value before comparing. Names missing from either model are skipped.
    """
    from graphpress.ir.numeric import run

    ref_producers = {out.name: node for node in reference.graph for out in node.outputs}
    q_producers = {out.name: node for node in quantized.graph for out in node.outputs}
    pairs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name in names:
        r, q = ref_producers.get(name), q_producers.get(name)
        if r is None or q is None:
            continue
        if r.op_type == "Relu" and q.op_type != "Relu":
            pairs[name] = lambda x: np.maximum(x, 0)
        elif r.op_type == "Clip" and q.op_type != "Clip":
            lo = r.inputs[1].const_value.numpy() if len(r.inputs) > 1 and r.inputs[1] is not None and r.inputs[1].const_value is not None else -np.inf
            hi = r.inputs[2].const_value.numpy() if len(r.inputs) > 2 and r.inputs[2] is not None and r.inputs[2].const_value is not None else np.inf
            pairs[name] = lambda x, lo=lo, hi=hi: np.clip(x, lo, hi)
        else:  # the same value (a dynamic layer's rescale Mul ends in the MatMul's output name)
            pairs[name] = lambda x: x
    if not pairs:
        return {}
    want = run(reference, feeds, outputs=list(pairs))
    got = run(quantized, feeds, outputs=list(pairs))
    out = {}
    for name, activation in pairs.items():
        a, b = want[name].astype(np.float64), activation(got[name]).astype(np.float64)
        noise = float(((a - b) ** 2).mean())
        signal = float((a**2).mean())
        out[name] = {"sqnr_db": round(float(10 * np.log10(signal / noise)), 2) if noise > 0 else float("inf"), "mse": noise}
    return out


def _fake_quant_activation(x: np.ndarray, symmetric: bool, per_token: bool = False) -> np.ndarray:
    """Per-tensor uint8 asymmetric (int8 symmetric) quantize-dequantize over ``x``'s own range;
    ``per_token``: over each row of the last axis (``activations=token``)."""
    axes = -1 if per_token else None
    if symmetric:
        scale = np.maximum(np.abs(x).max(axis=axes, keepdims=True), 1e-12) / 127
        return np.clip(np.round(x / scale), -127, 127) * scale
    lo, hi = np.minimum(x.min(axis=axes, keepdims=True), 0.0), np.maximum(x.max(axis=axes, keepdims=True), 0.0)
    scale = np.maximum(hi - lo, 1e-12) / 255
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """Symmetric int8 quantize-dequantize of a ``[K, N]`` weight, per output column or per tensor."""
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max(), 1e-12) / 127
    return np.round(w / scale) * scale


def local_errors(
    model: ir.Model, feeds: Mapping[str, np.ndarray], ops: Iterable[str], *, per_channel: bool = True, symmetric: bool = False, per_token: bool = False
) -> dict[str, float]:
    """Each dense layer's own quantization error: SQNR (dB) of ``x @ W`` against its int8 version
    (the activation over its range on ``feeds``, or over each row of its last axis with
    ``per_token``; the weight per channel), computed on the fp32
    model's own activations — what quantizing that layer alone costs. (The SQNR measured in the
    quantized model compounds every earlier layer's error: it ranks deep layers worst.) MatMul and
    Gemm with a constant 2-D weight; keyed by node name."""
    from graphpress.ir.numeric import run

    layers = {}
    for node in model.graph:
        if node.op_type not in ops or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        w = node.inputs[1].const_value if node.inputs[1] is not None else None
        if w is None or len(w.shape) != 2 or node.inputs[0] is None:
            continue
        w = w.numpy().astype(np.float64)
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            w = w.T
        layers[node.name] = (node.inputs[0].name, w)
    if not layers:
        return {}
    acts = run(model, feeds, outputs=sorted({x for x, _ in layers.values()}))
    out = {}
    for name, (x_name, w) in layers.items():
        x = acts[x_name].astype(np.float64)
        y = x @ w
        noise = float(((y - _fake_quant_activation(x, symmetric, per_token) @ _fake_quant_weight(w, per_channel)) ** 2).mean())
        out[name] = round(float(10 * np.log10(float((y**2).mean()) / noise)), 2) if noise > 0 else float("inf")
    return out


def _quantized_layers(model: ir.Model, ops: Iterable[str]) -> list[ir.Node]:
    """Nodes of ``ops`` whose inputs come from DequantizeLinear (QDQ) or that are integer ops."""
    out = []
    for node in model.graph:
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            out.append(node)
        elif node.op_type in ops and any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear" for v in node.inputs):
            out.append(node)
    return out


@register
class Quantize(Pass):
    """Quantize to standard QDQ (static), dynamic int8, weight-only int8 or fp16; see the module docstring."""

    name = "quantize"
    #: rewrites with opset-13+ ops (Squeeze/Slice inputs, per-channel QDQ); the same opset as a torch export
    min_opset = 20
    family = "quantization"
    uses_samples = True
    description = "QDQ int8 (static, calibrated), dynamic int8, weight-only int8 or fp16, with an accuracy budget"

    @dataclasses.dataclass
    class Options:
        mode: str = option("static", help="what to quantize", choices=("static", "dynamic", "weight_only", "fp16"))
        bits: int = option(8, help="weight_only: 8 (per channel) or 4 (block-wise, opset 21)", choices=(4, 8))
        block_size: int = option(32, help="weight_only bits=4: weights per scale along the reduction axis", min=16)
        scheme: str = option("auto", help="activation x weight types (auto: u8s8)", choices=("auto", "u8s8", "s8s8"))
        activations: str = option(
            "tensor", help="dynamic: one activation scale per tensor (DynamicQuantizeLinear) or per token (each row of the last axis)", choices=("tensor", "token")
        )
        per_channel: bool = option(True, help="per-output-channel weight scales")
        method: str = option("minmax", help="activation calibration (mse: the range with the least quantization MSE)", choices=("minmax", "percentile", "entropy", "mse"))
        samples: int = option(8, help="generated calibration samples when no inputs are given", min=1)
        ops: str = option(
            "auto", help="op types to quantize ('|'-separated); auto: static: every op ORT's quantizer supports, dynamic: MatMul|Gemm"
        )
        exclude: str = option("", help="node names to keep in fp32 ('|'-separated)")
        tolerance: float = option(0.0, help="> 0: fall back the least accurate layers to fp32 until the output cosine drops at most this", min=0.0, max=1.0)
        max_fallback: int = option(16, help="most layers the accuracy control moves back to fp32", min=0)
        seed: int = option(0, help="seed of generated calibration inputs", min=0)
        smooth: float = option(
            0.0, help="SmoothQuant strength alpha (0: off; 0.5-0.85 typical): activation channels divided, weight rows multiplied, exact in fp32", min=0.0, max=1.0
        )

    def call(self, model: ir.Model) -> PassResult:
        o = self.options
        if found := is_quantized(model):
            # ONNX Runtime's quantizer wrote a second quantizer beside each one (a graph that
            # fails to load) and the pass ended as "a bug in that pass"
            listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items()))
            raise GraphpressError(f"quantize: the model is quantized already ({listed}): quantize its float original, or leave 'quantize' out")
        if o.activations == "token" and o.mode != "dynamic":
            raise GraphpressError(f"quantize: activations=token quantizes activations at run time: use it with mode=dynamic (not mode={o.mode})")
        ops = [t for t in o.ops.split("|") if t] if o.ops != "auto" else None
        exclude = [t for t in o.exclude.split("|") if t]
        ctx = self.context
        calibration, generated = ctx.calibration(model, o.samples, seed=o.seed)
        given = to_proto(model)
        fp32 = rebase(ir.serde.deserialize_model(given), model)
        probe_feeds = ctx.feeds(model, seed=o.seed)
        metric = ctx.metric or output_similarity(fp32, probe_feeds)
        baseline = metric(fp32)  # the model given: a smoothed copy is measured against it too
        smoothing = None
        if o.smooth > 0 and o.mode in ("static", "dynamic"):
            # on the copy every candidate is made from
            smoothing = smooth_activations(fp32, calibration, o.smooth, ops=[t for t in (ops or ("MatMul", "Gemm")) if t in ("MatMul", "Gemm")], exclude=exclude)
            # the Muls stay float whatever the op list (static mode's default quantizes Mul too)
            exclude = [*exclude, *smoothing.pop("nodes")]

        def attempt(excluded: list[str]) -> tuple[ir.Model, dict[str, Any]]:
            candidate = clone(fp32)
            info = quantize_model(
                candidate, mode=o.mode, calibration=calibration, method=o.method, per_channel=o.per_channel, scheme=o.scheme, ops=ops,
                exclude=excluded, bits=o.bits, block_size=o.block_size, target=ctx.target, activations=o.activations,
            )  # fmt: skip
            return candidate, info

        def measure(candidate: ir.Model) -> float:
            try:
                return metric(candidate)
            except GraphpressError as e:  # ORT's quantizer wrote something ORT cannot run
                raise GraphpressError(
                    f"pass 'quantize' produced a model ONNX Runtime cannot run ({e}); keep the node it names in float "
                    "(quantize:exclude=NAME) and report the model"
                ) from e

        excluded = list(exclude)
        candidate, info = attempt(excluded)
        value = measure(candidate)
        decisions: dict[str, dict[str, Any]] = {}
        layers = _quantized_layers(candidate, ops or QUANTIZABLE)
        fp32_values = _value_names(fp32)
        outputs = [name for name in (_layer_output(n, fp32_values) for n in layers) if name is not None]
        errors = layer_errors(fp32, candidate, outputs, probe_feeds) if outputs and o.mode in ("static", "dynamic") else {}
        fallback = 0
        # a layer is named by the fp32 node that produced its output (what the quantizer excludes)
        producers = _producer_names(fp32)
        # when every ranked layer is dense, by its own error (quantized alone); otherwise by the
        # SQNR of its output in the quantized model
        local = {}
        if o.tolerance > 0 and value < baseline - o.tolerance and o.mode in ("static", "dynamic"):
            local = local_errors(
                fp32, probe_feeds, ops or QUANTIZABLE, per_channel=o.per_channel, symmetric=o.scheme == "s8s8", per_token=o.activations == "token"
            )
            if not {producers.get(name, name) for name in errors} <= set(local):
                local = {}
        while o.tolerance > 0 and value < baseline - o.tolerance and fallback < o.max_fallback:
            if local:
                ranked = sorted((db, name, "own SQNR") for name, db in local.items() if name not in excluded)
            else:
                ranked = sorted((e["sqnr_db"], producers.get(name, name), "lowest SQNR") for name, e in errors.items() if producers.get(name, name) not in excluded)
            if not ranked:
                break
            db, worst, kind = ranked[0]
            excluded.append(worst)
            decisions[worst] = {"decision": "fp32", "reason": f"{kind} ({db} dB) while the metric was {value:.5f}"}
            fallback += 1
            candidate, info = attempt(excluded)
            value = measure(candidate)
        fp32_producers = _producer_names(fp32)
        for name, e in errors.items():
            node = fp32_producers.get(name, name)
            decisions.setdefault(node, {"decision": "int8" if node not in excluded else "fp32"})
            decisions[node].update(e)
        for node, db in local.items():
            decisions.setdefault(node, {"decision": "int8" if node not in excluded else "fp32"})["own_sqnr_db"] = db
        after = to_proto(candidate)
        # exact: ORT's quantizer may find nothing to quantize and hand the graph back as it was
        modified = after.graph.SerializeToString() != given.graph.SerializeToString()
        _replace_contents(model, after)
        stats = {
            **info,
            "calibration": ("generated from input specs (demo only)" if generated else "given") if o.mode == "static" else None,
            "metric_fp32": baseline,
            "metric": value,
            "fallback_layers": fallback,
            **({"smoothing": smoothing} if smoothing is not None else {}),
            "quantized_nodes": len(_quantized_layers(candidate, ops or QUANTIZABLE)),
            "layers": decisions,
        }
        if o.tolerance > 0 and value < baseline - o.tolerance:
            stats["budget_met"] = False
        warnings = [_nothing_quantized(fp32, o.mode, ops or QUANTIZABLE)] if not stats["quantized_nodes"] and o.mode in ("static", "dynamic") else []
        if stats["quantized_nodes"] and (norms := _norms_after_layers(model)):
            warnings.append(f"{norms} BatchNormalization(s) after quantized layers stay in float beside them (their layers' weights are no longer float "
                            "constants to fold them into): run 'fuse' before 'quantize' (--passes cleanup,fuse,quantize) to fold them first")  # fmt: skip
        if warnings:
            stats["warnings"] = warnings
        return PassResult(model, modified, stats)


def _norms_after_layers(model: ir.Model) -> int:
    """How many inference-mode BatchNormalizations read a quantized layer's output (a
    Conv/ConvTranspose/Gemm/MatMul whose weight is dequantized), directly or through the
    activation's Quantize/Dequantize pair."""
    count = 0
    for node in model.graph:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or node.attributes.get_int("training_mode", 0):
            continue
        layer = node.inputs[0].producer() if node.inputs[0] is not None else None
        while layer is not None and layer.op_type in ("QuantizeLinear", "DequantizeLinear"):
            layer = layer.inputs[0].producer()
        if layer is None or layer.op_type not in QUANTIZABLE or len(layer.inputs) < 2 or layer.inputs[1] is None:
            continue
        weight = layer.inputs[1].producer()
        count += weight is not None and weight.op_type == "DequantizeLinear"
    return count


def _nothing_quantized(model: ir.Model, mode: str, ops: Iterable[str]) -> str:
    """Why a static/dynamic run quantized no layer, and what would."""
    present = collections.Counter(n.op_type for n in model.graph if n.op_type in QUANTIZABLE and n.domain in ("", "ai.onnx"))
    if not present:
        return "quantized 0 nodes: the model has no Conv, ConvTranspose, Gemm or MatMul layer; weight sharing (share) compresses other weights"
    found = ", ".join(f"{n} {op}" for op, n in sorted(present.items()))
    if mode == "dynamic" and (present.get("Conv") or present.get("ConvTranspose")):
        return f"quantized 0 nodes ({found}): mode=dynamic quantizes MatMul/Gemm layers with constant weights; convolutions quantize with mode=static"
    return f"quantized 0 nodes ({found}, ops={'|'.join(ops)}): their weights are not constant float initializers, or ops=/exclude= leave none; mode=weight_only or fp16 may apply"


def _layer_output(node: ir.Node, names: set[str], steps: int = 4) -> str | None:
    """The first value from ``node`` on that the fp32 model has too: the layer's own output
    (QDQ), or past the Cast/Mul/Add rescale of a dynamic MatMulInteger, which ends in the
    original output name."""
    value = node.outputs[0] if node.outputs else None
    for _ in range(steps + 1):
        if value is None:
            return None
        if value.name in names:
            return value.name
        consumers = list(value.consumers())
        if len(consumers) != 1 or consumers[0].op_type not in ("Cast", "Mul", "Add", "Sub") or not consumers[0].outputs:
            return None
        value = consumers[0].outputs[0]
    return None


def _value_names(model: ir.Model) -> set[str]:
    return {out.name for node in model.graph for out in node.outputs}


def _producer_names(model: ir.Model) -> dict[str, str]:
    """Value name -> name of the node producing it."""
    return {out.name: node.name for node in model.graph for out in node.outputs}
