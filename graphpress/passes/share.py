"""The ``share`` pass: Deep Compression-style weight sharing with k-means codebooks.

Each selected weight ``W`` (Conv/ConvTranspose/Gemm/MatMul weights and Gather tables) is
replaced by a codebook of ``clusters`` float centroids and one index per weight::

    W ≈ codebook[indices]

``scope=local`` fits one codebook per layer; ``scope=global`` one codebook for all selected
layers. Centroids start ``linear`` (evenly spaced between min and max, what Deep Compression
found best), ``density`` (at evenly spaced quantiles) or ``random`` (sampled weights), then
Lloyd's algorithm runs in one dimension exactly: the weights are sorted once, so each iteration
costs ``O(k log n)`` with prefix sums. Exact zeros (pruned weights) keep their own centroid 0.0,
so sparsity survives sharing.

The stored form runs unchanged in every ONNX runtime::

    indices (uint8; two 4-bit indices per byte when clusters <= 16)
      -> [BitShift/BitwiseAnd unpack] -> Cast(int32) -> Gather(codebook) -> W

The unpack nodes carry ``metadata_props["graphpress.share"]`` (cleanup never folds them back;
the TVM backend folds them to dense weights at compile time). Stats per layer: bits per weight
as stored, the indices' entropy (what ``graphpress pack`` approaches), the MSE and SQNR, and
``r_w``, the weight-sharing rate of Deep Compression (Han et al. 2016, eq. 1)::

    r_w = n·b / (n·log2(k) + k·b)      n weights, b = 32 bits each, k clusters
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from graphpress.errors import GraphpressError
from graphpress.ir.edit import add_initializer
from graphpress.passes.base import Pass, PassResult, option
from graphpress.passes.registry import register

__all__ = ["Share", "kmeans_1d", "sharing_rate"]

#: op type -> index of the weight input that can be shared
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}
TAG = "graphpress.share"


def sharing_rate(n: int, k: int, bits: int = 32, codebooks: int = 1) -> float:
    """Deep Compression's weight-sharing rate ``n·b / (n·log2(k) + k·b)`` (``codebooks`` of ``k``
    centroids each when several layers are counted together)."""
    return n * bits / (n * max(math.log2(k), 1.0) + codebooks * k * bits)


def kmeans_1d(x: np.ndarray, k: int, *, init: str = "linear", iterations: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D k-means (Lloyd) of ``x``: ``(centroids[k'], indices)`` with ``k' <= k`` distinct,
    sorted centroids and ``x ≈ centroids[indices]``.

    ``init``: ``linear`` (evenly spaced in [min, max]), ``density`` (evenly spaced quantiles),
    ``random`` (``k`` distinct sampled values, ``seed``).
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    xs = np.sort(flat)
    n = xs.size
    distinct = np.unique(xs)
    if distinct.size <= k:  # few distinct values: exact
        return distinct, np.searchsorted(distinct, flat).astype(np.int64)
    if init == "linear":
        c = np.linspace(xs[0], xs[-1], k)
    elif init == "density":
        c = np.quantile(xs, np.linspace(0.0, 1.0, k))
    elif init == "random":
        c = np.random.default_rng(seed).choice(distinct, size=k, replace=False)
    else:
        raise GraphpressError(f"share: unknown centroid init '{init}'; use linear, density or random")
    c = np.unique(c)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    for _ in range(iterations):
        edges = np.concatenate([[0], np.searchsorted(xs, (c[:-1] + c[1:]) / 2), [n]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = np.unique(new[counts > 0])
        if new.size == c.size and np.allclose(new, c, rtol=0, atol=1e-12 * max(1.0, abs(xs).max())):
            c = new
            break
        c = new
    indices = np.searchsorted((c[:-1] + c[1:]) / 2, flat)
    return c, indices.astype(np.int64)


def _fit(x: np.ndarray, k: int, init: str, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means that keeps exact zeros (pruned weights) on a centroid of their own when they are common."""
    flat = x.ravel()
    zeros = flat == 0
    if zeros.mean() >= 0.05 and k >= 3 and (~zeros).any():
        c, idx = kmeans_1d(flat[~zeros], k - 1, init=init, iterations=iterations, seed=seed)
        c = np.concatenate([[0.0], c])
        full = np.zeros(flat.size, dtype=np.int64)
        full[~zeros] = idx + 1
        return c, full
    return kmeans_1d(flat, k, init=init, iterations=iterations, seed=seed)


def _entropy_bits(indices: np.ndarray, k: int) -> float:
    counts = np.bincount(indices.ravel(), minlength=k).astype(np.float64)
    p = counts[counts > 0] / indices.size
    return float(-(p * np.log2(p)).sum())


