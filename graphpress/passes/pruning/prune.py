"""The ``prune`` pass: score channels, choose per group or globally, slice the parameters.

Importance of a channel (aggregated over every parameter slice of its group):

* ``l1`` / ``l2``: the L1 / L2 norm of the producer rows it owns (all producers of the group:
  residual branches add up; a head sums its Q/K/V columns);
* ``bn_scale``: ``|gamma|`` of the BatchNorm/InstanceNorm on the channel (network slimming);
  groups without a norm fall back to ``l1``;
* ``activation``: mean ``|activation|`` of the source outputs over calibration inputs (up to 64
  of the samples given);
* ``apoz``: 1 - the average percentage of zeros of the source outputs (after a ReLU, a
  channel that is almost always 0 scores low);
* ``random``: a seeded baseline.

``ratio`` removes that fraction of every group (``global=true``: one threshold over all groups
after scaling each group's scores by its mean), never below ``min_channels`` and keeping a
multiple of ``round_to`` channels. ``reconstruct=true`` then refits the matrix products that
read removed channels on the calibration samples (:mod:`graphpress.passes.pruning.reconstruct`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.errors import SpecError
from graphpress.ir.analysis import infer_shapes
from graphpress.ir.edit import add_initializer
from graphpress.ir.io import clone
from graphpress.ir.numeric import output_similarity
from graphpress.passes.base import Pass, PassResult, option
from graphpress.passes.pruning.groups import DependencyGraph, Group
from graphpress.passes.registry import register

__all__ = ["PRUNED_CHANNELS_KEY", "Prune", "PrunePlan", "apply_plan", "masked_reference", "plan_pruning", "prune_progressive", "pruned_channels"]

IMPORTANCE = ("l1", "l2", "bn_scale", "activation", "apoz", "random")
#: calibration samples ``activation``/``apoz`` scores average over and ``reconstruct=true``
#: refits on, at most
RECONSTRUCT_SAMPLES = 64


@dataclasses.dataclass
class PrunePlan:
    """Which channels (union-find roots of :attr:`graph`) are removed, and per-group statistics."""

    graph: DependencyGraph
    pruned: set[int]
    groups: list[dict[str, Any]]

    @property
    def channels_removed(self) -> int:
        return len(self.pruned)

    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        find = self.graph.uf.find
        return np.array([find(int(i)) not in self.pruned for i in ids], dtype=bool)


def _matches(sources: list[str], patterns: list[str]) -> bool:
    return any(p in s for s in sources for p in patterns)


def _scores(dg: DependencyGraph, importance: str, feeds: dict[str, np.ndarray] | None, seed: int) -> dict[int, float]:
    find = dg.uf.find
    scores: dict[int, float] = defaultdict(float)
    inits = dg.model.graph.initializers
    if importance == "random":
        rng = np.random.default_rng(seed)
        for root in sorted({find(i) for i in range(len(dg.uf.parent))}):
            scores[root] = float(rng.random())
        return scores
    if importance in ("activation", "apoz"):
        from graphpress.ir.numeric import make_inputs, run_samples

        samples = list(feeds) if isinstance(feeds, (list, tuple)) else [feeds or make_inputs(dg.model, seed=seed)]
        names = [v.name for v, _, _ in dg.source_values if not v.is_graph_output()]
        values = run_samples(dg.model, samples, outputs=names) if names else {}
        for value, axis, ids in dg.source_values:
            arr = values.get(value.name)
            if arr is None:
                continue
            if len(samples) > 1:  # the samples' axis first: every sample's positions count
                arr = np.moveaxis(arr, 0, -1)
            moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
            per = np.abs(moved).mean(axis=1) if importance == "activation" else 1.0 - (moved <= 0).mean(axis=1)
            for i, s in zip(ids.tolist(), per.tolist()):
                scores[find(i)] += s
        return scores
    # filter norms (Li et al. 2017): the producer rows only; a dead filter is dead whatever reads it
    roles = ("scale",) if importance == "bn_scale" else ("producer",)
    seen: set[tuple[str, int, str]] = set()
    for p in dg.params:
        if p.role not in roles or (p.name, p.axis, p.role) in seen:
            continue
        seen.add((p.name, p.axis, p.role))
        arr = inits[p.name].const_value.numpy()
        moved = np.moveaxis(arr, p.axis, 0).reshape(arr.shape[p.axis], -1).astype(np.float64)
        per = np.abs(moved).sum(axis=1) if importance in ("l1", "bn_scale") else (moved**2).sum(axis=1)
        for i, s in zip(p.ids.tolist(), per.tolist()):
            scores[find(i)] += s
    if importance == "l2":
        scores = defaultdict(float, {k: math.sqrt(v) for k, v in scores.items()})
    return scores


def _keep_count(n: int, prune_wanted: int, min_channels: int, round_to: int) -> int:
    keep = max(n - prune_wanted, min_channels, 1)
    if round_to > 1:
        keep = min(n, int(math.ceil(keep / round_to) * round_to))
    return min(keep, n)


def plan_pruning(
    model: ir.Model,
    *,
    ratio: float,
    importance: str = "l1",
    global_ranking: bool = False,
    min_channels: int = 1,
    round_to: int = 1,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    protect: list[str] | None = None,
    feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
    seed: int = 0,
) -> PrunePlan:
    """Analyse ``model`` (shapes are inferred in place) and choose the channels to remove."""
    if importance not in IMPORTANCE:
        raise SpecError(f"importance '{importance}' is not one of {', '.join(IMPORTANCE)}")
    infer_shapes(model)
    dg = DependencyGraph(model, protect=frozenset(protect or []))
    scores = _scores(dg, importance, feeds, seed)
    if importance == "bn_scale":
        fallback = _scores(dg, "l1", feeds, seed)
    rows: list[dict[str, Any]] = []
    eligible: list[Group] = []
    for group in dg.groups:
        row = {"group": group.index, "sources": group.sources, "channels": group.size, "kept": group.size, "pruned": 0}
        if group.refused:
            row["refused"] = group.refused[0] + (f" (+{len(group.refused) - 1} more)" if len(group.refused) > 1 else "")
        elif include and not _matches(group.sources, include):
            row["skipped"] = "not included"
        elif exclude and _matches(group.sources, exclude):
            row["skipped"] = "excluded"
        elif group.size <= min_channels:
            row["skipped"] = f"{group.size} channels <= min_channels"
        else:
            eligible.append(group)
        rows.append(row)
    group_scores: dict[int, np.ndarray] = {}
    for group in eligible:
        s = np.array([scores.get(c, 0.0) for c in group.channels])
        if importance == "bn_scale" and not any((p.role == "scale") for p in group.params):
            s = np.array([fallback.get(c, 0.0) for c in group.channels])
        group_scores[group.index] = s
    pruned: set[int] = set()
    threshold = None
    if global_ranking and eligible:
        normalized = np.concatenate([s / (s.mean() if s.mean() > 0 else 1.0) for s in group_scores.values()])
        threshold = float(np.quantile(normalized, ratio)) if ratio > 0 else -np.inf
    for group in eligible:
        s = group_scores[group.index]
        n = group.size
        if threshold is not None:
            norm = s / (s.mean() if s.mean() > 0 else 1.0)
            wanted = int((norm < threshold).sum())
        else:
            wanted = int(math.floor(ratio * n + 1e-9))
        keep = _keep_count(n, wanted, min_channels, round_to)
        order = np.argsort(s, kind="stable")
        drop = [group.channels[i] for i in order[: n - keep]]
        pruned.update(drop)
        rows[group.index].update({"kept": keep, "pruned": n - keep})
    return PrunePlan(dg, pruned, rows)


def apply_plan(model: ir.Model, plan: PrunePlan) -> dict[str, Any]:
    """Slice every parameter of the plan's groups in ``model`` (the model the plan was made on).

    Returns per-layer parameter counts before/after and ``r_p`` (the parameter-reduction rate).
    """
    graph = model.graph
    layers_before = _layer_params(model)
    slices: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for p in plan.graph.params:
        slices[p.name].setdefault(p.axis, plan.keep_mask(p.ids))
    record_pruned_channels(model, {name: by_axis for name, by_axis in slices.items() if not all(m.all() for m in by_axis.values())}, plan)
    for name, by_axis in slices.items():
        if all(mask.all() for mask in by_axis.values()):
            continue
        value = graph.initializers[name]
        arr = value.const_value.numpy()
        for axis, mask in by_axis.items():
            arr = np.compress(mask, arr, axis=axis)
        value.const_value = ir.tensor(np.ascontiguousarray(arr), name=name)
        value.shape = ir.Shape(arr.shape)
    for node, ids in plan.graph.group_fixups:
        node.attributes["group"] = ir.AttrInt64("group", int(plan.keep_mask(ids).sum()))
    for node, axis, ids, repeat in plan.graph.reshape_fixups:
        shape_value = node.inputs[1]
        if shape_value is None or shape_value.const_value is None:
            continue
        target = shape_value.const_value.numpy().copy()
        if target[axis] > 0:
            target[axis] = int(plan.keep_mask(ids).sum()) * repeat
            # the same shape constant may feed several Reshapes: each gets its own
            node.replace_input_with(1, add_initializer(graph, f"{shape_value.name}_pruned", target.astype(np.int64)))
    _reinfer(model)
    layers = {}
    after = _layer_params(model)
    for name, before in layers_before.items():
        now = after.get(name, before)
        layers[name] = {"params_before": before, "params_after": now, "r_p": round(1 - now / before, 4) if before else 0.0}
    return layers


#: model metadata: which channels of each sliced initializer the structured pruning kept, in
#: the numbering of the model the pruning began with (compressed runs of indices, "0-5,7"),
#: so the cut can be repeated on the torch module the model came from (:func:`graphpress.to_module`)
PRUNED_CHANNELS_KEY = "graphpress.pruned_channels"


def _runs(indices: np.ndarray) -> str:
    """Sorted indices as runs: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    indices = np.asarray(indices, dtype=np.int64)
    if not indices.size:
        return ""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in np.split(indices, breaks))


