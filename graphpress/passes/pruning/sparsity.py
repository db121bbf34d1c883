"""Weight masks: unstructured magnitude sparsity and N:M sparsity (``prune:mode=unstructured|nm``).

The weights of Conv/ConvTranspose/Gemm/MatMul are set to zero in place; the graph keeps its
shape. **Dense kernels do not get faster from zeros** (neither ONNX Runtime's nor the TVM
backend's): what these modes buy is a smaller *compressed* size (reported as the bytes of a
CSR-like encoding: the non-zero values plus a 16-bit index each, and for N:M the values plus
``ceil(log2(M))`` bits per kept value), and a model ready for sparse hardware (2:4 on GPUs).

* unstructured, ``scope=layer``: each weight loses its ``ratio`` smallest-magnitude entries;
  ``scope=global``: one magnitude threshold over all weights.
* N:M: along the input-channel axis (the reduction axis: axis 1 of a Conv weight, the K axis of
  a Gemm/MatMul weight), in every run of M consecutive weights only the N largest stay.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["apply_sparsity", "nm_mask"]

_OPS = {"Conv": 1, "ConvTranspose": 0, "Gemm": None, "MatMul": 0}


def _weights(model: ir.Model, exclude: list[str]) -> list[tuple[ir.Node, ir.Value, int]]:
    """(node, weight value, reduction axis) of every prunable weight."""
    out = []
    seen = set()
    for node in model.graph:
        if node.op_type not in _OPS or any(e in node.name for e in exclude) or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None or not w.is_initializer() or w.name in seen:
            continue
        arr_rank = len(w.const_value.shape)
        if arr_rank < 2 or not np.issubdtype(w.const_value.numpy().dtype, np.floating):
            continue
        axis = _OPS[node.op_type]
        if node.op_type == "Gemm":
            axis = 1 if node.attributes.get_int("transB", 0) else 0
        seen.add(w.name)
        out.append((node, w, axis))
    return out


def nm_mask(arr: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Boolean mask keeping the ``n`` largest |values| in each run of ``m`` along ``axis`` (a tail shorter than ``m`` keeps ``ceil(n/m)`` of it)."""
    moved = np.moveaxis(np.abs(arr), axis, -1)
    k = moved.shape[-1]
    pad = (-k) % m
    padded = np.concatenate([moved, np.full(moved.shape[:-1] + (pad,), -np.inf)], axis=-1) if pad else moved
    blocks = padded.reshape(padded.shape[:-1] + (-1, m))
    order = np.argsort(-blocks, axis=-1, kind="stable")
    keep = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(padded.shape)[..., :k]
    return np.moveaxis(keep, -1, axis)


def apply_sparsity(model: ir.Model, *, mode: str, ratio: float, n: int = 2, m: int = 4, scope: str = "layer", exclude: list[str] | None = None) -> dict[str, Any]:
    weights = _weights(model, exclude or [])
    threshold = None
    if mode == "unstructured" and scope == "global" and weights:
        everything = np.concatenate([np.abs(w.const_value.numpy()).ravel() for _, w, _ in weights])
        threshold = float(np.quantile(everything, ratio)) if ratio > 0 else -np.inf
    total = zeroed = 0
    dense_bytes = compressed_bytes = 0
    layers = {}
    for node, w, axis in weights:
        arr = w.const_value.numpy()
        if mode == "nm":
            keep = nm_mask(arr, axis, n, m)
            index_bits = max(1, math.ceil(math.log2(m)))
        elif threshold is not None:
            keep = np.abs(arr) > threshold
            index_bits = 16
        else:
            k = int(math.floor(ratio * arr.size))
            keep = np.ones(arr.size, dtype=bool)
            if k:
                keep[np.argsort(np.abs(arr).ravel(), kind="stable")[:k]] = False
            keep = keep.reshape(arr.shape)
            index_bits = 16
        new = np.where(keep, arr, np.zeros((), arr.dtype)).astype(arr.dtype)
        removed = int((~keep).sum())
        if removed:
            w.const_value = ir.tensor(new, name=w.name)
        nnz = int(keep.sum())
        total += arr.size
        zeroed += removed
        dense_bytes += arr.nbytes
        compressed_bytes += nnz * arr.itemsize + math.ceil(nnz * index_bits / 8)
        layers[node.name] = {"sparsity": round(removed / arr.size, 4)}
    return {
        "mode": mode,
        "weights_zeroed": zeroed,
        "sparsity": round(zeroed / total, 4) if total else 0.0,
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
        "note": "masks only: dense kernels (ONNX Runtime, TVM) run no faster; compressed_bytes is the sparse encoding's size",
        "layers": layers,
    }
