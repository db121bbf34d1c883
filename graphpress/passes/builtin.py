"""The built-in passes: importing this module registers each of them (its module's ``@register``).

The one list of built-in pass modules. ``graphpress.passes`` imports it last, so the registry
(:mod:`graphpress.passes.registry`) knows every built-in pass without importing a pass module
itself: the registry is a leaf the passes import, not the other way round.
"""

from graphpress.passes import cleanup, decompose, dedup, fold_batchnorm, fusion, one_hot, parallel, pruning, quantization, recurrent, share, spectral  # noqa: F401

__all__: list[str] = []
