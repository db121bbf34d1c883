"""Unroll ``LSTM``, ``GRU`` and ``RNN`` over a static sequence length into the ops of each step,
and ``Scan``/``Loop`` with a static number of iterations into copies of their body.

TVM's ONNX importer has no recurrent ops. With the sequence length known (the backend binds
every input shape before lowering), each direction of a recurrent node becomes, per ONNX's
definitions (gate order ``iofc`` for LSTM, ``zrh`` for GRU):

* one ``MatMul`` of the whole input sequence with ``W^T`` plus both biases (``Wb + Rb``;
  GRU's ``Rbh`` stays inside the step when ``linear_before_reset``),
* per time step: ``Gather`` the step's row, ``+ H_{t-1} R^T``, ``Split`` into the gates, the
  activations (``activations``/``activation_alpha``/``activation_beta``, default
  ``Sigmoid, Tanh, Tanh``), ``clip``, LSTM peepholes ``P`` and ``input_forget``,
* ``Y`` (every step's ``H``), ``Y_h`` (and ``Y_c``) assembled as the node wrote them, for
  ``forward``, ``reverse`` and ``bidirectional`` and both ``layout`` values.

``Scan`` (opset 9 on) with a static scan length: each iteration's slices are ``Gather``-ed,
the body inlined with the carried state, and the scan outputs stacked (``Unsqueeze`` +
``Concat``) along their axes and directions. ``Loop`` with a constant trip count (at most
:data:`MAX_UNROLL`) whose condition is absent or constant true and passes through the body
unchanged (no early exit): the body inlined once per iteration with ``iter_num`` as a
constant. Inner loops are unrolled first.

Nodes inside subgraphs (an ``If`` branch around an LSTM) are unrolled too. A node is left as
it is (and the backend then names it) when its sequence length is not static, or when
``sequence_lens`` is given and not a constant equal to it for every batch entry. The
arithmetic is the node's own, in another order of summation: the ``fusion`` tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from graphpress.ir.edit import replace_value
from graphpress.passes.base import Pass, PassResult
from graphpress.passes.registry import register

__all__ = ["UnrollRecurrent"]

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# activations that take alpha/beta, with ONNX's defaults
_PARAMS = {"HardSigmoid": (0.2, 0.5), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None), "Elu": (1.0, None),
           "ScaledTanh": (1.0, 1.0), "Affine": (1.0, 0.0)}  # fmt: skip


class _Builder:
    """Nodes written before ``anchor`` in its graph, with constants as initializers of the main graph."""

    def __init__(self, anchor: ir.Node, prefix: str, opset: int):
        self.anchor = anchor
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[ir.Node] = []
        self.constants: list[ir.Value] = []
        self._n = 0

    def _name(self) -> str:
        self._n += 1
        return f"{self.prefix}/{self._n}"

    def const(self, array) -> ir.Value:
        array = np.asarray(array)
        value = ir.Value(name=self._name(), const_value=ir.tensor(array, name=None), shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        value.const_value.name = value.name
        self.constants.append(value)
        return value

    def replace(self, model: ir.Model, outputs: Sequence[ir.Value]) -> None:
        """Put the built nodes in place of the anchor: its used outputs become ``outputs``."""
        for value in self.constants:
            model.graph.register_initializer(value)
        node = self.anchor
        node.graph.insert_before(node, self.nodes)
        for old, new in zip(node.outputs, outputs):
            if old is not None and (old.uses() or old.is_graph_output()):
                replace_value(old, new)
        node.graph.remove(node, safe=True)

    def split(self, value: ir.Value, sizes: Sequence[int], axis: int) -> list[ir.Value]:
        """``Split`` with the sizes as an input (opset 13 on; ``num_outputs`` is opset 18's)."""
        return self.op("Split", [value, self.const(np.array(sizes, np.int64))], num_outputs=len(sizes), axis=axis)

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], num_outputs: int = 1, **attributes):
        node = ir.Node("", op_type, inputs, attributes=[ir.convenience.convert_attribute(k, v) for k, v in attributes.items()],
                       num_outputs=num_outputs, name=self._name())  # fmt: skip
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}:{i}"
        self.nodes.append(node)
        return node.outputs[0] if num_outputs == 1 else list(node.outputs)


