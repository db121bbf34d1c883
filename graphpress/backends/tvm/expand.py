"""Ops TVM's importer lacks, or lowers differently from ONNX, replaced by their ONNX function bodies.

Many ONNX ops are defined by a *function*: a body of simpler ONNX ops that computes the same
thing (``LayerNormalization``, the opset-23 ``Attention``, ``RMSNormalization``,
``RotaryEmbedding``, ``Celu``, ``NegativeLogLikelihoodLoss``, ...). Where TVM's ONNX importer
has no converter for such an op, or has one that computes something else, the backend
replaces the node with that body before importing, so TVM lowers the simpler ops it knows.

The body comes from the op's schema in the ``onnx`` package, for the model's opset
(``OpSchema.get_function_with_opset_version``, or the context-dependent variant for the
node's attributes and input types), is attached as a model-local function called by the
node, and ``onnx.inliner`` inlines it (converting the body's ops to the model's opset). Only
ops in the default domain are expanded; anything left unsupported is named by
:func:`graphpress.backends.tvm.lower.unsupported_ops`.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx.inliner
from onnx import defs

from graphpress.passes.decompose import Decompose

__all__ = ["TvmDecompose", "expand_functions", "tvm_lowers_wrong", "tvm_needs_decomposed"]

_DOMAIN = "graphpress.expand"


def tvm_lowers_wrong(node: onnx.NodeProto) -> bool:
    """Default-domain nodes whose TVM converter computes something else than ONNX defines
    (found by ``benchmarks/conformance.py``)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Attention":  # TVM's converter is com.microsoft's Attention (num_heads, packed QKV)
        return True
    if node.op_type == "LayerNormalization":  # Mean and InvStdDev outputs are not produced
        return sum(1 for o in node.output if o) > 1
    if node.op_type == "SpaceToDepth":  # the mode attribute (opset 25's CRD) is ignored
        return attrs.get("mode", b"DCR") not in (b"DCR", "DCR")
    if node.op_type == "RMSNormalization":  # fails to lower for several axes
        return True
    return False


#: Resize parameters TVM's ``image.resize*d`` computes as ONNX defines them
_TVM_RESIZE_MODES = {"nearest", "linear", "cubic"}
_TVM_COORDINATE_MODES = {"half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nearest", "tf_crop_and_resize"}


def tvm_needs_decomposed(node) -> bool:
    """Whether the backend writes ``node`` (an ``onnx_ir`` node of an op
    :data:`graphpress.passes.decompose.DECOMPOSED_OPS` lists) as simpler ops before TVM sees it:
    every op TVM has no converter for, and the ``Resize`` nodes TVM lowers differently from ONNX
    (found by ``benchmarks/conformance.py``): ``antialias``, ``axes``, a
    ``keep_aspect_ratio_policy``, ``half_pixel_symmetric``, and ``linear``/``cubic`` by scales
    that do not give a whole output size (TVM derives its coordinates from the sizes, ONNX from
    the scales). Other Resize nodes TVM lowers itself, with less work than a matrix product."""
    op = node.op_type
    if op == "BatchNormalization":
        return node.attributes.get_int("training_mode", 0) == 1  # TVM computes inference mode only
    if op == "ConvTranspose":
        return node.attributes.get("output_shape") is not None  # TVM ignores output_shape
    if op != "Resize":
        return True
    attr = node.attributes
    mode = attr.get_string("mode", "nearest")
    if mode not in _TVM_RESIZE_MODES or attr.get_int("antialias", 0) or attr.get("axes") is not None:
        return True
    if attr.get_string("keep_aspect_ratio_policy", "stretch") != "stretch":
        return True
    if attr.get_string("coordinate_transformation_mode", "half_pixel") not in _TVM_COORDINATE_MODES:
        return True
    inputs = list(node.inputs) + [None] * 4
    x, scales, sizes = inputs[0], inputs[2], inputs[3]
    has_sizes = sizes is not None and (sizes.shape is None or any(d != 0 for d in sizes.shape))
    if mode != "nearest" and not has_sizes and scales is not None and scales.const_value is not None and x is not None and x.shape is not None:
        dims = list(x.shape)
        for d, s in zip(dims, scales.const_value.numpy().reshape(-1)):
            if isinstance(d, int) and abs(d * float(s) - round(d * float(s))) > 1e-6:
                return True
    return False


