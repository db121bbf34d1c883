"""Any model in the IR as a trainable ``torch.nn.Module`` running ONNX semantics: :func:`to_torch`.

The module interprets the graph node by node with torch operations (model-local functions
inlined first), so it computes what ONNX Runtime computes -- every Quantize/Dequantize pair
included -- and autograd differentiates it. Its parameters are the graph's weights, in the
form each has there:

* a float initializer (a weight, a bias, a normalization's scale, a shared weight's codebook)
  is a ``Parameter`` under its own name;
* an integer weight behind ``DequantizeLinear`` is a float ``Parameter`` holding the
  dequantized value, fake-quantized on the graph's scales and zero points in the forward pass
  (straight-through estimator);
* the integer weight of a ``MatMulInteger`` (dynamic quantization) likewise, on the scale of
  the ``Mul`` that dequantizes the product;
* ``QuantizeLinear`` and ``DynamicQuantizeLinear`` round with a straight-through gradient.

Entries that are exactly zero in a codebook or in a weight that is mostly zeros (unstructured
pruning) stay zero while training. Everything else (scales, zero points, shapes, masks, index
tensors) is a buffer. :meth:`GraphModule.write_back` returns the graph with the trained values
(integers requantized on their own grids): the same nodes, shapes, scales and codebooks.
:func:`to_torch` checks the module against ONNX Runtime before returning it and refuses an op
it does not implement by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from graphpress.errors import GraphpressError
from graphpress.ir.weights import CORRECTION_KEY, GRID_KEY, column_sums, matmul_integer_scale

__all__ = ["GraphModule", "to_torch"]

_F = nn.functional

_DTYPES = {
    ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64, ir.DataType.FLOAT16: torch.float16, ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64, ir.DataType.INT32: torch.int32, ir.DataType.INT16: torch.int16, ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8, ir.DataType.BOOL: torch.bool,
}  # fmt: skip

_QRANGE = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255), ir.DataType.INT32: (-(2**31), 2**31 - 1), ir.DataType.INT16: (-32768, 32767), ir.DataType.UINT16: (0, 65535)}


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX does) with the gradient of the identity."""
    return x + (torch.round(x) - x).detach()