def _unpack_nodes(graph: ir.Graph, base: str, indices: np.ndarray, codebook: ir.Value, shape: tuple[int, ...]) -> tuple[list[ir.Node], ir.Value, int]:
    """Nodes computing ``codebook[indices].reshape(shape)`` from stored indices; returns
    (nodes, output value, bytes the stored indices take)."""
    n = indices.size
    flat = indices.ravel().astype(np.uint8)
    nodes: list[ir.Node] = []

    def add(op, inputs, **attrs):
        node = ir.node(op, inputs, attributes=attrs or None, name=f"{base}/share_{op.lower()}_{len(nodes)}")
        node.metadata_props[TAG] = base
        nodes.append(node)
        return node.outputs[0]

    if codebook.const_value.size <= 16:
        padded = np.concatenate([flat, np.zeros(n % 2, dtype=np.uint8)])
        packed = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)  # low nibble first
        stored = add_initializer(graph, f"{base}.share_indices4", packed)
        four = add_initializer(graph, f"{base}.share_four", np.array(4, dtype=np.uint8))
        mask = add_initializer(graph, f"{base}.share_mask", np.array(15, dtype=np.uint8))
        axis_last = add_initializer(graph, f"{base}.share_axis", np.array([-1], dtype=np.int64))
        lo = add("Unsqueeze", [add("BitwiseAnd", [stored, mask]), axis_last])
        hi = add("Unsqueeze", [add("BitShift", [stored, four], direction="RIGHT"), axis_last])
        both = add("Concat", [lo, hi], axis=-1)  # [n/2, 2]: low, high
        flat_shape = add_initializer(graph, f"{base}.share_flat", np.array([-1], dtype=np.int64))
        idx = add("Reshape", [both, flat_shape])
        if n % 2:
            starts = add_initializer(graph, f"{base}.share_start", np.array([0], dtype=np.int64))
            ends = add_initializer(graph, f"{base}.share_end", np.array([n], dtype=np.int64))
            idx = add("Slice", [idx, starts, ends])
        nbytes = packed.nbytes
    else:
        idx = add_initializer(graph, f"{base}.share_indices", flat)
        nbytes = flat.nbytes
    shape_v = add_initializer(graph, f"{base}.share_shape", np.array(shape, dtype=np.int64))
    idx = add("Reshape", [add("Cast", [idx], to=ir.DataType.INT32), shape_v])
    out = add("Gather", [codebook, idx], axis=0)
    return nodes, out, nbytes