def parse_runs(text: str) -> np.ndarray:
    """The indices of a :data:`PRUNED_CHANNELS_KEY` entry."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return np.array(out, dtype=np.int64)


def pruned_channels(model: ir.Model) -> dict[str, dict[str, Any]]:
    """The :data:`PRUNED_CHANNELS_KEY` record of ``model``: initializer name -> ``shape`` (before
    any pruning), ``layer`` (the consuming layer's label), ``kept`` (axis -> kept indices)."""
    import json

    text = model.metadata_props.get(PRUNED_CHANNELS_KEY)
    if not text:
        return {}
    return {name: {**e, "kept": {int(a): parse_runs(k) for a, k in e["kept"].items()}} for name, e in json.loads(text).items()}


def record_pruned_channels(model: ir.Model, slices: dict[str, dict[int, np.ndarray]], plan: PrunePlan) -> None:
    """Add this cut to ``model``'s record, composed with any earlier cut of the same tensor."""
    import json

    if not slices:
        return
    record = pruned_channels(model)
    layer_of = {}
    for node in plan.graph.model.graph:
        for v in node.inputs[1:2]:
            if v is not None and v.name in slices:
                layer_of.setdefault(v.name, DependencyGraph.label(node))
    for name, by_axis in slices.items():
        shape = [int(d) for d in model.graph.initializers[name].const_value.shape]
        entry = record.setdefault(name, {"shape": shape, "layer": layer_of.get(name, ""), "kept": {}})
        for axis, mask in by_axis.items():
            before = entry["kept"].get(axis, np.arange(shape[axis]))
            entry["kept"][axis] = before[np.flatnonzero(mask)]
    model.metadata_props[PRUNED_CHANNELS_KEY] = json.dumps(
        {name: {**e, "kept": {str(a): _runs(np.asarray(k)) for a, k in e["kept"].items()}} for name, e in record.items()}, sort_keys=True
    )


def _layer_params(model: ir.Model) -> dict[str, int]:
    out = {}
    for node in model.graph:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            n = sum(int(np.prod(v.const_value.shape)) for v in node.inputs if v is not None and v.const_value is not None)
            if n:
                out[DependencyGraph.label(node)] = n
    return out


def _reinfer(model: ir.Model) -> None:
    graph = model.graph
    keep = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs} | {id(v) for v in graph.initializers.values()}
    for node in graph:
        for out in node.outputs:
            if id(out) not in keep:
                out.shape = None
    infer_shapes(model)


