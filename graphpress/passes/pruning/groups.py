"""Channel dependency analysis: which channels of which tensors must be removed together.

Every prunable *source* (the output channels of a Conv, ConvTranspose, Gemm or a MatMul with a
constant weight) gets one fresh integer id per channel. The ids then flow forward through the
graph as an array per (value, axis): elementwise ops pass them on, residual Add/Mul/Sub unify
the ids of their operands (union-find: channel ``i`` of every branch is one channel), Concat
concatenates them (so a consumer of a Concat sees each input's ids at its offset), Flatten and
Reshape repeat them over the spatial block, Transpose permutes them, a depthwise Conv passes
them through. Every initializer touched along a tracked axis becomes a *parameter slice*
(initializer, axis, ids): the producer's weight rows, the consumer's weight columns (a Conv's
input axis, a Gemm/MatMul's K axis), BatchNorm/InstanceNorm parameters, per-channel constants.

A channel is one union-find class of ids; a *group* is the set of channels that came from the
sources tied together by residual connections. Anything the analysis cannot rewrite exactly
*freezes* the ids it sees, with the reason: reductions and normalizations over the axis
(Softmax, LayerNormalization, ReduceMean over channels), the contracted axis of an
activation x activation MatMul, grouped (non-depthwise) convolutions, Reshapes that split a
tracked axis, shared initializers sliced differently, unknown ops, and graph outputs (output
layers are protected). A group with a frozen channel is refused as a whole, with its reasons.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import onnx_ir as ir

__all__ = ["DependencyGraph", "Group", "ParamSlice"]

ELEMENTWISE = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Elu", "Selu",
        "Softplus", "Softsign", "Mish", "Swish", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Identity",
        "Dropout", "Cast", "Clip", "Floor", "Ceil", "Round", "Sin", "Cos", "Not", "ThresholdedRelu", "Celu",
    }
)  # fmt: skip
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Where", "Equal", "Greater", "Less", "And", "Or"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Upsample", "Resize"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp"})


@dataclasses.dataclass
class ParamSlice:
    """Initializer ``name`` is indexed along ``axis`` by channel ``ids`` (one id per element)."""

    name: str
    axis: int
    ids: np.ndarray
    role: str  # "producer" (output channels), "consumer" (input channels), "channelwise"


@dataclasses.dataclass
class Group:
    """Channels that are pruned together, with every parameter slice they touch."""

    index: int
    channels: list[int]  # root ids
    sources: list[str]  # names of the nodes whose output channels these are
    params: list[ParamSlice]
    refused: list[str]

    @property
    def size(self) -> int:
        return len(self.channels)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _dims(value: ir.Value | None) -> list[int | None] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _reshape_runs(din: list[int], dout: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair minimal runs of input and output axes with equal element counts (row-major reshape)."""
    pairs = []
    i = j = 0
    while i < len(din) or j < len(dout):
        ins, outs = [], []
        pi = pj = 1
        if i < len(din):
            pi *= din[i]
            ins.append(i)
            i += 1
        if j < len(dout):
            pj *= dout[j]
            outs.append(j)
            j += 1
        while pi != pj:
            if pi < pj and i < len(din):
                pi *= din[i]
                ins.append(i)
                i += 1
            elif pj < pi and j < len(dout):
                pj *= dout[j]
                outs.append(j)
                j += 1
            else:
                return None
        pairs.append((ins, outs))
    return pairs