@register
class Share(Pass):
    """Replace weights by k-means codebooks and packed indices (Deep Compression weight sharing)."""

    name = "share"
    #: rewrites with opset-13+ ops (Squeeze/Slice inputs, per-channel QDQ); the same opset as a torch export
    min_opset = 20
    family = "sharing"
    description = "k-means weight sharing: codebook + 4/8-bit indices, runs in any ONNX runtime"

    @dataclasses.dataclass
    class Options:
        clusters: int = option(16, help="centroids per codebook (16 -> 4-bit indices, 256 -> 8-bit)", min=2, max=256)
        scope: str = option("local", help="one codebook per layer (local) or one for all layers (global)", choices=("local", "global"))
        init: str = option("linear", help="centroid initialization", choices=("linear", "density", "random"))
        ops: str = option("Conv|ConvTranspose|Gemm|MatMul|Gather", help="op types whose constant weights are shared ('|'-separated)")
        min_size: int = option(1024, help="skip weights with fewer elements (biases, small layers)", min=1)
        include: str = option("", help="only weights whose names contain one of these ('|'-separated)")
        exclude: str = option("", help="skip weights whose names contain one of these ('|'-separated)")
        iterations: int = option(50, help="Lloyd iterations at most", min=1)
        seed: int = option(0, help="seed of random init", min=0)

    def _selected(self, model: ir.Model) -> list[ir.Value]:
        o = self.options
        ops = {s for s in o.ops.split("|") if s}
        unknown = ops - set(WEIGHT_INPUT)
        if unknown:
            raise GraphpressError(f"share: option 'ops' names {sorted(unknown)}; supported: {'|'.join(WEIGHT_INPUT)}")
        include = [s for s in o.include.split("|") if s]
        exclude = [s for s in o.exclude.split("|") if s]
        chosen: dict[str, ir.Value] = {}
        graph = model.graph
        for value in graph.initializers.values():
            t = value.const_value
            if t is None or value.is_graph_input() or value.is_graph_output():
                continue
            if t.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE) or t.size < o.min_size:
                continue
            if include and not any(s in value.name for s in include):
                continue
            if any(s in value.name for s in exclude):
                continue
            uses = list(value.uses())
            if uses and all(u.node.op_type in ops and u.idx == WEIGHT_INPUT[u.node.op_type] for u in uses):
                chosen[value.name] = value
        return list(chosen.values())

    def call(self, model: ir.Model) -> PassResult:
        o = self.options
        weights = self._selected(model)
        stats: dict = {"shared": 0, "clusters": o.clusters, "scope": o.scope, "weights": 0, "bytes_before": 0, "bytes_after": 0, "layers": {}}
        if not weights:
            return PassResult(model, False, stats)
        graph = model.graph
        arrays = {v.name: v.const_value.numpy().astype(np.float64) for v in weights}
        fits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if o.scope == "global":
            c, idx = _fit(np.concatenate([a.ravel() for a in arrays.values()]), o.clusters, o.init, o.iterations, o.seed)
            start = 0
            for name, a in arrays.items():
                fits[name] = (c, idx[start : start + a.size])
                start += a.size
        else:
            for name, a in arrays.items():
                fits[name] = _fit(a, o.clusters, o.init, o.iterations, o.seed)

        shared_codebook: ir.Value | None = None
        total_n = 0
        codebook_bytes = 0
        for value in weights:
            name = value.name
            t = value.const_value
            dtype = t.dtype.numpy()
            c, idx = fits[name]
            if o.scope == "global":
                if shared_codebook is None:
                    shared_codebook = add_initializer(graph, "graphpress.share_codebook", c.astype(dtype))
                    codebook_bytes += shared_codebook.const_value.nbytes
                codebook = shared_codebook
            else:
                codebook = add_initializer(graph, f"{name}.share_codebook", c.astype(dtype))
                codebook_bytes += codebook.const_value.nbytes
            a = arrays[name]
            approx = codebook.const_value.numpy().astype(np.float64)[idx].reshape(a.shape)
            nodes, out, index_bytes = _unpack_nodes(graph, name, idx, codebook, tuple(a.shape))
            graph.initializers.pop(name)
            if len(graph):
                graph.insert_before(graph[0], nodes)
            else:
                graph.extend(nodes)
            out.name = name
            out.shape, out.type = value.shape, value.type
            value.replace_all_uses_with(out)
            k = int(codebook.const_value.size)
            mse = float(np.mean((a - approx) ** 2))
            power = float(np.mean(a**2))
            stats["layers"][name] = {
                "weights": int(a.size),
                "clusters": k,
                "index_bits": 4 if k <= 16 else 8,
                "entropy_bits": round(_entropy_bits(idx, k), 4),
                "mse": mse,
                "sqnr_db": round(10 * math.log10(power / mse), 2) if mse > 0 and power > 0 else math.inf,
                "r_w": round(sharing_rate(int(a.size), k), 3),
            }
            stats["shared"] += 1
            stats["weights"] += int(a.size)
            stats["bytes_before"] += t.nbytes
            stats["bytes_after"] += index_bytes
            total_n += int(a.size)
        stats["bytes_after"] += codebook_bytes
        stats["r_w"] = round(sharing_rate(total_n, o.clusters, codebooks=1 if o.scope == "global" else len(weights)), 3)
        stats["bits_per_weight"] = round(8 * stats["bytes_after"] / total_n, 3)
        stats["mse"] = float(sum(v["mse"] * v["weights"] for v in stats["layers"].values()) / total_n)
        return PassResult(model, True, stats)


@register
class Unshare(Pass):
    """Fold ``share``'s lookups back into dense weights (the exact values ``codebook[indices]``)."""

    name = "unshare"
    # the folded weights equal codebook[indices] bit for bit, but ONNX Runtime then runs other
    # kernels (pre-packed constant weights), whose float sums differ in the last bits
    family = "cleanup"
    description = "fold weight-sharing lookups back to dense weights (what the TVM backend does by default)"

    def call(self, model: ir.Model) -> PassResult:
        from graphpress.passes.cleanup import fold_nodes

        tagged = sum(1 for g in model.graphs() for n in g if TAG in n.metadata_props)
        if not tagged:
            return PassResult(model, False, {"folded_lookups": 0})
        left = fold_nodes(model, lambda node: TAG in node.metadata_props)
        if left:
            raise GraphpressError(f"unshare: {left} weight-sharing nodes could not be folded (first in the graph has inputs that are not constants)")
        return PassResult(model, True, {"folded_lookups": tagged})