def _activation(b: _Builder, x: ir.Value, name: str, alpha: float | None, beta: float | None) -> ir.Value:
    default_alpha, default_beta = _PARAMS.get(name, (None, None))
    alpha = default_alpha if alpha is None else alpha
    beta = default_beta if beta is None else beta
    if name in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"):
        return b.op(name, [x])
    if name == "HardSigmoid":
        return b.op(name, [x], alpha=float(alpha), beta=float(beta))
    if name in ("LeakyRelu", "ThresholdedRelu", "Elu"):
        return b.op(name, [x], alpha=float(alpha))
    if name == "ScaledTanh":
        return b.op("Mul", [b.op("Tanh", [b.op("Mul", [x, b.const(np.float32(beta))])]), b.const(np.float32(alpha))])
    if name == "Affine":
        return b.op("Add", [b.op("Mul", [x, b.const(np.float32(alpha))]), b.const(np.float32(beta))])
    raise ValueError(f"activation {name}")


def _static_seq(node: ir.Node, layout: int) -> tuple[int, int] | None:
    x = node.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 3:
        return None
    seq, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    if not isinstance(seq, int) or not isinstance(batch, int):
        return None
    lens = node.inputs[4] if len(node.inputs) > 4 else None
    if lens is not None:
        if lens.const_value is None or not np.all(lens.const_value.numpy() == seq):
            return None
    return seq, batch