def _clamp_ste(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(x, lo, hi)  # zero gradient outside the range, as QAT's STE with clipping


def _axis_view(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = t.numel()
    return t.reshape(shape)


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int, axis: int) -> torch.Tensor:
    s, z = _axis_view(scale.float(), axis, x.dim()), _axis_view(zero.float(), axis, x.dim())
    return (_clamp_ste(_round_ste(x / s) + z, lo, hi) - z) * s


def _attrs(node: ir.Node) -> dict[str, Any]:
    out = {}
    for name, attr in node.attributes.items():
        value = attr.value
        if isinstance(value, ir.TensorProtocol):
            value = value.numpy()
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        out[name] = value
    return out


class GraphModule(nn.Module):
    """The graph of an :class:`onnx_ir.Model` as a torch module (see the module docstring)."""

    def __init__(self, model: ir.Model):
        super().__init__()
        self.model = model
        graph = model.graph
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self.nodes = list(graph)
        by_name = {n.name: n for n in self.nodes if n.name}
        self._corrections = {  # correction Mul -> the MatMulInteger's weight
            n.name: by_name[n.metadata_props[CORRECTION_KEY]].inputs[1].name
            for n in self.nodes
            if n.op_type == "Mul" and n.metadata_props.get(CORRECTION_KEY) in by_name and by_name[n.metadata_props[CORRECTION_KEY]].inputs[1] is not None
        }
        self.params = nn.ParameterDict()
        self._param_of: dict[str, str] = {}  # value name -> parameter key
        self._grids: dict[str, tuple] = {}  # parameter key -> (kind, scale, zero, lo, hi, axis)
        self._consts: dict[str, torch.Tensor] = {}
        fake_quantized = {}
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.inputs[0] is not None and node.inputs[0].const_value is not None and node.inputs[0].producer() is None:
                fake_quantized[node.inputs[0].name] = node
            if node.op_type == "MatMulInteger" and node.inputs[1] is not None and node.inputs[1].const_value is not None:
                if matmul_integer_scale(node) is not None:
                    fake_quantized[node.inputs[1].name] = node
        grid_inputs = {id(v) for n in self.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear") for v in n.inputs[1:] if v is not None}
        scale_muls = set()  # zero points of MatMulInteger; BatchNorm statistics: not trained
        for n in self.nodes:
            if n.op_type == "MatMulInteger":
                scale_muls |= {id(v) for v in n.inputs[2:] if v is not None}
            if n.op_type == "BatchNormalization":
                scale_muls |= {id(v) for v in n.inputs[3:5] if v is not None}
        for name, value in graph.initializers.items():
            if value.const_value is None:
                continue
            arr = value.const_value.numpy()
            key = f"p{len(self._param_of)}"
            if name in fake_quantized:
                node = fake_quantized[name]
                if node.op_type == "DequantizeLinear":
                    scale = node.inputs[1].const_value.numpy().astype(np.float32)
                    zero = node.inputs[2].const_value.numpy() if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is not None else np.zeros_like(scale, dtype=arr.dtype)
                    axis = node.attributes.get_int("axis", 1) if scale.size > 1 else 0
                else:
                    scale = matmul_integer_scale(node).astype(np.float32).reshape(-1)
                    zero = node.inputs[3].const_value.numpy() if len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].const_value is not None else np.zeros(1, dtype=arr.dtype)
                    axis = 1 if scale.size > 1 else 0
                lo, hi = _QRANGE[value.const_value.dtype]
                s = _axis_view(torch.from_numpy(scale.copy()), axis, arr.ndim).numpy() if arr.ndim else scale.reshape(())
                z = _axis_view(torch.from_numpy(zero.astype(np.float32).copy()), axis, arr.ndim).numpy() if arr.ndim else zero.astype(np.float32).reshape(())
                self.params[key] = nn.Parameter(torch.from_numpy(np.asarray((arr.astype(np.float32) - z) * s, dtype=np.float32)))  # 0-d too
                self._grids[key] = ("dq" if node.op_type == "DequantizeLinear" else "mmi", torch.from_numpy(scale.copy()), torch.from_numpy(zero.astype(np.float32).copy()), lo, hi, axis)
                self._param_of[name] = key
            elif arr.dtype in (np.float32, np.float16, np.float64) and arr.size > 1 and np.isfinite(arr).all() and id(value) not in grid_inputs and id(value) not in scale_muls:
                self.params[key] = nn.Parameter(torch.from_numpy(arr.astype(np.float32).copy()))
                self._param_of[name] = key
                zeros = arr == 0
                if zeros.any() and (name.endswith(".share_codebook") or (arr.ndim >= 2 and zeros.mean() > 0.3)):
                    mask = torch.from_numpy(~zeros)
                    self.params[key].register_hook(lambda g, mask=mask: g * mask.to(g.dtype))
            else:
                self._consts[name] = torch.from_numpy(np.array(arr))
        for i, (name, t) in enumerate(self._consts.items()):
            self.register_buffer(f"c{i}", t, persistent=False)
        self._const_keys = {name: f"c{i}" for i, name in enumerate(self._consts)}
        #: value names whose tensors the last forward keeps in :attr:`captured` (feature matching)
        self.capture: set[str] = set()
        self.captured: dict[str, torch.Tensor] = {}
        self.values = {v.name for node in self.nodes for v in node.outputs if v is not None} | set(self.input_names)

    # ------------------------------------------------------------------ values
    def _initial(self) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {}
        for name, key in self._const_keys.items():
            env[name] = getattr(self, key)
        for name, key in self._param_of.items():
            env[name] = self.params[key]
        return env

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        env = self._initial()
        feeds = list(args)
        for i, name in enumerate(self.input_names):
            env[name] = kwargs[name] if name in kwargs else feeds[i]
        first = env[self.input_names[0]] if self.input_names else None
        self._rows = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
        for node in self.nodes:
            self._current = node
            ins = [None if v is None else env[v.name] for v in node.inputs]
            outs = self._run(node, ins)
            for v, o in zip(node.outputs, outs):
                if v is not None and v.name:
                    env[v.name] = o
        self.captured = {name: env[name] for name in self.capture if name in env}
        result = tuple(env[n] for n in self.output_names)
        return result[0] if len(result) == 1 else result

    def _run(self, node: ir.Node, ins: list) -> list:
        op = node.op_type
        fn = _OPS.get(op)
        if node.domain not in ("", "ai.onnx") or fn is None:
            raise GraphpressError(f"node '{node.name}': op {node.domain + '::' if node.domain else ''}{op} has no torch form in graphpress.ir_torch; it cannot be trained")
        if op == "DequantizeLinear" and node.inputs[0] is not None and node.inputs[0].name in self._param_of:
            key = self._param_of[node.inputs[0].name]
            _, scale, zero, lo, hi, axis = self._grids[key]
            return [_fake_quant(ins[0], scale.to(ins[0].device), zero.to(ins[0].device), lo, hi, axis)]
        if op == "DynamicQuantizeLinear":
            return _dynamic_quantize(node, ins, {}, self._rows)
        if op == "MatMulInteger" and node.inputs[1] is not None and node.inputs[1].name in self._param_of:
            a = ins[0].float() - (ins[2].float() if len(ins) > 2 and ins[2] is not None else 0.0)
            return [torch.matmul(a, self._integer_weight(node.inputs[1].name))]
        weight = self._corrections.get(node.name) if op == "Mul" else None
        if weight is not None and weight in self._param_of:  # zero points x the trained weight's column sums
            return [ins[0].float() * self._integer_weight(weight).sum(0)]
        outs = fn(node, ins, _attrs(node))
        if node.metadata_props.get(GRID_KEY):  # a quantization grid's range: not differentiated (STE)
            outs = [o.detach() if isinstance(o, torch.Tensor) else o for o in outs]
        return outs

    def _integer_weight(self, name: str) -> torch.Tensor:
        """A fake-quantized weight's integer values minus its zero point, differentiable in the
        parameter (the straight-through estimator)."""
        key = self._param_of[name]
        _, scale, zero, lo, hi, axis = self._grids[key]
        w = self.params[key]
        s, z = _axis_view(scale.to(w.device), axis, w.dim()), _axis_view(zero.to(w.device), axis, w.dim())
        return _clamp_ste(_round_ste(w / s) + z, lo, hi) - z

    def param_names(self) -> list[str]:
        """The graph's initializers that are trained parameters of this module."""
        return list(self._param_of)

    def freeze(self, names: Sequence[str]) -> None:
        """Stop training the parameters of these initializers (their values stay as they are)."""
        for name in names:
            self.params[self._param_of[name]].requires_grad_(False)

    # ------------------------------------------------------------------ write-back
    def write_back(self) -> ir.Model:
        """A copy of the graph with this module's trained values (integers requantized on their
        own grids)."""
        from graphpress.ir.io import clone

        out = clone(self.model)
        inits = out.graph.initializers
        with torch.no_grad():
            for name, key in self._param_of.items():
                value = inits[name]
                p = self.params[key].detach().cpu().float()
                if key in self._grids:
                    _, scale, zero, lo, hi, axis = self._grids[key]
                    s, z = _axis_view(scale, axis, p.dim()), _axis_view(zero, axis, p.dim())
                    arr = torch.clamp(torch.round(p / s) + z, lo, hi).numpy()
                else:
                    arr = p.numpy()
                dtype = value.const_value.dtype.numpy()
                value.const_value = ir.tensor(np.ascontiguousarray(arr.astype(dtype)), name=name)
        nodes = {n.name: n for n in out.graph if n.name}
        for corr in self._corrections:  # column sums of the weights as written
            colsum = nodes[corr].inputs[1]
            colsum.const_value = ir.tensor(column_sums(nodes[nodes[corr].metadata_props[CORRECTION_KEY]]), name=colsum.name)
        return out


# ---------------------------------------------------------------------- ops
def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _ints(x) -> list[int]:
    return [int(v) for v in _t(x).reshape(-1).tolist()]


def _conv(node, ins, a):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nd = w.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise GraphpressError(f"node '{node.name}': Conv auto_pad={a['auto_pad']} has no torch form in graphpress.ir_torch")
    pads = a.get("pads", [0] * 2 * nd)
    strides, dil, group = a.get("strides", [1] * nd), a.get("dilations", [1] * nd), a.get("group", 1)
    if pads[:nd] != pads[nd:]:
        x = _F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
        pads = [0] * 2 * nd
    conv = {1: _F.conv1d, 2: _F.conv2d, 3: _F.conv3d}[nd]
    return [conv(x, w, b, strides, pads[:nd], dil, group)]


def _conv_transpose(node, ins, a):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nd = w.dim() - 2
    pads = a.get("pads", [0] * 2 * nd)
    if "output_shape" in a or pads[:nd] != pads[nd:] or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise GraphpressError(f"node '{node.name}': ConvTranspose with output_shape, auto_pad or asymmetric pads has no torch form in graphpress.ir_torch")
    fn = {1: _F.conv_transpose1d, 2: _F.conv_transpose2d, 3: _F.conv_transpose3d}[nd]
    return [fn(x, w, b, a.get("strides", [1] * nd), pads[:nd], a.get("output_padding", [0] * nd), a.get("group", 1), a.get("dilations", [1] * nd))]


def _pool(kind):
    def run(node, ins, a):
        x = ins[0]
        nd = x.dim() - 2
        k = a["kernel_shape"]
        pads, strides = a.get("pads", [0] * 2 * nd), a.get("strides", [1] * nd)
        ceil = bool(a.get("ceil_mode", 0))
        if pads[:nd] != pads[nd:]:
            x = _F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])], value=-math.inf if kind == "max" else 0.0)
            pads = [0] * 2 * nd
        if kind == "max":
            fn = {1: _F.max_pool1d, 2: _F.max_pool2d, 3: _F.max_pool3d}[nd]
            return [fn(x, k, strides, pads[:nd], a.get("dilations", [1] * nd), ceil)]
        fn = {1: _F.avg_pool1d, 2: _F.avg_pool2d, 3: _F.avg_pool3d}[nd]
        return [fn(x, k, strides, pads[:nd], ceil, bool(a.get("count_include_pad", 0)))]

    return run


