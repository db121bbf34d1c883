"""The one IR: onnx-ir, plus what it lacks -- loading, analyses, verification, numeric checks."""

from graphpress.ir.analysis import ModelSummary, infer_shapes, node_macs, summarize
from graphpress.ir.io import (
    DEFAULT_OPSET,
    from_graphsurgeon,
    from_torch,
    load,
    save,
    to_graphsurgeon,
    to_proto,
)
from graphpress.ir.numeric import (
    TOLERANCES,
    NumericReport,
    Tolerance,
    compare_models,
    first_divergence,
    load_inputs,
    make_inputs,
    tolerance_for,
)
from graphpress.ir.verify import check, verify

__all__ = [
    "DEFAULT_OPSET",
    "TOLERANCES",
    "ModelSummary",
    "NumericReport",
    "Tolerance",
    "check",
    "compare_models",
    "first_divergence",
    "from_graphsurgeon",
    "from_torch",
    "infer_shapes",
    "load",
    "load_inputs",
    "make_inputs",
    "node_macs",
    "save",
    "summarize",
    "to_graphsurgeon",
    "to_proto",
    "tolerance_for",
    "verify",
]