def _unroll(node: ir.Node, b: _Builder) -> list[ir.Value | None] | None:
    op = node.op_type
    layout = node.attributes.get_int("layout", 0)
    dims = _static_seq(node, layout)
    if dims is None:
        return None
    seq, batch = dims
    hidden = node.attributes.get_int("hidden_size")
    direction = node.attributes.get_string("direction", "forward")
    if hidden is None or direction not in ("forward", "reverse", "bidirectional"):
        return None
    num_dir = 2 if direction == "bidirectional" else 1
    gates = _GATES[op]
    acts = list(node.attributes.get_strings("activations", None) or _DEFAULT_ACTIVATIONS[op] * num_dir)
    per_dir = len(_DEFAULT_ACTIVATIONS[op])
    if len(acts) == per_dir and num_dir == 2:
        acts = acts * 2
    alphas = list(node.attributes.get_floats("activation_alpha", None) or [])
    betas = list(node.attributes.get_floats("activation_beta", None) or [])
    if any(a not in _PARAMS and a not in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus") for a in acts):
        return None
    clip = node.attributes.get_float("clip", None)
    input_forget = node.attributes.get_int("input_forget", 0)
    linear_before_reset = node.attributes.get_int("linear_before_reset", 0)

    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    x, w, r, bias = inputs[0], inputs[1], inputs[2], inputs[3]
    initial_h = inputs[5]
    initial_c = inputs[6] if op == "LSTM" else None
    peephole = inputs[7] if op == "LSTM" else None
    if layout:  # batch first: X [batch, seq, I], states [batch, num_dir, H]
        x = b.op("Transpose", [x], perm=[1, 0, 2])
        initial_h = b.op("Transpose", [initial_h], perm=[1, 0, 2]) if initial_h is not None else None
        initial_c = b.op("Transpose", [initial_c], perm=[1, 0, 2]) if initial_c is not None else None

    def act(v: ir.Value, k: int) -> ir.Value:
        return _activation(b, v, acts[k], alphas[k] if k < len(alphas) else None, betas[k] if k < len(betas) else None)

    def clipped(v: ir.Value) -> ir.Value:
        return b.op("Clip", [v, b.const(np.float32(-clip)), b.const(np.float32(clip))]) if clip is not None else v

    dtype = np.float32 if x.dtype is None else x.dtype.numpy()
    zeros = b.const(np.zeros((batch, hidden), dtype))
    ys, hs, cs = [], [], []
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        index = b.const(np.array(d, np.int64))
        w_t = b.op("Transpose", [b.op("Gather", [w, index], axis=0)], perm=[1, 0])  # [I, G*H]
        r_t = b.op("Transpose", [b.op("Gather", [r, index], axis=0)], perm=[1, 0])  # [H, G*H]
        xw = b.op("MatMul", [x, w_t])  # [seq, batch, G*H]
        rb_h = None
        if bias is not None:
            wb, rb = b.split(b.op("Gather", [bias, index], axis=0), [gates * hidden] * 2, axis=0)
            if op == "GRU" and linear_before_reset:
                rb_zr, rb_h = b.split(rb, [2 * hidden, hidden], axis=0)
                xw = b.op("Add", [xw, b.op("Add", [wb, b.op("Concat", [rb_zr, b.const(np.zeros(hidden, dtype))], axis=0)])])
            else:
                xw = b.op("Add", [xw, b.op("Add", [wb, rb])])
        h = b.op("Gather", [initial_h, index], axis=0) if initial_h is not None else zeros
        c = b.op("Gather", [initial_c, index], axis=0) if initial_c is not None else zeros
        if peephole is not None:
            p_i, p_o, p_f = b.split(b.op("Gather", [peephole, index], axis=0), [hidden] * 3, axis=0)
        if op == "GRU":
            r_zr, r_h = b.split(r_t, [2 * hidden, hidden], axis=1)
        k0 = d * per_dir
        steps = []
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            xt = b.op("Gather", [xw, b.const(np.array(t, np.int64))], axis=0)  # [batch, G*H]
            if op == "LSTM":
                g = b.op("Add", [xt, b.op("MatMul", [h, r_t])])
                gi, go, gf, gc = b.split(g, [hidden] * 4, axis=1)
                if peephole is not None:
                    gi = b.op("Add", [gi, b.op("Mul", [p_i, c])])
                    gf = b.op("Add", [gf, b.op("Mul", [p_f, c])])
                i = act(clipped(gi), k0)
                f = b.op("Sub", [b.const(np.array(1, dtype)), i]) if input_forget else act(clipped(gf), k0)
                cand = act(clipped(gc), k0 + 1)
                c = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, cand])])
                if peephole is not None:
                    go = b.op("Add", [go, b.op("Mul", [p_o, c])])
                o = act(clipped(go), k0)
                h = b.op("Mul", [o, act(c, k0 + 2)])
            elif op == "GRU":
                x_zr, x_h = b.split(xt, [2 * hidden, hidden], axis=1)
                z, rr = b.split(b.op("Add", [x_zr, b.op("MatMul", [h, r_zr])]), [hidden] * 2, axis=1)
                z, rr = act(clipped(z), k0), act(clipped(rr), k0)
                if linear_before_reset:
                    hr = b.op("MatMul", [h, r_h])
                    if rb_h is not None:
                        hr = b.op("Add", [hr, rb_h])
                    pre = b.op("Add", [x_h, b.op("Mul", [rr, hr])])
                else:
                    pre = b.op("Add", [x_h, b.op("MatMul", [b.op("Mul", [rr, h]), r_h])])
                cand = act(clipped(pre), k0 + 1)
                # H = (1 - z) * cand + z * H_prev
                h = b.op("Add", [b.op("Mul", [b.op("Sub", [b.const(np.array(1, dtype)), z]), cand]), b.op("Mul", [z, h])])
            else:
                h = act(clipped(b.op("Add", [xt, b.op("MatMul", [h, r_t])])), k0)
            steps.append(h)
        if reverse:
            steps.reverse()
        axis0 = b.const(np.array([0], np.int64))
        y_d = b.op("Concat", [b.op("Unsqueeze", [s, axis0]) for s in steps], axis=0)  # [seq, batch, H]
        ys.append(b.op("Unsqueeze", [y_d, b.const(np.array([1], np.int64))]))
        hs.append(b.op("Unsqueeze", [h, axis0]))
        cs.append(b.op("Unsqueeze", [c, axis0]))
    y = ys[0] if num_dir == 1 else b.op("Concat", ys, axis=1)  # [seq, num_dir, batch, H]
    y_h = hs[0] if num_dir == 1 else b.op("Concat", hs, axis=0)  # [num_dir, batch, H]
    y_c = cs[0] if num_dir == 1 else b.op("Concat", cs, axis=0)
    if layout:
        y = b.op("Transpose", [y], perm=[2, 0, 1, 3])
        y_h = b.op("Transpose", [y_h], perm=[1, 0, 2])
        y_c = b.op("Transpose", [y_c], perm=[1, 0, 2])
    return [y, y_h, y_c][: len(node.outputs)]