def _gemm(node, ins, a):
    x, w = ins[0], ins[1]
    if a.get("transA", 0):
        x = x.transpose(-1, -2)
    if a.get("transB", 0):
        w = w.transpose(-1, -2)
    y = a.get("alpha", 1.0) * (x @ w)
    if len(ins) > 2 and ins[2] is not None:
        y = y + a.get("beta", 1.0) * ins[2]
    return [y]


def _reduce(fn):
    def run(node, ins, a):
        x = ins[0]
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = _ints(ins[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, [int(i) % x.dim() for i in axes], keep)]

    return run


def _reshape(node, ins, a):
    x, shape = ins[0], _ints(ins[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _unsqueeze(node, ins, a):
    axes = a.get("axes") or _ints(ins[1])
    x = ins[0]
    rank = x.dim() + len(axes)
    for ax in sorted(int(i) % rank for i in axes):
        x = x.unsqueeze(ax)
    return [x]


def _squeeze(node, ins, a):
    axes = a.get("axes") or (_ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None)
    x = ins[0]
    if axes is None:
        return [x.squeeze()]
    for ax in sorted((int(i) % x.dim() for i in axes), reverse=True):
        x = x.squeeze(ax)
    return [x]


def _slice(node, ins, a):
    x = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise GraphpressError(f"node '{node.name}': Slice with a negative step has no torch form in graphpress.ir_torch")
        n = x.shape[ax]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[ax % x.dim()] = slice(s, e, st)
    return [x[tuple(index)]]


def _gather(node, ins, a):
    x, idx = ins[0], ins[1].long()
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))]