class DependencyGraph:
    """The channel groups of a model (shapes must be inferred; see :func:`graphpress.ir.infer_shapes`).

    Args:
        model: the model (not changed).
        protect: node names whose output channels must not be pruned (besides graph outputs).
    """

    def __init__(self, model: ir.Model, protect: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.uf = _UnionFind()
        self.ids: dict[ir.Value, dict[int, np.ndarray]] = defaultdict(dict)
        self.params: list[ParamSlice] = []
        self.frozen: dict[int, str] = {}
        self.block_source: list[str] = []  # per fresh block: the source node name
        self.block_of: list[int] = []  # per id: its block
        self.reshape_fixups: list[tuple[ir.Node, int, np.ndarray, int]] = []  # (reshape, out axis, ids, repeat)
        self.group_fixups: list[tuple[ir.Node, np.ndarray]] = []  # depthwise convs: group = kept channels
        self.protect = protect
        self.source_values: list[tuple[ir.Value, int, np.ndarray]] = []  # producer outputs: (value, axis, ids)
        graph = model.graph
        for node in graph:
            self._visit(node)
        for out in graph.outputs:
            for ids in self.ids.get(out, {}).values():
                self._freeze(ids, f"reaches graph output '{out.name}' (output layers are protected)")
        self._check_shared_initializers()
        self.groups = self._groups()

    def _check_shared_initializers(self) -> None:
        by_key: dict[tuple[str, int], list[ParamSlice]] = defaultdict(list)
        for p in self.params:
            by_key[(p.name, p.axis)].append(p)
        for (name, _), slices in by_key.items():
            roots = [np.array([self.uf.find(int(i)) for i in p.ids]) for p in slices]
            if any(not np.array_equal(roots[0], r) for r in roots[1:]):
                for p in slices:
                    self._freeze(p.ids, f"initializer '{name}' is shared by layers whose channels differ")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def label(node: ir.Node) -> str:
        """A readable name of a layer: its weight's name without ``.weight`` (torch parameter names survive export)."""
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is not None and w.is_initializer() and w.name and "." in w.name:
            return w.name.removesuffix(".weight")
        # torch's exporter transposes Linear weights (the folded result gets a generated name);
        # the bias Add that follows keeps the parameter name
        for use in node.outputs[0].uses() if node.outputs else ():
            if use.node.op_type == "Add":
                for v in use.node.inputs:
                    if v is not None and v.is_initializer() and v.name and v.name.endswith(".bias"):
                        return v.name.removesuffix(".bias")
        return node.name or (w.name if w is not None and w.name else node.op_type)

    def _fresh(self, n: int, source: str) -> np.ndarray:
        ids = self.uf.fresh(n)
        self.block_source.append(source)
        self.block_of.extend([len(self.block_source) - 1] * n)
        return ids

    def _freeze(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for i in ids.tolist():
            self.frozen.setdefault(i, reason)

    def _freeze_all(self, value: ir.Value | None, reason: str) -> None:
        if value is None:
            return
        for ids in self.ids.get(value, {}).values():
            self._freeze(ids, reason)

    def _param(self, value: ir.Value | None, axis: int, ids: np.ndarray, role: str) -> bool:
        """Record a parameter slice if ``value`` is an initializer; False (nothing recorded) otherwise."""
        if value is None or value.const_value is None or not value.is_initializer():
            return False
        shape = value.const_value.shape
        axis = axis % len(shape) if len(shape) else 0
        if len(shape) == 0 or shape[axis] != len(ids):
            return False
        self.params.append(ParamSlice(value.name, axis, ids, role))
        return True

    def _unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.uf.union(x, y)

    def _set(self, value: ir.Value, axis: int, ids: np.ndarray) -> None:
        existing = self.ids[value].get(axis)
        if existing is not None:
            self._unify(existing, ids)
        else:
            self.ids[value][axis] = ids

    def _pass_all(self, src: ir.Value, dst: ir.Value) -> None:
        for axis, ids in self.ids.get(src, {}).items():
            self._set(dst, axis, ids)

    def _unknown(self, node: ir.Node, reason: str | None = None) -> None:
        why = reason or f"consumed by {node.op_type} '{node.name}', which pruning does not rewrite"
        for value in node.inputs:
            self._freeze_all(value, why)

    # ------------------------------------------------------------------ ops

    def _visit(self, node: ir.Node) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return self._unknown(node)
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            return handler(node)
        if op in ELEMENTWISE:
            return self._elementwise(node)
        if op in BINARY:
            return self._binary(node)
        if op in POOLS:
            return self._pool(node)
        if op in REDUCE:
            return self._reduce(node)
        if op in ("Shape", "Size"):
            return self._unknown(node, f"its shape is read by {op} '{node.name}' (shape arithmetic)")
        return self._unknown(node)

    def _elementwise(self, node: ir.Node) -> None:
        x = node.inputs[0]
        for other in node.inputs[1:]:  # Clip min/max, PRelu slope
            if other is not None and other.const_value is not None:
                shape = other.const_value.shape
                if len(shape) and max(shape) > 1:
                    for axis, ids in self.ids.get(x, {}).items():
                        rank = len(x.shape) if x.shape is not None else 0
                        a = axis - (rank - len(shape))
                        if 0 <= a < len(shape) and shape[a] == len(ids):
                            self._param(other, a, ids, "channelwise")
        for out in node.outputs[:1]:
            self._pass_all(x, out)

    def _binary(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_dims = _dims(out)
        if out_dims is None:
            return self._unknown(node, f"{node.op_type} '{node.name}' has no inferred shape")
        rank = len(out_dims)
        per_axis: dict[int, list[np.ndarray]] = defaultdict(list)
        for value in node.inputs:
            if value is None:
                continue
            vdims = _dims(value)
            if vdims is None:
                return self._unknown(node, f"{node.op_type} '{node.name}' input has no inferred shape")
            offset = rank - len(vdims)
            for axis, ids in self.ids.get(value, {}).items():
                per_axis[axis + offset].append(ids)
        for axis, lists in per_axis.items():
            merged = lists[0]
            for other in lists[1:]:
                self._unify(merged, other)
            self._set(out, axis, merged)
            for value in node.inputs:
                if value is None:
                    continue
                vdims = _dims(value)
                a = axis - (rank - len(vdims))
                if a < 0 or vdims[a] == 1 or axis in {x + rank - len(vdims) for x in self.ids.get(value, {})}:
                    continue
                # a full-size operand on a tracked axis that is not itself tracked
                if not self._param(value, a, merged, "channelwise"):
                    self._freeze(merged, f"{node.op_type} '{node.name}' combines the channels with '{value.name}', which is not prunable")

    def _pool(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if 1 in self.ids.get(x, {}):
            self._set(node.outputs[0], 1, self.ids[x][1])
        for axis, ids in self.ids.get(x, {}).items():
            if axis != 1:
                self._freeze(ids, f"{node.op_type} '{node.name}' pools over a tracked axis")

    def _reduce(self, node: ir.Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        if axes_value is not None and axes_value.const_value is not None:
            axes = [int(a) for a in axes_value.const_value.numpy().reshape(-1)]
        else:
            axes = list(node.attributes.get_ints("axes", []))
        if rank is None or (not axes and axes_value is not None):
            return self._unknown(node)
        axes = sorted(a % rank for a in axes) if axes else list(range(rank))
        keep = node.attributes.get_int("keepdims", 1)
        for axis, ids in self.ids.get(x, {}).items():
            if axis in axes:
                self._freeze(ids, f"{node.op_type} '{node.name}' reduces over the channels")
                continue
            new_axis = axis if keep else axis - sum(a < axis for a in axes)
            self._set(node.outputs[0], new_axis, ids)

    def _conv_input(self, node: ir.Node, w: ir.Value, axis: int) -> None:
        ids = self.ids.get(node.inputs[0], {}).get(1)
        if ids is not None and not self._param(w, axis, ids, "consumer"):
            self._freeze(ids, f"{node.op_type} '{node.name}' weight is not an initializer")
        for other, oids in self.ids.get(node.inputs[0], {}).items():
            if other != 1:
                self._freeze(oids, f"{node.op_type} '{node.name}' convolves over a tracked axis")

    def _op_Conv(self, node: ir.Node, transpose: bool = False) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if w is None or w.const_value is None:
            return self._unknown(node, f"{node.op_type} '{node.name}' weight is not constant")
        shape = w.const_value.shape
        group = node.attributes.get_int("group", 1)
        c_in = _dims(x)[1] if _dims(x) else None
        out_channels = shape[1] * group if transpose else shape[0]
        depthwise = group > 1 and c_in == group and out_channels == group and not transpose
        if depthwise:
            ids = self.ids.get(x, {}).get(1)
            if ids is None:
                ids = self._fresh(out_channels, node.name)
                self._freeze(ids, f"depthwise {node.op_type} '{node.name}' input channels are not prunable")
            self._param(w, 0, ids, "channelwise")
            self._param(b, 0, ids, "channelwise")
            self.group_fixups.append((node, ids))
            self._set(node.outputs[0], 1, ids)
            return None
        if group > 1:
            self._freeze_all(x, f"grouped {node.op_type} '{node.name}' (group={group}) would need block-wise pruning")
            ids = self._fresh(out_channels, node.name)
            self._freeze(ids, f"grouped {node.op_type} '{node.name}' (group={group}) would need block-wise pruning")
            self._set(node.outputs[0], 1, ids)
            return None
        self._conv_input(node, w, 0 if transpose else 1)
        ids = self._fresh(out_channels, self.label(node))
        self._param(w, 1 if transpose else 0, ids, "producer")
        self._param(b, 0, ids, "channelwise")
        self.source_values.append((node.outputs[0], 1, ids))
        if node.name in self.protect or self.label(node) in self.protect:
            self._freeze(ids, f"'{node.name}' is protected")
        self._set(node.outputs[0], 1, ids)
        return None

    def _op_ConvTranspose(self, node: ir.Node) -> None:
        self._op_Conv(node, transpose=True)

    def _linear(self, node: ir.Node, x: ir.Value, w: ir.Value, k_axis: int, n_axis: int, bias: ir.Value | None) -> None:
        xdims = _dims(x)
        if xdims is None:
            return self._unknown(node)
        rank = len(xdims)
        ids_in = self.ids.get(x, {})
        if rank - 1 in ids_in and not self._param(w, k_axis, ids_in[rank - 1], "consumer"):
            self._freeze(ids_in[rank - 1], f"{node.op_type} '{node.name}' weight is not an initializer")
        for axis, ids in ids_in.items():
            if axis != rank - 1:
                self._set(node.outputs[0], axis, ids)
        n = w.const_value.shape[n_axis]
        ids = self._fresh(n, self.label(node))
        self._param(w, n_axis, ids, "producer")
        self.source_values.append((node.outputs[0], rank - 1, ids))
        if bias is not None:
            bshape = bias.const_value.shape if bias.const_value is not None else None
            if bshape is not None and len(bshape) and bshape[-1] == n:
                self._param(bias, len(bshape) - 1, ids, "channelwise")
            elif bshape is None or (len(bshape) and max(bshape) > 1):
                self._freeze(ids, f"{node.op_type} '{node.name}' bias is not a per-output constant")
        if node.name in self.protect or self.label(node) in self.protect:
            self._freeze(ids, f"'{node.name}' is protected")
        self._set(node.outputs[0], rank - 1, ids)
        return None

    def _op_Gemm(self, node: ir.Node) -> None:
        a, w = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if node.attributes.get_int("transA", 0) or w is None or w.const_value is None:
            return self._unknown(node, f"Gemm '{node.name}' has transA or a non-constant B")
        trans_b = node.attributes.get_int("transB", 0)
        return self._linear(node, a, w, 1 if trans_b else 0, 0 if trans_b else 1, c)

    def _op_MatMul(self, node: ir.Node) -> None:
        a, b = node.inputs
        if b.const_value is not None and len(b.const_value.shape) == 2:
            return self._linear(node, a, b, 0, 1, None)
        adims, bdims = _dims(a), _dims(b)
        if adims is None or bdims is None or len(adims) < 2 or len(bdims) < 2:
            return self._unknown(node)
        out = node.outputs[0]
        rank = max(len(adims), len(bdims))
        ida, idb = self.ids.get(a, {}), self.ids.get(b, {})
        self._freeze(ida.get(len(adims) - 1), f"contracted by MatMul '{node.name}'")
        self._freeze(idb.get(len(bdims) - 2), f"contracted by MatMul '{node.name}'")
        if len(adims) - 2 in ida:
            self._set(out, rank - 2, ida[len(adims) - 2])
        if len(bdims) - 1 in idb:
            self._set(out, rank - 1, idb[len(bdims) - 1])
        for src, dims in ((ida, adims), (idb, bdims)):
            for axis, ids in src.items():
                if axis < len(dims) - 2:
                    self._set(out, axis + rank - len(dims), ids)
        return None

    def _norm(self, node: ir.Node, params: list[ir.Value | None]) -> None:
        x = node.inputs[0]
        ids = self.ids.get(x, {})
        for axis, a_ids in ids.items():
            if axis != 1:
                self._freeze(a_ids, f"{node.op_type} '{node.name}' normalizes over a tracked axis")
                continue
            for k, p in enumerate(params):
                if p is not None and not self._param(p, 0, a_ids, "scale" if k == 0 else "channelwise"):
                    self._freeze(a_ids, f"{node.op_type} '{node.name}' parameters are not initializers")
            self._set(node.outputs[0], 1, a_ids)

    def _op_BatchNormalization(self, node: ir.Node) -> None:
        if len(node.outputs) > 1 and any(o is not None and o.uses() for o in node.outputs[1:]):
            return self._unknown(node, f"BatchNormalization '{node.name}' is in training mode")
        self._norm(node, list(node.inputs[1:5]))
        return None

    def _op_InstanceNormalization(self, node: ir.Node) -> None:
        self._norm(node, list(node.inputs[1:3]))

    def _op_LayerNormalization(self, node: ir.Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else 0
        axis = node.attributes.get_int("axis", -1) % max(rank, 1)
        for a, ids in self.ids.get(x, {}).items():
            if a >= axis:
                self._freeze(ids, f"LayerNormalization '{node.name}' normalizes over these channels")
            else:
                self._set(node.outputs[0], a, ids)

    def _softmax(self, node: ir.Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else 0
        axis = node.attributes.get_int("axis", -1) % max(rank, 1)
        for a, ids in self.ids.get(x, {}).items():
            if a == axis:
                self._freeze(ids, f"{node.op_type} '{node.name}' normalizes over these channels")
            else:
                self._set(node.outputs[0], a, ids)

    _op_Softmax = _op_LogSoftmax = _softmax

    def _op_Concat(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_dims = _dims(out)
        if out_dims is None:
            return self._unknown(node)
        axis = node.attributes.get_int("axis") % len(out_dims)
        pieces = []
        for value in node.inputs:
            vdims = _dims(value)
            ids = self.ids.get(value, {}).get(axis)
            if ids is None:
                if vdims is None or vdims[axis] is None:
                    return self._unknown(node)
                ids = self._fresh(vdims[axis], node.name)
                self._freeze(ids, f"input '{value.name}' of Concat '{node.name}' has no prunable channels")
            pieces.append(ids)
            for a, other in self.ids.get(value, {}).items():
                if a != axis:
                    self._set(out, a, other)
        self._set(out, axis, np.concatenate(pieces))
        return None

    def _op_Transpose(self, node: ir.Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else 0
        perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
        for out_axis, in_axis in enumerate(perm):
            ids = self.ids.get(x, {}).get(in_axis)
            if ids is not None:
                self._set(node.outputs[0], out_axis, ids)

    def _op_Flatten(self, node: ir.Node) -> None:
        x = node.inputs[0]
        dims = _dims(x)
        if dims is None:
            return self._unknown(node)
        axis = node.attributes.get_int("axis", 1) % max(len(dims), 1)
        self._collapse(node, dims, [(0, axis), (axis, len(dims))])
        return None

    def _op_Reshape(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        din, dout = _dims(x), _dims(out)
        src = self.ids.get(x, {})
        if not src:
            return None
        if din is None or dout is None or None in din or None in dout:
            return self._unknown(node, f"Reshape '{node.name}' has dynamic shapes")
        pairs = _reshape_runs(din, dout)
        if pairs is None:
            return self._unknown(node, f"Reshape '{node.name}' reorders elements across tracked axes")
        for ins, outs in pairs:
            tracked = [a for a in ins if a in src]
            if not tracked:
                continue
            big_out = [k for k in outs if dout[k] != 1]
            if len(ins) == 1 and len(big_out) <= 1:
                if big_out:
                    self._set(out, big_out[0], src[ins[0]])
                    self.reshape_fixups.append((node, big_out[0], src[ins[0]], 1))
            elif len(ins) == 1:
                # one tracked axis split into blocks (e.g. hidden -> heads x head_dim): a block is one
                # channel, pruned whole (head pruning); the inner axes are not tracked
                ids, k = src[ins[0]], big_out[0]
                inner = len(ids) // dout[k]
                for h in range(dout[k]):
                    block = ids[h * inner : (h + 1) * inner]
                    for other in block[1:].tolist():
                        self.uf.union(int(block[0]), other)
                reps = ids[::inner]
                self._set(out, k, reps)
                self.reshape_fixups.append((node, k, reps, 1))
            elif len(big_out) <= 1 and big_out:
                self._collapse_run(node, din, ins, big_out[0], src)
            else:
                for a in tracked:
                    self._freeze(src[a], f"Reshape '{node.name}' regroups several axes with a tracked one")
        return None

    def _collapse(self, node: ir.Node, dims: list[int | None], runs: list[tuple[int, int]]) -> None:
        """Output axis ``k`` is the row-major merge of input axes ``runs[k]``."""
        src = self.ids.get(node.inputs[0], {})
        for k, (start, stop) in enumerate(runs):
            self._collapse_run(node, dims, range(start, stop), k, src)

    def _collapse_run(self, node: ir.Node, dims: list[int | None], ins: range, k: int, src: dict[int, np.ndarray]) -> None:
        tracked = [a for a in ins if a in src]
        if not tracked:
            return
        if len(tracked) > 1 or None in [dims[a] for a in ins]:
            for a in tracked:
                self._freeze(src[a], f"{node.op_type} '{node.name}' merges several tracked axes")
            return
        a = tracked[0]
        inner = int(np.prod([dims[b] for b in ins if b > a], dtype=np.int64))
        outer = int(np.prod([dims[b] for b in ins if b < a], dtype=np.int64))
        ids = np.tile(np.repeat(src[a], inner), outer)
        self._set(node.outputs[0], k, ids)
        if node.op_type == "Reshape":
            self.reshape_fixups.append((node, k, src[a], inner * outer))

    # ------------------------------------------------------------------ groups

    def _groups(self) -> list[Group]:
        uf = self.uf
        blocks = _UnionFind()
        blocks.fresh(len(self.block_source))
        for i in range(len(uf.parent)):
            blocks.union(self.block_of[i], self.block_of[uf.find(i)])
        by_block: dict[int, set[int]] = defaultdict(set)
        for i in range(len(uf.parent)):
            by_block[blocks.find(self.block_of[i])].add(uf.find(i))
        reasons: dict[int, list[str]] = defaultdict(list)
        for i, why in self.frozen.items():
            root = blocks.find(self.block_of[i])
            if why not in reasons[root]:
                reasons[root].append(why)
        sources: dict[int, list[str]] = defaultdict(list)
        for b, name in enumerate(self.block_source):
            sources[blocks.find(b)].append(name)
        params_by_block: dict[int, list[ParamSlice]] = defaultdict(list)
        for p in self.params:
            for root in {blocks.find(self.block_of[int(i)]) for i in p.ids.tolist()}:
                params_by_block[root].append(p)
        groups = []
        for index, root in enumerate(sorted(by_block)):
            groups.append(
                Group(
                    index=index,
                    channels=sorted(by_block[root]),
                    sources=sorted(set(sources[root])),
                    params=params_by_block[root],
                    refused=reasons[root],
                )
            )
        return groups
