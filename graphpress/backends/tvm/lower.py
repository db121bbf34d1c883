"""Lower the IR to a TVM Relax module through ``tvm.relax.frontend.onnx``, and prepare it for that.

:func:`prepare_for_lowering` works on a copy: model-local functions inlined, shared weights
dense again, :data:`PREPARE_SPEC` applied (TVM folds neither constants through shape ops nor
BatchNorm into conv weights).

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
from graphpress.ir.analysis import with_input_shapes
from graphpress.ir.io import to_proto

__all__ = ["PREPARE_SPEC", "bind_input_shapes", "output_specs", "prepare_for_lowering", "set_input_shapes", "to_relax", "unsupported_ops"]


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


#: Graph passes run (on a copy) before lowering: TVM folds neither constants through shape ops
#: nor BatchNorm into conv weights.
PREPARE_SPEC = "cleanup,fold_batchnorm,cleanup"


def prepare_for_lowering(
    model: ir.Model, spec: str = PREPARE_SPEC, shapes: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with model-local functions inlined (TVM's importer has no functions; the
    ``fuse`` pass writes attention as one), its inputs given the static ``shapes`` the artifact is
    built for (so ``spec``'s folding turns shape arithmetic -- Shape, Gather, Concat into a
    Reshape -- into constants TVM's importer needs), and ``spec`` applied (invariants checked);
    the input is not changed."""
    import onnx_ir.passes.common as common_passes

    from graphpress.passes import InvariantInstrument, PassManager, build_passes
    from graphpress.passes.share import TAG, Unshare

    copy = ir.serde.deserialize_model(to_proto(model))
    inlined = len(copy.functions)
    if inlined:
        common_passes.InlinePass()(copy)
        common_passes.RemoveUnusedFunctionsPass()(copy)
    # weight-sharing lookups (codebook[indices]) become dense weights again: the dense kernels
    # are what TVM schedules, and a lookup per inference only adds work (benchmarks/compression.py)
    unshared = Unshare()(copy).stats["folded_lookups"] if any(TAG in n.metadata_props for n in copy.graph) else 0
    info: dict[str, Any] = {"spec": spec, "inlined_functions": inlined, "unshared_lookups": unshared}
    if shapes:
        try:
            set_input_shapes(copy, shapes)
        except Exception as e:  # onnx's inference refuses the graph: lowering goes on with what it has
            info["shape_inference"] = f"failed ({one_line(e, 200)})"
    result = PassManager(build_passes(spec), [InvariantInstrument()]).run(copy) if spec else None
    stats = result.stats() if result is not None else {}
    return copy, {**info, "folded_bn": stats.get("folded_bn", 0)}


def set_input_shapes(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]]) -> None:
    """Give the inputs their static shapes and infer the rest (the int8 plan needs M of every layer)."""
    import onnx_ir.passes.common as common_passes

    with_input_shapes(model, {name: spec["shape"] for name, spec in shapes.items()})  # symbolic shapes forgotten
    common_passes.ShapeInferencePass()(model)


def output_specs(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    outs = []
    for value in model.graph.outputs:
        shape = None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
        outs.append({"name": value.name, "dtype": value.dtype.numpy().name if value.dtype else None, "shape": shape})
    return outs