def _gather_elements(node, ins, a):
    x, idx = ins[0], ins[1].long()
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return [torch.gather(x, axis, idx)]


def _gather_nd(node, ins, a):
    x, idx = ins[0], ins[1].long()
    b = a.get("batch_dims", 0)
    if b:
        raise GraphpressError(f"node '{node.name}': GatherND with batch_dims has no torch form in graphpress.ir_torch")
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    out = x[tuple(flat[:, i] for i in range(k))]
    return [out.reshape((*idx.shape[:-1], *x.shape[k:]))]


def _quantize(node, ins, a):
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
    dtype = node.outputs[0].dtype
    lo, hi = _QRANGE.get(dtype, (0, 255))
    axis = a.get("axis", 1)
    s = _axis_view(scale.float(), axis, x.dim())
    z = _axis_view(zero.float(), axis, x.dim()) if zero is not None else 0.0
    return [_clamp_ste(_round_ste(x / s) + z, lo, hi)]


def _dequantize(node, ins, a):
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
    axis = a.get("axis", 1)
    s = _axis_view(scale.float(), axis, x.dim())
    z = _axis_view(zero.float(), axis, x.dim()) if zero is not None else 0.0
    return [(x.float() - z) * s]


def _dynamic_quantize(node, ins, a, rows: int = 1):
    """``DynamicQuantizeLinear`` with a straight-through gradient. Called on a batch of ``rows``
    rows (the inputs' first axis), a tensor with that leading axis gets each row's own range
    (what the graph computes on that row alone: training in batches must not quantize a row on
    its neighbours' range)."""
    x = ins[0]
    if rows > 1 and x.dim() >= 2 and x.shape[0] == rows:
        dims = tuple(range(1, x.dim()))
        lo, hi = torch.clamp(x.detach().amin(dim=dims, keepdim=True), max=0.0), torch.clamp(x.detach().amax(dim=dims, keepdim=True), min=0.0)
    else:
        lo, hi = torch.clamp(x.detach().min(), max=0.0), torch.clamp(x.detach().max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    return [_clamp_ste(_round_ste(x / scale) + zero, 0, 255), scale, zero]


def _cast(node, ins, a):
    to = ir.DataType(a["to"])
    x = ins[0]
    dtype = _DTYPES.get(to)
    if dtype is None:
        raise GraphpressError(f"node '{node.name}': Cast to {to.name} has no torch form in graphpress.ir_torch")
    if x.is_floating_point() and not dtype.is_floating_point and dtype != torch.bool:
        # integers that only an integer kernel reads (a per-token quantized activation) stay
        # float, so gradients pass; so do the ones a quantizer or an integer kernel wrote
        producer = node.inputs[0].producer()
        readers = [u.op_type for u, _ in node.outputs[0].uses()]
        if (producer is not None and producer.op_type in ("MatMulInteger", "QuantizeLinear")) or (readers and all(r in ("MatMulInteger", "ConvInteger") for r in readers)):
            return [x.to(torch.float32)]
        return [torch.trunc(x).to(dtype)]
    return [x.to(dtype)]


def _layer_norm(node, ins, a):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    return [_F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))]