def _inline(b: _Builder, body: ir.Graph, feeds: Sequence[ir.Value], tag: str) -> list[ir.Value] | None:
    """The body's nodes, cloned and renamed, reading ``feeds`` for its inputs; returns its outputs."""
    g = body.clone(allow_outer_scope_values=True)
    if len(g.inputs) != len(feeds):
        return None
    if g.initializers:  # a body with its own initializers: constants of the main graph instead
        for name, value in list(g.initializers.items()):
            const = b.const(value.const_value.numpy())
            value.replace_all_uses_with(const)
    index = {id(v): i for i, v in enumerate(g.inputs)}
    results = [feeds[index[id(o)]] if id(o) in index else o for o in g.outputs]
    for inp, feed in zip(g.inputs, feeds):
        inp.replace_all_uses_with(feed)
    g.outputs.clear()  # the clone gives its values up to the graph they move to
    g.inputs.clear()
    nodes = list(g)
    for node in nodes:
        g.remove(node)
        node.name = f"{b.prefix}/{tag}/{node.name or node.op_type}"
        for out in node.outputs:
            out.name = f"{b.prefix}/{tag}/{out.name}"
    b.nodes.extend(nodes)
    return results


def _stack(b: _Builder, slices: list[ir.Value], axis: int, rank: int, reverse: bool) -> ir.Value:
    axis = axis + rank + 1 if axis < 0 else axis
    ax = b.const(np.array([axis], np.int64))
    ordered = list(reversed(slices)) if reverse else slices
    return b.op("Concat", [b.op("Unsqueeze", [v, ax]) for v in ordered], axis=axis)


