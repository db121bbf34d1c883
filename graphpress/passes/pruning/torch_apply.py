"""Apply a pruning plan made on the exported graph to the original ``torch.nn.Module``.

graphpress exports torch modules with their parameter names (``layer1.0.conv1.weight``), so
every parameter slice of the plan names the tensor to slice in the module's ``state_dict``.
Linear weights the exporter transposed (MatMul with a generated name) are found through the
bias that keeps its name, and sliced along the transposed axis. Afterwards the modules'
attributes are updated (Conv/ConvTranspose channels and groups, Linear features, BatchNorm
features, LayerNorm shapes, Hugging Face attention head counts), so the result is a smaller
module that trains like the original: fine-tune it, export it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphpress.errors import GraphpressError
from graphpress.passes.pruning.groups import DependencyGraph

__all__ = ["apply_plan_to_module"]


def torch_names(model, state: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """ONNX initializer name -> (state_dict key, transposed), for a model exported from the
    module ``state`` belongs to."""
    names: dict[str, tuple[str, bool]] = {name: (name, False) for name in state}
    for node in model.graph:
        if node.op_type != "MatMul" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1]
        if w.name in names or w.const_value is None:
            continue
        key = DependencyGraph.label(node) + ".weight"
        if key in state and tuple(state[key].shape[::-1]) == tuple(w.const_value.shape):
            names[w.name] = (key, True)
    return names


def apply_plan_to_module(module, plan) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Slice ``module``'s parameters and buffers in place as ``plan`` slices the graph.

    Returns ``{state_dict key: (old shape, new shape)}`` for every tensor that changed. Raises
    if a sliced initializer has no counterpart in the module (then the plan was not made on an
    export of this module).
    """
    import torch

    state = dict(module.state_dict())
    names = torch_names(plan.graph.model, state)
    masks: dict[str, dict[int, np.ndarray]] = {}
    for p in plan.graph.params:
        mask = plan.keep_mask(p.ids)
        if mask.all():
            continue
        if p.name not in names:
            raise GraphpressError(f"initializer '{p.name}' of the plan has no parameter in the module; make the plan on gp.load(module, ...)")
        key, transposed = names[p.name]
        axis = (state[key].dim() - 1 - p.axis) if transposed else p.axis
        masks.setdefault(key, {})[axis] = mask
    changed = {}
    with torch.no_grad():
        for key, by_axis in masks.items():
            tensor = state[key]
            new = tensor
            for axis, mask in by_axis.items():
                new = new.index_select(axis, torch.from_numpy(np.flatnonzero(mask)).to(tensor.device))
            owner, _, leaf = key.rpartition(".")
            sub = module.get_submodule(owner) if owner else module
            if leaf in sub._parameters:
                sub._parameters[leaf] = torch.nn.Parameter(new.clone(), requires_grad=tensor.requires_grad)
            else:
                sub._buffers[leaf] = new.clone()
            changed[key] = (tuple(tensor.shape), tuple(new.shape))
    _fix_attributes(module)
    return changed


def _fix_attributes(module) -> None:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            w = sub.weight
            if sub.transposed:
                sub.in_channels, sub.out_channels = w.shape[0], w.shape[1] * sub.groups
            else:
                if sub.groups > 1 and w.shape[1] == 1 and sub.groups == sub.in_channels:  # depthwise
                    sub.groups = w.shape[0]
                    sub.in_channels = w.shape[0]
                else:
                    sub.in_channels = w.shape[1] * sub.groups
                sub.out_channels = w.shape[0]
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, nn.modules.batchnorm._NormBase):
            ref = sub.weight if sub.weight is not None else sub.running_mean
            sub.num_features = ref.shape[0]
        elif isinstance(sub, nn.LayerNorm) and sub.weight is not None:
            sub.normalized_shape = tuple(sub.weight.shape)
        # Hugging Face attention: head count from the (pruned) query projection
        query = getattr(sub, "query", None)
        if isinstance(query, nn.Linear) and hasattr(sub, "attention_head_size"):
            heads = query.weight.shape[0] // sub.attention_head_size
            for attr in ("num_attention_heads", "num_heads"):
                if hasattr(sub, attr):
                    setattr(sub, attr, heads)
            if hasattr(sub, "all_head_size"):
                sub.all_head_size = heads * sub.attention_head_size