def _batch_norm(node, ins, a):
    x, scale, bias, mean, var = ins[:5]
    return [_F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))]


def _softmax(fn):
    def run(node, ins, a):
        return [fn(ins[0], dim=a.get("axis", -1))]

    return run


def _clip(node, ins, a):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
    if lo is not None:
        x = torch.maximum(x, _t(lo).to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, _t(hi).to(x.dtype))
    return [x]


def _expand(node, ins, a):
    x, shape = ins[0], _ints(ins[1])
    rank = max(x.dim(), len(shape))
    shape = [1] * (rank - len(shape)) + shape
    have = [1] * (rank - x.dim()) + list(x.shape)
    return [x.reshape(have).expand([max(s, h) if s == 1 or h == 1 else s for s, h in zip(shape, have)])]


def _concat(node, ins, a):
    ts = [t for t in ins if t is not None]  # ONNX: one dtype; a quantized value here is a float of integers
    return [torch.cat([t.to(ts[0].dtype) for t in ts], dim=a.get("axis", 0))]


def _constant(node, ins, a):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in a:
            return [torch.as_tensor(np.array(a[key]))]
    raise GraphpressError(f"node '{node.name}': a Constant without a value this module reads")


def _constant_of_shape(node, ins, a):
    value = a.get("value")
    fill = torch.as_tensor(np.array(value)).reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return [torch.full(_ints(ins[0]), fill.item(), dtype=fill.dtype)]


def _where(node, ins, a):
    return [torch.where(ins[0].bool(), ins[1], ins[2])]


def _binary(fn):
    def run(node, ins, a):
        x, y = ins[0], ins[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return [fn(_t(x), _t(y))]
        return [fn(x, y)]

    return run


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _bitshift(node, ins, a):
    x, y = ins[0], ins[1]
    return [x >> y if a.get("direction") in ("RIGHT", b"RIGHT") else x << y]


def _split(node, ins, a):
    x = ins[0]
    axis = a.get("axis", 0)
    sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("split")
    if sizes is None:
        n = len(node.outputs)
        size = -(-x.shape[axis] // n)
        sizes = [size] * (n - 1) + [x.shape[axis] - size * (n - 1)]
    return list(torch.split(x, sizes, dim=axis))


def _range(node, ins, a):
    start, limit, delta = (_t(v).item() for v in ins[:3])
    return [torch.arange(start, limit, delta, dtype=ins[0].dtype)]


def _pad(node, ins, a):
    x = ins[0]
    pads = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("pads")
    value = float(_t(ins[2]).item()) if len(ins) > 2 and ins[2] is not None else 0.0
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    nd = x.dim()
    spec = [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])]
    return [_F.pad(x, spec, mode=mode, value=value) if mode == "constant" else _F.pad(x, spec, mode=mode)]


