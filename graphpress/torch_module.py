"""A compressed model back in the user's own ``torch.nn.Module``: :func:`to_module`.

``gp.load(module, example)`` exports a module with its parameter names; the passes then cut,
fold, quantize and share in the IR. :func:`to_module` repeats what they did on a copy of the
module, so the result is the user's class, smaller, computing what the compressed graph
computes, and trainable as before:

* **structured pruning**: the channels each cut kept (the model's
  :data:`~graphpress.passes.pruning.prune.PRUNED_CHANNELS_KEY` record) are mapped onto the
  dependency groups of a fresh export of the module, so parameters the graph no longer has
  (a BatchNorm folded before the cut) are cut with their group
  (:func:`~graphpress.passes.pruning.apply_plan_to_module`);
* **folded layers**: a BatchNorm the graph folded into the convolution before it becomes
  ``nn.Identity``; the convolution takes the folded weight and bias;
* **weights**: each Conv/Linear takes the weight and bias the graph computes for it (the
  dequantized int8 weight, the decoded shared weight);
* **static int8** (QDQ): the weight keeps its int8 grid as a :class:`~graphpress.qat.FixedFakeQuant`
  parametrization with the graph's scales and zero points, and the layer's input is
  fake-quantized with the scale and zero point of the Quantize/Dequantize pair in front of it;
* **dynamic int8** (``DynamicQuantizeLinear`` + ``MatMulInteger``): the same for the weight; the
  input is quantized per call over its own range, as the graph does;
* **weight sharing**: the weight becomes a :class:`~graphpress.qat.SharedWeight` (the codebook
  is the parameter, the clusters fixed, zeros kept zero): training it is Deep Compression's
  centroid fine-tuning.

Fake quantization stands in for the integer kernels (torchao's ``quantize_`` would need a
dependency this project does not take); the graph's other Quantize/Dequantize pairs (after
an Add, a pooling) are not repeated, so the module agrees with the graph closely, not bit for
bit. :func:`to_module` measures that on sample inputs and refuses a module that does not
agree (``module.graphpress_check`` has the numbers).

Where the graph quantizes activations, rounding makes agreement chaotic: a value that torch and
ONNX Runtime compute a few units in the last place apart can land in the next integer step,
and under ``DynamicQuantizeLinear`` that step can move the range, and so the grid, of the whole
tensor; over six transformer layers the flips add up to a cosine near 0.9986 between two
equally right computations, on some CPUs and not others. So the check measures the graph's own
*rounding floor* -- its cosine to itself with every quantizer's input scaled by ``1 ± 2**-21``
(four units in the last place) -- and a module passes at :data:`AGREEMENT` or within
:data:`FLOOR_FACTOR` times the floor's distance, whichever is lower. A module that leaves out
the input quantization altogether is about four floors away.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.errors import GraphpressError
from graphpress.ir.weights import matmul_integer_scale, next_in_chain
from graphpress.passes.share import TAG as SHARE_TAG

__all__ = ["AGREEMENT", "FLOOR_FACTOR", "to_module"]

#: the lowest output cosine (per output, over the check samples) a returned module may have to
#: the compressed graph in ONNX Runtime ...
AGREEMENT = 0.999
#: ... unless the graph's rounding floor is lower: the module may then be this many times as far
#: from the graph as the graph is from itself when its quantizers' inputs move by 4 ulp
FLOOR_FACTOR = 2.0
#: the relative change of each quantizer's input that measures the rounding floor (4 ulp of fp32)
_FLOOR_EPS = 2.0**-21

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger")


def _producer_chain(value: ir.Value) -> list[ir.Value]:
    """The initializers ``value`` is computed from, or ``[]`` when a graph input reaches it."""
    out: list[ir.Value] = []
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_initializer() or v.const_value is not None:
            out.append(v)
            continue
        node = v.producer()
        if node is None:
            return []
        stack.extend(i for i in node.inputs if i is not None)
    return out


def _param_key(node: ir.Node, weight: ir.Value, state: Mapping[str, Any]) -> str | None:
    """The module's ``*.weight`` key for the layer ``node`` (by the names its weight was made
    from, else by the bias Add after it, as the exporter names it)."""
    best = None
    for init in _producer_chain(weight):
        for key in (k for k in state if k.endswith("weight") and init.name and init.name.startswith(k)):
            if best is None or len(key) > len(best):
                best = key
    if best is not None:
        return best
    add = next_in_chain(node.outputs[0], "Add")  # MatMul(Integer) -> [Cast -> Mul] -> Add(bias)
    for v in add.inputs if add is not None else ():
        if v is not None and v.name and v.name.endswith(".bias") and v.name in state:
            return v.name.removesuffix(".bias") + ".weight"
    return None


def _const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


class _Layer:
    """What the compressed graph does for one module layer."""

    def __init__(self, key: str, node: ir.Node):
        self.key, self.node = key, node
        self.weight: str | np.ndarray | None = None  # a value name to evaluate, or the array
        self.bias: str | np.ndarray | None = None
        self.layout = "torch"  # "torch" ([out, in, ...]) or "in_out" (MatMul/Gemm transB=0)
        self.weight_grid: tuple[np.ndarray, np.ndarray, int | None, int, int] | None = None
        self.input_grid: tuple[np.ndarray, np.ndarray, int, int] | str | None = None  # "dynamic" or a fixed grid
        self.output_grid: tuple[np.ndarray, np.ndarray, int, int] | None = None
        self.shared = False


def _grid(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _dequantize_grid(dq: ir.Node) -> tuple[np.ndarray, np.ndarray, int | None, int, int] | None:
    """Scale, zero point, axis and integer range of a DequantizeLinear (or QuantizeLinear)."""
    scale, zero = _const(dq.inputs[1]), _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
    data = dq.inputs[0] if dq.op_type == "DequantizeLinear" else dq.outputs[0]
    if scale is None or data is None or data.dtype is None:
        return None
    np_dtype = data.dtype.numpy()
    zero = zero if zero is not None else np.zeros_like(scale, dtype=np_dtype)
    axis = dq.attributes.get_int("axis", 1) if scale.size > 1 else None
    return scale, zero, axis, *_grid(np_dtype)


def _describe(model: ir.Model, state: Mapping[str, Any]) -> list[_Layer]:
    layers = []
    for node in model.graph:
        if node.op_type not in _LAYER_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1]
        if not _producer_chain(w):
            continue  # activation x activation (attention)
        key = _param_key(node, w, state)
        if key is None:
            continue
        layer = _Layer(key, node)
        if node.op_type == "MatMulInteger":
            layer.weight, layer.weight_grid = _dynamic_weight(node)
            layer.layout, layer.input_grid = "in_out", "dynamic"
            bias_add = _bias_add(node)
            layer.bias = bias_add if bias_add is not None else None
        else:
            layer.weight = w.const_value.numpy() if w.const_value is not None else w.name
            producer = w.producer()
            if producer is not None and producer.op_type == "DequantizeLinear":
                layer.weight_grid = _dequantize_grid(producer)
            layer.shared = producer is not None and SHARE_TAG in producer.metadata_props
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)):
                layer.layout = "in_out"
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None:
                b = node.inputs[2]
                layer.bias = b.const_value.numpy() if b.const_value is not None else b.name
            elif node.op_type == "MatMul":
                layer.bias = _bias_add(node)
            x = node.inputs[0].producer() if node.inputs[0] is not None else None
            if x is not None and x.op_type == "DequantizeLinear":
                grid = _dequantize_grid(x)
                if grid is not None:
                    layer.input_grid = (grid[0], grid[1], grid[3], grid[4])
            uses = list(node.outputs[0].uses())  # the output quantized before a BatchNorm, an Add
            if len(uses) == 1 and uses[0].node.op_type == "QuantizeLinear":
                grid = _dequantize_grid(uses[0].node)
                if grid is not None:
                    layer.output_grid = (grid[0], grid[1], grid[3], grid[4])
        layers.append(layer)
    return layers


def _quantized_params(model: ir.Model, state: Mapping[str, Any], handled: set[str]) -> list[tuple[str, ir.Node]]:
    """Other module parameters the graph dequantizes from integers (a BatchNorm's scale):
    ``(state_dict key, DequantizeLinear)``."""
    out = []
    for node in model.graph:
        if node.op_type != "DequantizeLinear" or node.inputs[0] is None or node.inputs[0].const_value is None:
            continue
        name = node.inputs[0].name or ""
        keys = [k for k in state if name.startswith(k) and k not in handled and tuple(state[k].shape) == tuple(node.inputs[0].const_value.shape)]
        if keys:
            out.append((max(keys, key=len), node))
    return out


def _bias_add(node: ir.Node) -> np.ndarray | None:
    """The constant of the bias ``Add`` after a ``MatMul`` (through a dequantizing Cast/Mul)."""
    add = next_in_chain(node.outputs[0], "Add")
    consts = [_const(v) for v in add.inputs if v is not None and v.const_value is not None] if add is not None else []
    return consts[0] if len(consts) == 1 else None


def _dynamic_weight(node: ir.Node) -> tuple[np.ndarray, tuple]:
    """``(B - zero_point) * scale`` of a ``MatMulInteger`` (the scale is the constant factor of
    the ``Mul`` that dequantizes its output)."""
    b, zero = _const(node.inputs[1]), _const(node.inputs[3]) if len(node.inputs) > 3 else None
    scale = matmul_integer_scale(node)
    if b is None or scale is None:
        raise GraphpressError(f"node '{node.name}': a MatMulInteger whose weight scale is not a constant; to_module takes the graph quantize:mode=dynamic writes")
    zero = np.zeros(1, dtype=b.dtype) if zero is None else zero
    weight = (b.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
    per_column = scale.size > 1
    grid = (scale.reshape(-1).astype(np.float32), np.broadcast_to(zero.reshape(-1), scale.reshape(-1).shape).copy(), 1 if per_column else None, *_grid(b.dtype))
    return weight, grid


def _evaluate(model: ir.Model, layers: list[_Layer]) -> None:
    from graphpress.ir.numeric import make_inputs, run

    names = sorted({v for layer in layers for v in (layer.weight, layer.bias) if isinstance(v, str)})
    if not names:
        return
    values = run(model, make_inputs(model), outputs=names, where="the compressed model")
    for layer in layers:
        if isinstance(layer.weight, str):
            layer.weight = values[layer.weight]
        if isinstance(layer.bias, str):
            layer.bias = values[layer.bias]


def _example(model: ir.Model, example_inputs) -> tuple:
    import torch

    from graphpress.ir.numeric import make_inputs

    if example_inputs is None:
        return tuple(torch.from_numpy(v) for v in make_inputs(model).values())
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _cut(module, fresh: ir.Model, record: dict[str, dict[str, Any]]) -> int:
    """Repeat the recorded structured cuts on ``module`` (``fresh``: an export of it); returns
    the tensors changed."""
    from graphpress.ir.analysis import infer_shapes
    from graphpress.passes.pruning import apply_plan_to_module
    from graphpress.passes.pruning.groups import DependencyGraph
    from graphpress.passes.pruning.prune import PrunePlan
    from graphpress.passes.pruning.torch_apply import torch_names

    state = dict(module.state_dict())
    kept: dict[tuple[str, int], np.ndarray] = {}
    for name, entry in record.items():
        # tensors the passes made (a folded BatchNorm's bias) have no parameter: their group
        # is found through the layer's weight
        key = name if name in state else f"{entry['layer']}.weight"
        shape, torch_shape = tuple(entry["shape"]), tuple(state[key].shape) if key in state else None
        flipped = torch_shape is not None and shape != torch_shape and shape[::-1] == torch_shape
        if torch_shape is None or (not flipped and shape != torch_shape):
            continue
        for axis, indices in entry["kept"].items():
            kept[(key, len(shape) - 1 - axis if flipped else axis)] = indices
    infer_shapes(fresh)
    dg = DependencyGraph(fresh)
    names = torch_names(fresh, state)
    find = dg.uf.find
    pruned: set[int] = set()
    matched = set()
    for p in dg.params:
        if p.name not in names:
            continue
        key, transposed = names[p.name]
        axis = len(state[key].shape) - 1 - p.axis if transposed else p.axis
        indices = kept.get((key, axis))
        if indices is None:
            continue
        matched.add((key, axis))
        keep = {find(int(i)) for i in p.ids[indices]}
        pruned.update(find(int(i)) for i in p.ids if find(int(i)) not in keep)
    if record and not kept:
        raise GraphpressError(f"no pruned tensor of the compressed model ({', '.join(sorted(record)[:3])}) is a parameter of this module; give the module the model was exported from")
    missing = sorted(f"{k} (axis {a})" for k, a in set(kept) - matched)
    if missing:
        raise GraphpressError(f"the cut of {missing[0]} has no channel group in a fresh export of this module; give the module the model was exported from")
    return len(apply_plan_to_module(module, PrunePlan(dg, pruned, []))) if pruned else 0


def _folded_norms(fresh: ir.Model, model: ir.Model, keys: set[str]) -> list[str]:
    """Module paths of BatchNorms that follow a layer in ``fresh`` (an export of the module) and
    that the compressed graph folded (it has no BatchNormalization reading their parameters)."""
    kept_norms = {i.name or "" for n in model.graph if n.op_type == "BatchNormalization" for v in n.inputs[1:] if v is not None for i in _producer_chain(v)}
    out = []
    for node in fresh.graph:
        if node.op_type != "BatchNormalization" or node.inputs[1] is None:
            continue
        scale = node.inputs[1].name or ""
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        if producer is None or producer.op_type not in _LAYER_OPS or any(k.startswith(scale) for k in kept_norms) or not scale.endswith(".weight"):
            continue
        w = producer.inputs[1]
        if w is not None and w.name in keys:
            out.append(scale.removesuffix(".weight"))
    return out


def to_module(
    compressed: Any,
    module,
    example_inputs: Any = None,
    *,
    samples: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    check: bool = True,
):
    """The compressed model as a copy of ``module`` (the ``torch.nn.Module`` it was exported from).

    Args:
        compressed: the compressed model: an IR model, an ``.onnx`` path or a
            :class:`~graphpress.compression.CompressResult`.
        module: the module ``compressed`` was made from (``gp.load(module, example)``); not changed.
        example_inputs: inputs to export ``module`` with (default: made from the compressed
            model's declared inputs).
        samples: inputs the returned module is checked on against the compressed model in ONNX
            Runtime (default: 4 made from the declared shapes).
        check: run that check (the module is refused below :data:`AGREEMENT` output cosine).

    Returns:
        A new module of ``module``'s class, in eval mode, with ``graphpress_check`` (per output:
        cosine and largest absolute difference to the compressed model).

    Raises:
        GraphpressError: the compressed model was not made from this module, or the module does
            not compute what the compressed model computes.
    """
    import torch
    from torch.nn.utils import parametrize

    from graphpress.ir import load
    from graphpress.passes import PassManager, build_passes
    from graphpress.passes.pruning.prune import pruned_channels
    from graphpress.qat import FixedFakeQuant, InputFakeQuant, SharedWeight

    if hasattr(compressed, "model") and isinstance(getattr(compressed, "model"), ir.Model):
        compressed = compressed.model
    model = load(compressed) if isinstance(compressed, (str, os.PathLike)) else compressed
    if not isinstance(model, ir.Model):
        raise GraphpressError(f"to_module: give the compressed model (an IR model, an .onnx path or a CompressResult), not {type(compressed).__name__}")
    if not isinstance(module, torch.nn.Module):
        raise GraphpressError(f"to_module: give the torch.nn.Module the model was exported from, not {type(module).__name__}")
    new = copy.deepcopy(module).eval()
    fresh = load(new, _example(model, example_inputs))  # the module's graph with its parameter names,
    PassManager(build_passes("cleanup")).run(fresh)  # its constants folded as the pipeline folds them
    _cut(new, fresh, pruned_channels(model))
    state = dict(new.state_dict())
    layers = _describe(model, state)
    if not layers:
        raise GraphpressError("to_module: no layer of the compressed model names a parameter of this module; give the module the model was exported from")
    _evaluate(model, layers)
    for path in _folded_norms(fresh, model, {layer.key for layer in layers}):
        parent, _, leaf = path.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, leaf, torch.nn.Identity())
    with torch.no_grad():
        for layer in layers:
            owner, _, leaf = layer.key.rpartition(".")
            sub = new.get_submodule(owner)
            weight = np.asarray(layer.weight, dtype=np.float32)
            if layer.layout == "in_out":
                weight = weight.T
            if tuple(weight.shape) != tuple(state[layer.key].shape):
                raise GraphpressError(f"layer '{layer.key}': the compressed weight has shape {list(weight.shape)}, the module's {list(state[layer.key].shape)}; give the module the model was exported from")
            setattr(sub, leaf, torch.nn.Parameter(torch.from_numpy(np.array(weight, dtype=np.float32))))
            bias_leaf = leaf[: -len("weight")] + "bias"
            if layer.bias is not None and hasattr(sub, bias_leaf) and not (getattr(sub, bias_leaf) is None and not np.any(layer.bias)):
                setattr(sub, bias_leaf, torch.nn.Parameter(torch.from_numpy(np.array(layer.bias, dtype=np.float32).reshape(-1))))
            if layer.weight_grid is not None:
                scale, zero, axis, lo, hi = layer.weight_grid
                axis = (weight.ndim - 1 - axis) if (axis is not None and layer.layout == "in_out") else axis
                parametrize.register_parametrization(sub, leaf, FixedFakeQuant(torch.from_numpy(scale), torch.from_numpy(zero.astype(np.int32)), lo, hi, axis))
            elif layer.shared:
                parametrize.register_parametrization(sub, leaf, SharedWeight(getattr(sub, leaf)))
            if not isinstance(sub, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                continue  # a weight inside a bigger module (attention's in_proj): its input is not a module call
            if layer.input_grid == "dynamic":
                sub.register_forward_pre_hook(InputFakeQuant())
            elif layer.input_grid is not None:
                scale, zero, lo, hi = layer.input_grid
                sub.register_forward_pre_hook(InputFakeQuant(FixedFakeQuant(torch.from_numpy(scale), torch.from_numpy(zero.astype(np.int32)), lo, hi)))
            if layer.output_grid is not None:
                scale, zero, lo, hi = layer.output_grid
                fake = FixedFakeQuant(torch.from_numpy(scale), torch.from_numpy(zero.astype(np.int32)), lo, hi)
                sub.register_forward_hook(lambda _m, _a, out, fake=fake: fake(out))
        handled = {layer.key for layer in layers} | {layer.key[: -len("weight")] + "bias" for layer in layers}
        for key, dq in _quantized_params(model, state, handled):
            owner, _, leaf = key.rpartition(".")
            sub = new.get_submodule(owner) if owner else new
            data, (scale, zero, axis, lo, hi) = dq.inputs[0].const_value.numpy(), _dequantize_grid(dq)
            scale, zero = np.array(scale, dtype=np.float32), np.array(zero)
            value = (data.astype(np.float32) - _broadcast(zero, axis, data.ndim)) * _broadcast(scale, axis, data.ndim)
            setattr(sub, leaf, torch.nn.Parameter(torch.from_numpy(value.astype(np.float32))))
            parametrize.register_parametrization(sub, leaf, FixedFakeQuant(torch.from_numpy(scale), torch.from_numpy(zero.astype(np.int32)), lo, hi, axis))
    new.graphpress_check = _check(new, model, samples) if check else None
    return new


def _broadcast(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if axis is None or values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _check(new, model: ir.Model, samples) -> dict[str, dict[str, float]]:
    import torch

    from graphpress.ir.numeric import as_samples, make_inputs, run_samples

    rows = as_samples(samples) if samples is not None else [make_inputs(model, seed=i) for i in range(4)]
    names = [v.name for v in model.graph.outputs]
    want = run_samples(model, rows, where="the compressed model")
    got: dict[str, list[np.ndarray]] = {}
    for feeds in rows:
        with torch.no_grad():
            out = new(*(torch.from_numpy(np.asarray(v)) for v in feeds.values()))
        outs = [out] if isinstance(out, torch.Tensor) else list(out.values()) if isinstance(out, dict) else list(out)
        for name, a in zip(names, outs):
            got.setdefault(name, []).append(a.detach().float().numpy().reshape(-1))
    floors = _rounding_floor(model, rows, names, want)
    result = {}
    for name in names:
        a, b = np.concatenate(got[name]).astype(np.float64), np.asarray(want[name], dtype=np.float64).reshape(-1)
        cos = _cosine(a, b)
        needs = min(AGREEMENT, 1.0 - FLOOR_FACTOR * (1.0 - floors[name])) if name in floors else AGREEMENT
        result[name] = {"cosine": round(cos, 6), "max_abs": float(np.abs(a - b).max()), "needs": round(needs, 6)}
        if name in floors:
            result[name]["rounding_floor"] = round(floors[name], 6)
        if cos < needs:
            raise GraphpressError(f"to_module: output '{name}' of the module has cosine {cos:.4f} to the compressed model (needs {needs:.4f}); "
                                  "the module does not compute what the graph computes: report it with the model")  # fmt: skip
    return result


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _rounding_floor(model: ir.Model, rows, names: list[str], want: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per output, the lower cosine of the graph to itself with the input of every quantizer of
    an activation scaled by ``1 + _FLOOR_EPS`` and by ``1 - _FLOOR_EPS``; ``{}`` when the graph
    quantizes no activation."""
    from onnx import helper, numpy_helper

    from graphpress.ir.numeric import run_samples

    quantized = {
        n.inputs[0].name
        for n in model.graph
        if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") and n.inputs[0] is not None and n.inputs[0].const_value is None and n.inputs[0].dtype == ir.DataType.FLOAT
    }
    proto = ir.to_proto(model)  # serialized once; each nudge only changes the factor
    nodes, moved = [], 0
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") and node.input[0] in quantized:
            moved += 1
            nudged = f"{node.input[0]}__graphpress_floor{moved}"
            nodes.append(helper.make_node("Mul", [node.input[0], "__graphpress_floor"], [nudged]))
            node.input[0] = nudged
        nodes.append(node)
    if not moved:
        return {}
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "__graphpress_floor"))
    floors: dict[str, float] = {}
    for eps in (_FLOOR_EPS, -_FLOOR_EPS):
        proto.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array(1.0 + eps, dtype=np.float32), "__graphpress_floor"))
        nudged_out = run_samples(proto, rows, where="the compressed model (rounding floor)")
        for name in names:
            a = np.asarray(nudged_out[name], dtype=np.float64).reshape(-1)
            b = np.asarray(want[name], dtype=np.float64).reshape(-1)
            floors[name] = min(floors.get(name, 1.0), _cosine(a, b))
    return floors
