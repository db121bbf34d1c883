"""Least-squares reconstruction of the layers that read pruned channels (``prune:reconstruct=true``).

Deleting channels leaves each layer that reads them (a ``MatMul``/``Gemm`` weight's input rows:
an FFN's down-projection, a classifier after a cut feature map) summing fewer terms. Channel
pruning by reconstruction (He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural
Networks", ICCV 2017; ThiNet, Luo et al. 2017) refits those weights on calibration inputs so that
the layer's output stays what it was:

    W' = argmin || X_kept W' + b' - X W ||^2   (ridge-regularized, in float64)

(the ridge chosen on every fourth calibration sample, which the fit does not see; a refit that is
not better there than the plain cut is dropped, and so are all of them when together they bring
the model's outputs on those samples further from the original's than the plain cut does)
where ``X`` is the layer's input in the original model and ``X_kept`` its input in the pruned
model so far: layers are refitted in graph order, each on the inputs the earlier refits produce,
so errors of earlier layers are compensated too. The bias (``Gemm``'s C, or the ``Add`` right after
a ``MatMul``) takes the mean of what the removed channels contributed. A layer whose weight is
shared, quantized or not a plain 2-D initializer keeps its weight (listed in the statistics).

Refitted rows are written into the full-size weight (the rows of removed channels stay as they
were), so the masked reference the pass is checked against includes the refit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.ir.weights import next_in_chain

__all__ = ["reconstruct_consumers"]


def _consumer(value: ir.Value, axis: int) -> tuple[ir.Node, bool] | str:
    """The node reading ``value`` (a weight) as the K side of a matrix product: ``(node,
    transposed)``, or why not."""
    uses = list(value.uses())
    if len(uses) != 1:
        return "a shared weight"
    node, index = uses[0].node, uses[0].idx
    arr = value.const_value
    if index != 1 or arr is None or len(arr.shape) != 2:
        return f"{node.op_type} reads it as other than a 2-D weight"
    if node.op_type == "MatMul" and axis == 0:
        return node, False
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        trans = bool(node.attributes.get_int("transB", 0))
        if axis == (1 if trans else 0) and node.attributes.get_float("alpha", 1.0) == 1.0:
            return node, trans
    return f"{node.op_type} '{node.name}' is not a plain matrix product"


def _bias(node: ir.Node, n: int) -> ir.Value | None:
    """The per-output constant added to ``node``'s product, when it has one of its own."""
    if node.op_type == "Gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        ok = c is not None and node.attributes.get_float("beta", 1.0) == 1.0
    else:
        add = next_in_chain(node.outputs[0], "Add", through=(), steps=1)
        c = next((v for v in add.inputs if v is not None and v.const_value is not None), None) if add is not None else None
        ok = c is not None
    if not ok or c.const_value is None or len(list(c.uses())) != 1 or tuple(c.const_value.shape) not in ((n,), (1, n)):
        return None
    return c