class TvmDecompose(Decompose):
    """:class:`~graphpress.passes.decompose.Decompose` of the nodes :func:`tvm_needs_decomposed` picks."""

    def wanted(self, node) -> bool:
        return tvm_needs_decomposed(node)


def _function_for(node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]) -> onnx.FunctionProto | None:
    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except defs.SchemaError:
        return None
    plain = [v for v in schema.function_opset_versions if v <= opset]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    fn = onnx.FunctionProto()
    try:
        if plain and (not dependent or max(plain) >= max(dependent)):
            fn.ParseFromString(schema.get_function_with_opset_version(max(plain)))
        elif dependent:
            with_defaults = _with_defaults(node, schema)
            input_types = [types.get(name, onnx.TypeProto()).SerializeToString() for name in node.input]
            fn.ParseFromString(
                schema.get_context_dependent_function_with_opset_version(max(dependent), with_defaults.SerializeToString(), input_types)
            )
        else:
            return None
    except Exception:  # the schema cannot build a body for this node (e.g. unknown input types)
        return None
    return fn if fn.node else None


def _with_defaults(node: onnx.NodeProto, schema) -> onnx.NodeProto:
    """The node with every attribute the schema gives a default for set explicitly."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    present = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in present and attr.default_value is not None and attr.default_value.name:
            out.attribute.append(attr.default_value)
    return out


def expand_functions(proto: onnx.ModelProto, should_expand: Callable[[onnx.NodeProto], bool], rounds: int = 3) -> tuple[onnx.ModelProto, list[str]]:
    """Replace the main graph's nodes that ``should_expand`` picks with their ONNX function bodies.

    Returns the new model and the op types expanded (one entry per node); nodes without a
    function body are left as they are.
    """
    expanded: list[str] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return proto, expanded
    for _ in range(rounds):
        picked = [i for i, n in enumerate(proto.graph.node) if n.domain in ("", "ai.onnx") and should_expand(n)]
        if not picked:
            break
        try:
            typed = onnx.shape_inference.infer_shapes(proto)
        except Exception:
            typed = proto
        types = {v.name: v.type for v in (*typed.graph.input, *typed.graph.value_info, *typed.graph.output)}
        for init in proto.graph.initializer:
            types.setdefault(init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)))
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        functions, count = [], 0
        for i in picked:
            node = out.graph.node[i]
            fn = _function_for(node, opset, types)
            if fn is None:
                continue
            schema = defs.get_schema(node.op_type, opset, node.domain)
            call = _with_defaults(node, schema)
            fn.name, fn.domain = f"{node.op_type}_{i}", _DOMAIN
            call.op_type, call.domain = fn.name, _DOMAIN
            node.CopyFrom(call)
            functions.append(fn)
            expanded.append(node.op_type.rsplit("_", 1)[0])
            count += 1
        if not count:
            break
        out.functions.extend(functions)
        out.opset_import.append(onnx.helper.make_opsetid(_DOMAIN, 1))
        for fn in functions:  # the bodies' own opsets (other domains) must be known to the model
            for imp in fn.opset_import:
                if imp.domain not in ("", "ai.onnx") and all(o.domain != imp.domain for o in out.opset_import):
                    out.opset_import.append(imp)
        out = onnx.inliner.inline_local_functions(out, convert_version=True)
        keep = [o for o in out.opset_import if o.domain != _DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
        proto = out
    return proto, expanded
