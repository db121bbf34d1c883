"""Structured pruning (``prune``): remove whole channels, filters and FFN neurons by dependency group.

The analysis (:mod:`.groups`) finds the groups; the pass scores each channel (``importance``),
picks the channels to drop per group (``ratio``) or across groups (``global``), and slices every
parameter of the group, so the graph becomes physically smaller. Correctness is defined against
the *zero-masked reference*: the same model with the dropped channels' consumer weights set to
zero (:func:`masked_reference`); the pruned model must equal it within the ``pruning`` tolerance.
``mode=unstructured`` and ``mode=nm`` only mask weights (see :mod:`.sparsity`).
"""

from graphpress.passes.pruning.groups import DependencyGraph, Group, ParamSlice
from graphpress.passes.pruning.prune import (
    Prune,
    PrunePlan,
    apply_plan,
    masked_reference,
    plan_pruning,
    prune_progressive,
)
from graphpress.passes.pruning.torch_apply import apply_plan_to_module

__all__ = [
    "DependencyGraph",
    "Group",
    "ParamSlice",
    "Prune",
    "PrunePlan",
    "apply_plan",
    "apply_plan_to_module",
    "masked_reference",
    "plan_pruning",
    "prune_progressive",
]
