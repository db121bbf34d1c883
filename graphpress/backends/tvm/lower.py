"""Lower the IR to a TVM Relax module through ``tvm.relax.frontend.onnx``.

TVM's ONNX importer is used rather than a second lowering of our own: it covers the ONNX
opset (opset 20 models included) and keeps the Relax module close to the graph. Shapes are
bound statically: a symbolic input dimension (``batch``, ``seq``) takes its value from
``input_shapes`` or defaults to 1, and the artifact records the shapes it was built for
(TVM's CPU schedules and tuning need static shapes).

An op the importer does not support is a :class:`~graphpress.errors.GraphpressError` that
names the op, the nodes and the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from graphpress.errors import GraphpressError, one_line
from graphpress.ir.io import to_proto

__all__ = ["bind_input_shapes", "to_relax", "unsupported_ops"]


def bind_input_shapes(model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Static shape and dtype of every graph input: ``{name: {"shape": [...], "dtype": "float32"}}``.

    Args:
        model: the model.
        input_shapes: shapes by input name; symbolic dims not given here become 1.
    """
    input_shapes = dict(input_shapes or {})
    names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    unknown = [n for n in input_shapes if n not in names]
    if unknown:
        raise GraphpressError(f"input shape given for '{unknown[0]}', which is not an input; inputs: {', '.join(names)}")
    bound: dict[str, dict[str, Any]] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.name in input_shapes:
            shape = [int(d) for d in input_shapes[value.name]]
            if value.shape is not None and len(shape) != len(value.shape):
                raise GraphpressError(f"input '{value.name}' has rank {len(value.shape)}, but its given shape has {len(shape)} dims")
        elif value.shape is None:
            raise GraphpressError(f"input '{value.name}' has no declared shape; give it (--input-shape {value.name}=1x3x224x224, or input_shapes in Python)")
        else:
            shape = [d if isinstance(d, int) else 1 for d in value.shape]
        dtype = value.dtype.numpy().name if value.dtype is not None else "float32"
        bound[value.name] = {"shape": shape, "dtype": dtype}
    return bound


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Ops of ``proto`` that TVM's ONNX importer cannot convert, with the names of their nodes."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"If", "Constant"}
    missing: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type not in supported or node.domain not in ("", "ai.onnx"):
            missing.setdefault(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}", []).append(node.name or "?")
    return missing


def to_relax(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]], target_name: str = "?"):
    """Import ``model`` into a Relax ``IRModule`` with the given static input shapes.

    Args:
        model: the model (not changed).
        shapes: from :func:`bind_input_shapes`.
        target_name: for error messages.
    """
    from tvm.relax.frontend.onnx import from_onnx

    proto = to_proto(model)
    missing = unsupported_ops(proto)
    if missing:
        first_op, nodes = next(iter(missing.items()))
        more = f" (and {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
        raise GraphpressError(
            f"target {target_name}: TVM cannot lower op {first_op} (node '{nodes[0]}'){more}; "
            "remove or replace it before compiling, or export ONNX for ONNX Runtime instead"
        )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    try:
        return from_onnx(
            proto,
            shape_dict={k: list(v["shape"]) for k, v in shapes.items()},
            dtype_dict={k: v["dtype"] for k, v in shapes.items()},
            opset=opset,
            keep_params_in_input=False,
        )
    except Exception as e:
        raise GraphpressError(f"target {target_name}: TVM's ONNX import failed ({one_line(e, 300, last=True)})") from e