def _unroll_scan(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    if b.opset < 9:  # opset 8's Scan has a batch axis and sequence_lens: not unrolled
        return None
    body = node.attributes["body"].as_graph()
    m = node.attributes.get_int("num_scan_inputs")
    n_state = len(node.inputs) - m
    k = len(body.outputs) - n_state
    in_axes = list(node.attributes.get_ints("scan_input_axes", [0] * m))
    in_dirs = list(node.attributes.get_ints("scan_input_directions", [0] * m))
    out_axes = list(node.attributes.get_ints("scan_output_axes", [0] * k))
    out_dirs = list(node.attributes.get_ints("scan_output_directions", [0] * k))
    scans = list(node.inputs[n_state:])
    lengths, axes = set(), []
    for v, ax in zip(scans, in_axes):
        if v is None or v.shape is None:
            return None
        ax = ax + len(v.shape) if ax < 0 else ax
        if not isinstance(v.shape[ax], int):
            return None
        lengths.add(v.shape[ax])
        axes.append(ax)
    if len(lengths) != 1 or 0 in lengths:
        return None
    steps = lengths.pop()
    states = list(node.inputs[:n_state])
    per_out: list[list[ir.Value]] = [[] for _ in range(k)]
    for t in range(steps):
        slices = [b.op("Gather", [v, b.const(np.array(steps - 1 - t if d else t, np.int64))], axis=ax) for v, ax, d in zip(scans, axes, in_dirs)]
        outs = _inline(b, body, states + slices, f"t{t}")
        if outs is None:
            return None
        states = outs[:n_state]
        for j in range(k):
            per_out[j].append(outs[n_state + j])
    stacked = []
    for j in range(k):
        rank = len(body.outputs[n_state + j].shape) if body.outputs[n_state + j].shape is not None else None
        if rank is None and out_axes[j] < 0:
            return None
        stacked.append(_stack(b, per_out[j], out_axes[j], rank or 0, bool(out_dirs[j])))
    return [b.op("Identity", [v]) for v in states] + stacked


def _unroll_loop(node: ir.Node, b: _Builder) -> list[ir.Value] | None:
    """A Loop with a constant trip count whose condition stays true (absent, or a constant true
    passed through the body unchanged) is its body repeated."""
    body = node.attributes["body"].as_graph()
    trip, cond = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if trip is None or trip.const_value is None:
        return None
    steps = int(trip.const_value.numpy().reshape(-1)[0])
    if steps <= 0 or steps > MAX_UNROLL:
        return None
    if cond is not None and (cond.const_value is None or not bool(cond.const_value.numpy().reshape(-1)[0])):
        return None
    cond_out, cond_in = body.outputs[0], body.inputs[1]
    producer = cond_out.producer()
    passes_through = cond_out is cond_in or (producer is not None and producer.op_type == "Identity" and producer.inputs[0] is cond_in)
    constant_true = cond_out.const_value is not None or (producer is not None and producer.op_type == "Constant")
    if constant_true:
        value = cond_out.const_value if cond_out.const_value is not None else producer.attributes["value"].as_tensor()
        constant_true = bool(value.numpy().reshape(-1)[0])
    if not (passes_through or constant_true):
        return None
    carried = list(node.inputs[2:])
    n = len(carried)
    k = len(body.outputs) - 1 - n
    true = b.const(np.array(True))
    per_out: list[list[ir.Value]] = [[] for _ in range(k)]
    for t in range(steps):
        outs = _inline(b, body, [b.const(np.array(t, np.int64)), true, *carried], f"i{t}")
        if outs is None:
            return None
        carried = outs[1 : 1 + n]
        for j in range(k):
            per_out[j].append(outs[1 + n + j])
    stacked = []
    for j in range(k):
        shape = body.outputs[1 + n + j].shape
        stacked.append(_stack(b, per_out[j], 0, len(shape) if shape is not None else 0, False))
    return [b.op("Identity", [v]) for v in carried] + stacked


#: a Loop is unrolled up to this many iterations (a longer one is left for the backend to name)
MAX_UNROLL = 256


_UNROLLERS = {"LSTM": _unroll, "GRU": _unroll, "RNN": _unroll, "Scan": _unroll_scan, "Loop": _unroll_loop}


@register
class UnrollRecurrent(Pass):
    """Unroll LSTM/GRU/RNN, Scan and Loop nodes of static length into per-step ops (TVM has none of them)."""

    name = "unroll_recurrent"
    #: writes Split/Unsqueeze with their opset-13 inputs
    min_opset = 13
    family = "fusion"
    description = "unroll LSTM, GRU, RNN (static sequence length), Scan (static length) and Loop (constant trip count) into per-step ops"

    def required_opset(self, model: ir.Model) -> int:
        ops = {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)} & set(_UNROLLERS)
        if model.opset_imports.get("", 0) < 9:
            ops.discard("Scan")  # opset 8's Scan is not unrolled: no reason to convert it
        return self.min_opset if ops else 0

    def call(self, model: ir.Model) -> PassResult:
        unrolled, left = 0, []
        targets = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type in _UNROLLERS and n.domain in ("", "ai.onnx")]
        for node in reversed(targets):  # inner loops first: an unrolled body is cloned unrolled
            b = _Builder(node, f"{node.name or node.op_type}/unrolled", model.opset_imports.get("", 0))
            try:
                outs = _UNROLLERS[node.op_type](node, b)
            except ValueError:
                outs = None
            if outs is None:
                left.append(node.name or node.op_type)
                continue
            b.replace(model, outs)
            unrolled += 1
        stats = {"unrolled": unrolled}
        if left:
            stats["left"] = left
        return PassResult(model, unrolled > 0, stats)