def _gelu(node, ins, a):
    approx = a.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [_F.gelu(ins[0], approximate=approx)]


def _matmul(node, ins, a):
    return [torch.matmul(ins[0], ins[1])]


def _flatten(node, ins, a):
    x = ins[0]
    axis = a.get("axis", 1) % (x.dim() or 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _transpose(node, ins, a):
    perm = a.get("perm") or list(reversed(range(ins[0].dim())))
    return [ins[0].permute(*perm)]


def _resize(node, ins, a):
    x = ins[0]
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    mode, coord, nearest = (v.decode() if isinstance(v, bytes) else v for v in (mode, coord, nearest))
    sizes = ins[3] if len(ins) > 3 and ins[3] is not None and ins[3].numel() else None
    scales = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].numel() else None
    if sizes is not None:
        size = _ints(sizes)[2:]
        kw = {"size": size}
    elif scales is not None:
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise GraphpressError(f"node '{node.name}': Resize of the batch or channel axis has no torch form in graphpress.ir_torch")
        kw = {"size": [int(math.floor(d * f)) for d, f in zip(x.shape[2:], factors[2:])]}
    else:
        raise GraphpressError(f"node '{node.name}': Resize without scales or sizes")
    nd = x.dim() - 2
    if mode == "nearest" and coord == "asymmetric" and nearest == "floor":
        return [_F.interpolate(x, mode="nearest", **kw)]
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return [_F.interpolate(x, mode={1: "linear", 2: "bilinear", 3: "trilinear"}[nd], align_corners=coord == "align_corners", **kw)]
    if mode == "nearest" and coord in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_ceil", "round_prefer_floor"):
        return [_F.interpolate(x, mode="nearest-exact", **kw)]
    raise GraphpressError(f"node '{node.name}': Resize mode={mode} coordinate_transformation_mode={coord} nearest_mode={nearest} has no torch form in graphpress.ir_torch")


def _one(fn):
    return lambda node, ins, a: [fn(ins[0])]


_OPS = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _one(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _one(lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
    "Relu": _one(torch.relu), "Sigmoid": _one(torch.sigmoid), "Tanh": _one(torch.tanh), "Erf": _one(torch.erf), "Exp": _one(torch.exp),
    "Log": _one(torch.log), "Sqrt": _one(torch.sqrt), "Neg": _one(torch.neg), "Abs": _one(torch.abs), "Reciprocal": _one(torch.reciprocal),
    "Floor": _one(torch.floor), "Ceil": _one(torch.ceil), "Not": _one(torch.logical_not), "Identity": _one(lambda x: x),
    "Sin": _one(torch.sin), "Cos": _one(torch.cos), "Gelu": _gelu, "Softplus": _one(_F.softplus),
    "HardSwish": _one(_F.hardswish), "HardSigmoid": lambda n, i, a: [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)],
    "LeakyRelu": lambda n, i, a: [_F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div), "Pow": _binary(torch.pow),
    "Max": lambda n, i, a: [torch.stack(torch.broadcast_tensors(*i)).amax(0)], "Min": lambda n, i, a: [torch.stack(torch.broadcast_tensors(*i)).amin(0)],
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt), "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor), "Where": _where,
    "BitwiseAnd": _binary(torch.bitwise_and), "BitwiseOr": _binary(torch.bitwise_or), "BitShift": _bitshift,
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax), "Clip": _clip,
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": _concat, "Slice": _slice, "Split": _split, "Gather": _gather, "GatherElements": _gather_elements, "GatherND": _gather_nd,
    "Expand": _expand, "Shape": lambda n, i, a: [torch.tensor(list(i[0].shape)[a.get("start", 0) : a.get("end")], dtype=torch.int64)],
    "Size": lambda n, i, a: [torch.tensor(i[0].numel(), dtype=torch.int64)],
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range, "Pad": _pad, "Resize": _resize,
    "Round": lambda n, i, a: [_round_ste(i[0])],  # the straight-through estimator (quantization-aware training)
    "Cast": _cast, "CastLike": lambda n, i, a: [i[0].to(i[1].dtype)],
    "ReduceMean": _reduce(lambda x, ax, k: x.mean(dim=ax, keepdim=k)), "ReduceSum": _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)),
    "ReduceMax": _reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k)), "ReduceMin": _reduce(lambda x, ax, k: x.amin(dim=ax, keepdim=k)),
    "ReduceL2": _reduce(lambda x, ax, k: torch.sqrt((x * x).sum(dim=ax, keepdim=k))),
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "DynamicQuantizeLinear": _dynamic_quantize,
    "MatMulInteger": lambda n, i, a: [torch.matmul(i[0].float() - (i[2].float() if len(i) > 2 and i[2] is not None else 0.0),
                                                   i[1].float() - (i[3].float() if len(i) > 3 and i[3] is not None else 0.0))],
}  # fmt: skip