def reconstruct_consumers(
    model: ir.Model, plan, samples: list[dict[str, np.ndarray]], masked: Callable[[ir.Model], ir.Model], ridges: tuple[float, ...] = (1e-8, 1e-4, 1e-2, 1.0)
) -> dict[str, Any]:
    """Refit, in ``model`` (full size, before the plan is applied), every matrix-product weight
    that reads channels the plan removes, with the ridge (relative to the mean diagonal of the
    Gram matrix) that does best on the judging samples. ``masked(model)`` is the model as the
    plan will compute it (:func:`~graphpress.passes.pruning.prune.masked_reference`). Returns
    statistics: the layers refitted with their relative output error on the judging samples
    before/after the refit, the layers that kept their weight with why, and the output cosine
    of the plain and the refitted cut (``dropped`` when the refits were given back)."""
    from graphpress.ir.numeric import run_samples

    graph = model.graph
    jobs, kept = [], {}
    for p in plan.graph.params:
        if p.role != "consumer":
            continue
        mask = plan.keep_mask(p.ids)
        if mask.all() or p.name in {j[0].name for j in jobs}:
            continue
        value = graph.initializers[p.name]
        found = _consumer(value, p.axis)
        if isinstance(found, str):
            kept[p.name] = found
            continue
        jobs.append((value, found[0], found[1], mask))
    if not jobs:
        return {"layers": {}, "kept": kept}
    order = {id(node): i for i, node in enumerate(graph)}
    jobs.sort(key=lambda j: order.get(id(j[1]), 0))
    inputs = [node.inputs[0].name for _, node, _, _ in jobs]
    outputs = [v.name for v in graph.outputs]
    original = run_samples(model, samples, outputs=inputs + outputs, where="prune reconstruct (the model before pruning)")
    # with 4 samples or more, every fourth one only judges: rows of one sample are alike, so
    # held-out rows of samples the fit saw would not show a fit that does not carry over
    held = np.arange(len(samples)) % 4 == 3 if len(samples) >= 4 else None
    plain = _cosine(run_samples(masked(model), samples, outputs=outputs, where="prune reconstruct (the plain cut)"), original, outputs, held)
    saved: dict[str, ir.TensorProtocol] = {}
    layers = {}
    for (value, node, trans, mask), x_name in zip(jobs, inputs):
        w = value.const_value.numpy()
        w_kn = (w.T if trans else w).astype(np.float64)  # [K, N]
        k = w_kn.shape[0]
        x_full = original[x_name].reshape(-1, k).astype(np.float64)
        # this layer's input as the pruned model computes it, with the refits before it
        current = run_samples(masked(model), samples, outputs=[x_name], where="prune reconstruct (the pruned model)")
        x_now = current[x_name].reshape(-1, k)[:, mask].astype(np.float64)
        target = x_full @ w_kn
        # every fourth sample (or row, with fewer than 4 samples) only judges: the refit and its
        # ridge must do better on rows it was not fitted on, or the layer keeps its weight
        n_rows = len(x_now)
        judge = np.repeat(held, n_rows // len(held)) if held is not None and n_rows % len(held) == 0 else np.arange(n_rows) % 4 == 3
        if judge.sum() < 1 or (~judge).sum() < 2:
            kept[value.name] = f"{n_rows} calibration rows: too few to refit on"
            continue
        bias = _bias(node, w_kn.shape[1])
        if bias is not None:  # centred on the fitted rows: the intercept goes into the bias
            mean_x, mean_t = x_now[~judge].mean(0), target[~judge].mean(0)
            a, t = x_now - mean_x, target - mean_t
        else:
            a, t = x_now, target
        gram = a[~judge].T @ a[~judge]
        rhs = a[~judge].T @ t[~judge]
        scale = max(float(np.trace(gram)) / len(gram), 1e-12)
        cut_error = x_now @ w_kn[mask] - target
        norm = max(float(np.linalg.norm(target[judge])), 1e-30)
        before = float(np.linalg.norm(cut_error[judge])) / norm
        best = None
        for lam in ridges:
            fitted = np.linalg.solve(gram + lam * scale * np.eye(len(gram)), rhs)
            error = float(np.linalg.norm(a[judge] @ fitted - t[judge])) / norm
            if best is None or error < best[0]:
                best = (error, fitted, lam)
        after, fitted, lam = best
        if after >= before:  # the refit does not help on rows it did not see: the weight stays
            kept[value.name] = f"refit no better on held-out rows ({after:.4g} vs {before:.4g})"
            continue
        new = w_kn.copy()
        new[mask] = fitted
        new = (new.T if trans else new).astype(w.dtype)
        saved.setdefault(value.name, value.const_value)
        value.const_value = ir.tensor(np.ascontiguousarray(new), name=value.name)
        if bias is not None:  # x_now @ fitted + (mean_t - mean_x @ fitted) fits target: the constant joins the bias
            b = bias.const_value.numpy()
            saved.setdefault(bias.name, bias.const_value)
            bias.const_value = ir.tensor((b + (mean_t - mean_x @ fitted).reshape(b.shape)).astype(b.dtype), name=bias.name)
        layers[node.name or value.name] = {"error_masked": round(before, 5), "error_refit": round(after, 5), "ridge": lam}
    if not layers:
        return {"layers": layers, "kept": kept}
    # each layer's fit is judged on its own rows; the model's outputs judge them together. Rows
    # the outputs do not read (padding positions of a text model) can pull a fit away from the
    # rows they do: then the plain cut stays
    refit = _cosine(run_samples(masked(model), samples, outputs=outputs, where="prune reconstruct (the refitted cut)"), original, outputs, held)
    verdict = {"output_cosine_cut": round(plain, 6), "output_cosine_refit": round(refit, 6)}
    if refit < plain:
        for name, tensor in saved.items():
            graph.initializers[name].const_value = tensor
        return {"layers": {}, "kept": kept, "dropped": "the refit brought the outputs further from the original's than the plain cut", **verdict}
    return {"layers": layers, "kept": kept, **verdict}


def _cosine(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names: list[str], held: np.ndarray | None) -> float:
    """Mean, over samples (the ``held`` ones, when given) and outputs, of the cosine between
    ``got`` and ``want`` (stacked per sample by ``run_samples``)."""
    values = []
    for name in names:
        g, w = (np.asarray(a, dtype=np.float64) for a in (got[name], want[name]))
        g, w = g.reshape(len(g), -1) if g.ndim > 1 else g.reshape(1, -1), w.reshape(len(w), -1) if w.ndim > 1 else w.reshape(1, -1)
        if held is not None:
            g, w = g[held], w[held]
        values.extend((g * w).sum(1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1), 1e-30))
    return float(np.mean(values))