def masked_reference(model: ir.Model, plan: PrunePlan) -> ir.Model:
    """A copy of ``model`` where every removed channel's consumer weights are zero.

    The removed channels then influence nothing downstream, which is exactly what deleting them
    does: the pruned model must compute the same outputs (within fp32 rounding).
    """
    copy = clone(model)
    for p in plan.graph.params:
        if p.role != "consumer":
            continue
        mask = plan.keep_mask(p.ids)
        if mask.all():
            continue
        value = copy.graph.initializers[p.name]
        arr = value.const_value.numpy().copy()
        index = [slice(None)] * arr.ndim
        index[p.axis] = ~mask
        arr[tuple(index)] = 0
        value.const_value = ir.tensor(arr, name=p.name)
    return copy


def prune_progressive(
    model: ir.Model, metric, *, tolerance: float, max_ratio: float = 0.9, step: float = 0.1, recover=None, **options: Any
) -> tuple[float, list[dict[str, float]]]:
    """Prune ``model`` in place at the largest ratio (``step``, ``2*step``, ... ``max_ratio``) whose
    ``metric(model)`` (higher is better, e.g. held-out accuracy) stays within ``tolerance`` of the
    unpruned model's; stops at the first ratio that falls outside.

    ``recover``: a function fine-tuning a pruned model (e.g. ``lambda m: graphpress.recover(m,
    teacher, data).model``). Then pruning is progressive in the training sense: each step cuts
    the *recovered* model of the step before further (to ``ratio`` of the original channels),
    fine-tunes it, and is judged after recovery; ``model`` ends as the last recovered step
    that stayed within ``tolerance``.

    Returns the chosen ratio (0.0: nothing passed, the model is unchanged) and the history
    ``[{"ratio", "metric", "params"}]``.
    """
    if recover is not None:
        return _progressive_recovered(model, metric, recover, tolerance, max_ratio, step, options)
    baseline = metric(model)
    history = [{"ratio": 0.0, "metric": baseline, "params": _params(model)}]
    best = 0.0
    ratios = [round(step * k, 6) for k in range(1, int(max_ratio / step + 1e-9) + 1)]
    for ratio in ratios:
        candidate = clone(model)
        plan = plan_pruning(candidate, ratio=ratio, **options)
        apply_plan(candidate, plan)
        value = metric(candidate)
        history.append({"ratio": ratio, "metric": value, "params": _params(candidate)})
        if value < baseline - tolerance:
            break
        best = ratio
    if best > 0:
        apply_plan(model, plan_pruning(model, ratio=best, **options))
    return best, history