def _inlined(model: ir.Model) -> ir.Model:
    """``model`` with its model-local functions inlined (a fused attention is its body again)."""
    if not model.functions:
        return model
    import onnx.inliner

    from graphpress.ir.io import _materialize, to_proto

    return ir.serde.deserialize_model(onnx.inliner.inline_local_functions(_materialize(to_proto(model), model)))


def to_torch(
    model: Any,
    *,
    samples: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    check: bool = True,
) -> GraphModule:
    """``model`` (an IR model or a path) as a trainable :class:`GraphModule`, checked against
    ONNX Runtime on ``samples`` (default: 2 generated inputs) at the fp32 tolerance of the
    model's family; ``module.graphpress_check`` has the largest difference.

    Raises:
        GraphpressError: an op without a torch form (named), or a module that does not compute
            what ONNX Runtime computes.
    """
    import os

    from graphpress.ir import load
    from graphpress.ir.io import _materialize, to_proto
    from graphpress.ir.numeric import as_samples, make_inputs, run_samples

    model = load(model) if isinstance(model, (str, os.PathLike)) else model
    if not isinstance(model, ir.Model):
        raise GraphpressError(f"to_torch: give an IR model or an .onnx path, not {type(model).__name__}")
    graph = _inlined(ir.serde.deserialize_model(_materialize(to_proto(model), model)))  # a copy, weights in memory
    for node in graph.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
            raise GraphpressError(f"node '{node.name}': op {node.domain + '::' if node.domain else ''}{node.op_type} has no torch form in graphpress.ir_torch; it cannot be trained")
    module = GraphModule(graph)
    module.source = model
    if check:
        rows = as_samples(samples) if samples is not None else [make_inputs(model, seed=i) for i in range(2)]
        want = run_samples(model, rows, where="the model")
        worst = 0.0
        quantized = any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in graph.graph)
        for row_i, feeds in enumerate(rows):
            try:
                with torch.no_grad():
                    got = module(*(torch.from_numpy(np.asarray(feeds[n])) for n in module.input_names))
            except GraphpressError:
                raise
            except Exception as e:  # an op's torch form that does not fit this node
                node = module._current
                raise GraphpressError(f"node '{node.name}' ({node.op_type}): its torch form failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); report it with the model") from e
            got = got if isinstance(got, tuple) else (got,)
            for name, g in zip(module.output_names, got):
                w = np.asarray(want[name]) if len(rows) == 1 else np.asarray(want[name])[row_i]
                g = g.detach().float().numpy().reshape(w.shape)
                scale = max(float(np.abs(w).max()), 1.0)
                diff = float(np.abs(g - w.astype(np.float32)).max())
                worst = max(worst, diff / scale)
                if diff > 1e-3 * scale and not (quantized and _close_quantized(g, w)):
                    raise GraphpressError(f"to_torch: output '{name}' differs from ONNX Runtime by {diff:.3g} (largest {scale:.3g}); report it with the model")
        module.graphpress_check = {"max_relative_diff": worst}
    return module


def _close_quantized(got: np.ndarray, want: np.ndarray) -> bool:
    """Quantized graphs round a value to the neighbouring step where torch's float math differs
    from ONNX Runtime's in the last bit (a GELU one ulp apart at a rounding boundary); with
    dynamic quantization the flipped step moves the next tensor's range and so every rounding
    in it: two such runs agree as two quantizations of the same float model do (MiniLM: output
    cosine 0.996 on some sentences, bit for bit on others). Agree on the whole: cosine 0.99."""
    got, want = got.reshape(-1).astype(np.float64), want.reshape(-1).astype(np.float64)
    cos = got @ want / max(np.linalg.norm(got) * np.linalg.norm(want), 1e-30)
    return bool(cos >= 0.99)