def _progressive_recovered(model: ir.Model, metric, recover, tolerance: float, max_ratio: float, step: float, options: dict) -> tuple[float, list]:
    baseline = metric(model)
    history = [{"ratio": 0.0, "metric": baseline, "params": _params(model)}]
    best, kept, current, done = 0.0, None, model, 0.0
    for k in range(1, int(max_ratio / step + 1e-9) + 1):
        ratio = round(step * k, 6)
        candidate = clone(current)
        apply_plan(candidate, plan_pruning(candidate, ratio=1 - (1 - ratio) / (1 - done), **options))  # to `ratio` of the original
        candidate = recover(candidate)
        value = metric(candidate)
        history.append({"ratio": ratio, "metric": value, "params": _params(candidate), "recovered": True})
        if value < baseline - tolerance:
            break
        best, kept, current, done = ratio, candidate, candidate, ratio
    if kept is not None:  # the model becomes the last recovered step that passed
        model.graph = kept.graph
        model.metadata_props.update(kept.metadata_props)
    return best, history


def _params(model: ir.Model) -> int:
    return int(sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None))


@register
class Prune(Pass):
    """Structured pruning of channels/filters/neurons by dependency group (see the module docstring)."""

    name = "prune"
    #: rewrites with opset-13+ ops (Squeeze/Slice inputs, per-channel QDQ); the same opset as a torch export
    min_opset = 20
    family = "pruning"
    uses_samples = True
    description = "remove channels, filters and FFN neurons by dependency group (or mask: unstructured, N:M)"

    @dataclasses.dataclass
    class Options:
        ratio: float = option(0.5, help="fraction of each group's channels (or of weights, for masks) to remove", min=0.0, max=0.99)
        mode: str = option("structured", help="structured: remove channels; unstructured/nm: mask weights", choices=("structured", "unstructured", "nm"))
        importance: str = option("l1", help="channel score", choices=IMPORTANCE)
        global_: bool = option(False, help="one threshold across groups instead of the same ratio per group")
        min_channels: int = option(1, help="never keep fewer channels in a group", min=1)
        round_to: int = option(1, help="keep a multiple of this many channels (e.g. 8 or 16 for SIMD)", min=1)
        include: str = option("", help="only groups whose source node names contain one of these ('|'-separated)")
        exclude: str = option("", help="skip groups whose source node names contain one of these ('|'-separated)")
        protect: str = option("", help="node names whose output channels are kept ('|'-separated)")
        n: int = option(2, help="N of N:M sparsity (mode=nm)", min=1)
        m: int = option(4, help="M of N:M sparsity (mode=nm)", min=2)
        scope: str = option("layer", help="unstructured sparsity per layer or global", choices=("layer", "global"))
        tolerance: float = option(
            0.0, help="> 0: progressive: the largest ratio (in steps of 0.1 up to ratio) whose output cosine drops at most this", min=0.0, max=1.0
        )
        seed: int = option(0, help="seed for random importance and calibration inputs", min=0)
        reconstruct: bool = option(False, help="refit the matrix products that read removed channels on the calibration samples (least squares)")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.mode == "nm" and self.options.n >= self.options.m:
            raise SpecError(f"pass 'prune': n={self.options.n} must be smaller than m={self.options.m}")

    def call(self, model: ir.Model) -> PassResult:
        o = self.options
        if o.mode != "structured":
            from graphpress.passes.pruning.sparsity import apply_sparsity

            stats = apply_sparsity(model, mode=o.mode, ratio=o.ratio, n=o.n, m=o.m, scope=o.scope, exclude=_split(o.exclude))
            # masks change the function and have no exact reference but themselves: measure them
            # with an accuracy metric (benchmarks/pruning.py, plan_progressive)
            stats["verified_against"] = "the masked model itself"
            reference = clone(model) if stats["weights_zeroed"] else None
            return PassResult(model, stats["weights_zeroed"] > 0, stats, reference=reference)
        ratio = o.ratio
        history = None
        if o.tolerance > 0:
            probe = clone(model)
            metric = output_similarity(probe, self.context.feeds(probe, seed=o.seed))
            ratio, history = prune_progressive(
                probe, metric, tolerance=o.tolerance, max_ratio=o.ratio, importance=o.importance, global_ranking=o.global_,
                min_channels=o.min_channels, round_to=o.round_to, include=_split(o.include), exclude=_split(o.exclude),
                protect=_split(o.protect), seed=o.seed,
            )  # fmt: skip
        plan = plan_pruning(
            model,
            ratio=ratio,
            importance=o.importance,
            global_ranking=o.global_,
            min_channels=o.min_channels,
            round_to=o.round_to,
            include=_split(o.include),
            exclude=_split(o.exclude),
            protect=_split(o.protect),
            feeds=[dict(f) for f in self.context.samples[:RECONSTRUCT_SAMPLES]] if self.context.samples else None,
            seed=o.seed,
        )
        refit = self._reconstruct(model, plan) if o.reconstruct and plan.pruned else None
        params_before = sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)
        reference = masked_reference(model, plan) if plan.pruned else None
        layers = apply_plan(model, plan) if plan.pruned else {}
        params_after = sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)
        refused = {", ".join(r["sources"][:3]): r["refused"] for r in plan.groups if "refused" in r}
        stats = {
            "groups": len(plan.groups),
            "groups_pruned": sum(1 for r in plan.groups if r["pruned"]),
            "groups_refused": len(refused),
            "channels_removed": plan.channels_removed,
            "params_before": int(params_before),
            "params_after": int(params_after),
            "r_p": round(1 - params_after / params_before, 4) if params_before else 0.0,
            "refused": refused,
            "layers": {k: v for k, v in layers.items() if v["r_p"] > 0},
        }
        if history is not None:
            stats["progressive"] = {"chosen_ratio": ratio, "metric": "min output cosine", "history": history}
        if refit is not None:
            stats["reconstruct"] = refit
        return PassResult(model, plan.channels_removed > 0, stats, reference=reference)

    def _reconstruct(self, model: ir.Model, plan: PrunePlan) -> dict[str, Any]:
        """Refit the layers reading removed channels on the user's samples (none made up: a
        refit on random inputs would fit noise)."""
        from graphpress.passes.pruning.reconstruct import reconstruct_consumers

        if not self.context.samples:
            return {"skipped": "no samples given: the refit needs real inputs (--samples)"}
        samples = [dict(f) for f in self.context.samples[:RECONSTRUCT_SAMPLES]]
        return reconstruct_consumers(model, plan, samples, lambda m: masked_reference(m, plan))


def _split(text: str) -> list[str]:
    return [t for t in text.split("|") if t]
