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

import collections
import contextlib
import warnings

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import GraphpressError, one_line
from graphpress.ir.analysis import with_input_shapes
from graphpress.ir.io import _materialize, to_proto

__all__ = ["PREPARE_SPEC", "bind_input_shapes", "dynamic_dims", "shapes_of_samples", "freeze_inputs", "shape_deciding_inputs", "output_specs", "prepare_for_lowering", "set_input_shapes", "to_relax", "unsupported_ops"]


def bind_input_shapes(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    frozen: Mapping[str, Any] | None = None,
    dynamic: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Shape and dtype of every graph input: ``{name: {"shape": [...], "dtype": "float32"}}``.

    Args:
        model: the model.
        input_shapes: shapes by input name; symbolic dims not given here become 1.
        frozen: inputs the artifact fixes to a value (:func:`freeze_inputs`): not inputs of the artifact.
        dynamic: symbolic dims that stay symbolic (:func:`dynamic_dims`): their entry in the
            shape is the dim's name, a string.
    """
    input_shapes = dict(input_shapes or {})
    names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    unknown = [n for n in input_shapes if n not in names]
    if unknown:
        raise GraphpressError(f"input shape given for '{unknown[0]}', which is not an input; inputs: {', '.join(names)}")
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.type is not None and not isinstance(value.type, ir.TensorType):
                raise GraphpressError(
                    f"{kind} '{value.name}' is a {value.type} (not a tensor): the TVM backend compiles models whose inputs and "
                    "outputs are tensors; export ONNX for ONNX Runtime instead"
                )
    kept = dynamic_dims(model, dynamic) if dynamic else {}
    bound: dict[str, dict[str, Any]] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.name in (frozen or {}):
            continue
        if value.name in input_shapes:
            shape = [int(d) for d in input_shapes[value.name]]
            if value.shape is not None and len(shape) != len(value.shape):
                raise GraphpressError(f"input '{value.name}' has rank {len(value.shape)}, but its given shape has {len(shape)} dims")
        elif value.shape is None:
            raise GraphpressError(f"input '{value.name}' has no declared shape; give it (--input-shape {value.name}=1x3x224x224, or input_shapes in Python)")
        else:
            shape = [d if isinstance(d, int) else 1 for d in value.shape]
        for dim, places in kept.items():
            for name, axis in places:
                if name == value.name:
                    shape[axis] = dim
        dtype = value.dtype.numpy().name if value.dtype is not None else "float32"
        bound[value.name] = {"shape": shape, "dtype": dtype}
    return bound


def shapes_of_samples(model: ir.Model, samples, given: Mapping[str, Sequence[int]] | None, where: str, dynamic: dict | None = None) -> dict:
    """``given`` plus, for each input with symbolic dims that ``given`` leaves out, the shape of
    its samples: the artifact is built for the inputs the user gave, not for dims bound to 1.
    Dims that stay dynamic (``{dim: [(input, axis)]}``) may differ between samples."""
    free = {place for places in (dynamic or {}).values() for place in places}
    bound = dict(given or {})
    for value in model.graph.inputs:
        if value.name in bound or value.name in model.graph.initializers or value.shape is None:
            continue
        if all(isinstance(d, int) for d in value.shape):
            continue
        seen = sorted({tuple(-1 if (value.name, a) in free else int(d) for a, d in enumerate(sample[value.name].shape))
                       for sample in samples if value.name in sample})  # fmt: skip
        if len(seen) > 1:
            raise GraphpressError(
                f"{where}: input '{value.name}' has samples of {len(seen)} shapes ({', '.join('x'.join(map(str, s)) for s in seen[:3])}); "
                "an artifact is built for one shape: give samples of one shape or --input-shape"
            )
        if seen:
            bound[value.name] = [1 if d < 0 else d for d in seen[0]]  # a dynamic dim's entry is not used
    return bound


def dynamic_dims(model: ir.Model, names: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """Where the symbolic dims ``names`` are: ``{dim: [(input, axis), ...]}``.

    A name is a symbolic dim the model declares (``seq``, ``batch_size``); ``batch`` also
    names the first axis of every input whose first dim is symbolic, whatever its name (the
    dim is then called ``batch``). A name that matches no symbolic dim is a
    :class:`GraphpressError` listing the ones there are.
    """
    found: dict[str, list[tuple[str, int]]] = {}
    available: list[str] = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None:
            continue
        for axis, d in enumerate(value.shape):
            if isinstance(d, int):
                continue
            declared = d.value if isinstance(d.value, str) else None
            available.append(f"{declared or '?'} ({value.name} axis {axis})")
            if declared is not None and declared in names:
                found.setdefault(declared, []).append((value.name, axis))
            elif axis == 0 and "batch" in names:
                found.setdefault("batch", []).append((value.name, axis))
    missing = [n for n in names if n not in found]
    if missing:
        raise GraphpressError(
            f"dynamic dim '{missing[0]}' is not a symbolic dim of the model's inputs; symbolic dims: {', '.join(available) or 'none (every input shape is static)'}"
        )
    return found


#: inputs of these ops that TVM needs as constants: they decide output shapes (or, for ``If``,
#: which branch runs), and Relax builds for static shapes
_SHAPE_SLOTS = {
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze", "TopK", "Split",
                           "Expand", "Reshape", "Tile", "OneHot", "CenterCropPad", "Upsample", "CumSum", "CumProd", "Trilu")},
    "Resize": (1, 2, 3), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "If": (0,), "NonMaxSuppression": (2, 3, 4), "LSTM": (4,), "GRU": (4,), "RNN": (4,),  # sequence_lens: unrolled per length
    "Loop": (0, 1),  # the trip count and the first condition: unrolled per count
    "AffineGrid": (1,), "Col2Im": (1, 2), "MaxUnpool": (2,),
}  # fmt: skip


#: ops whose outputs depend on their input's shape or type only, never its values
_SHAPE_ONLY = frozenset({"Shape", "Size", "EyeLike", "RandomNormalLike", "RandomUniformLike", "CastLike"})

#: an input with more elements than this is data, never a parameter to fix
MAX_FROZEN_ELEMENTS = 64


def shape_deciding_inputs(model: ir.Model) -> dict[str, str]:
    """Small graph inputs (static shape, at most :data:`MAX_FROZEN_ELEMENTS` elements) whose
    *values* reach an input TVM needs constant (``TopK``'s ``k``, a ``Reshape`` shape, an ``If``
    condition, ...), through ops that read values (not ``Shape``/``Size``): ``{name: "TopK 'node'"}``."""
    found: dict[str, str] = {}
    initializers = set(model.graph.initializers)
    # uses by name, subgraphs included (a branch's reference to an outer value is a use by a
    # node inside it, and what the branch computes leaves through the node that holds it)
    uses: dict[str, list[tuple[ir.Node, int, ir.Node]]] = collections.defaultdict(list)

    def visit(graph, holder: ir.Node | None) -> None:
        for node in graph:
            for i, inp in enumerate(node.inputs):
                if inp is not None:
                    uses[inp.name].append((node, i, holder or node))
            for attr in node.attributes.values():
                for sub in (attr.value if attr.type == ir.AttributeType.GRAPHS else [attr.value] if attr.type == ir.AttributeType.GRAPH else []):
                    visit(sub, holder or node)

    visit(model.graph, None)
    for value in model.graph.inputs:
        if value.name in initializers or (value.type is not None and not isinstance(value.type, ir.TensorType)):
            continue
        dims = list(value.shape) if value.shape is not None else None
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims) or int(np.prod(dims, dtype=np.int64)) > MAX_FROZEN_ELEMENTS:
            continue
        seen, frontier = {value.name}, [value.name]
        while frontier and value.name not in found:
            name = frontier.pop()
            for node, index, holder in uses.get(name, ()):
                slots = _SHAPE_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
                if index in slots:
                    found[value.name] = f"{node.op_type} '{node.name or '?'}'"
                    break
                if node.op_type in _SHAPE_ONLY and node.domain in ("", "ai.onnx"):
                    continue  # its outputs do not depend on the value
                for out in (*node.outputs, *(holder.outputs if holder is not node else ())):
                    if out is not None and out.name not in seen:
                        seen.add(out.name)
                        frontier.append(out.name)
    return found


def freeze_inputs(model: ir.Model, samples: Sequence[Mapping[str, Any]] | None) -> dict[str, np.ndarray]:
    """The values the artifact fixes for the :func:`shape_deciding_inputs`, taken from ``samples``
    (the same in every sample, or a :class:`GraphpressError`); none without samples."""
    deciding = shape_deciding_inputs(model)
    if not deciding or not samples:
        return {}
    frozen = {}
    for name, where in deciding.items():
        values = [np.asarray(s[name]) for s in samples if name in s and not isinstance(s[name], (list, tuple))]
        if not values:
            continue
        if any(v.shape != values[0].shape or not np.array_equal(v, values[0]) for v in values[1:]):
            raise GraphpressError(
                f"input '{name}' decides shapes ({where}) and TVM builds for static shapes, but the samples give it different "
                "values: compile once per value, with samples that agree"
            )
        frozen[name] = values[0]
    return frozen


def _freeze(model: ir.Model, frozen: Mapping[str, np.ndarray]) -> None:
    """Turn the frozen inputs of ``model`` into initializers holding their values."""
    from graphpress.ir.edit import add_initializer

    for value in list(model.graph.inputs):
        if value.name in frozen:
            want = value.dtype.numpy() if value.dtype is not None else np.asarray(frozen[value.name]).dtype
            const = add_initializer(model.graph, f"{value.name}_frozen", np.asarray(frozen[value.name], dtype=want))
            model.graph.inputs.remove(value)
            value.replace_all_uses_with(const)


#: ops with an ONNX function body that are not expanded for TVM: random (the check against
#: ONNX Runtime could not pass) or over sequences (not lowered)
NOT_EXPANDED = frozenset({"Bernoulli", "SequenceMap"})


def tvm_supported_ops() -> set[str]:
    """The default-domain ops TVM's ONNX importer converts (``If`` and ``Constant`` it handles itself),
    with graphpress's own converters (:mod:`graphpress.backends.tvm.converters`)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from graphpress.backends.tvm.converters import corrected_converters

    with corrected_converters():
        return set(onnx_frontend._get_convert_map()) | {"If", "Constant"}


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Ops of ``proto`` (subgraphs included) that TVM's ONNX importer cannot convert, with the
    names of their nodes (an unnamed node by its position: ``#3``, ``If 'cond' then-branch #0``)."""
    supported = tvm_supported_ops()
    missing: dict[str, list[str]] = {}

    def visit(graph: onnx.GraphProto, where: str) -> None:
        for i, node in enumerate(graph.node):
            label = f"{where}{node.name or f'#{i}'}"
            if node.op_type not in supported or node.domain not in ("", "ai.onnx"):
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                missing.setdefault(op, []).append(label)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, f"{label} {attr.name} > ")

    visit(proto.graph, "")
    return missing


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """``Constant`` nodes with an *empty* ``value_ints``/``value_floats`` written with a ``value``
    tensor instead: TVM's attribute parser cannot tell an empty list's type (a folded ``Shape``
    with ``start > end`` is one)."""
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for i, attr in enumerate(node.attribute):
            if attr.name in ("value_ints", "value_floats") and not (attr.ints or attr.floats):
                dtype = np.int64 if attr.name == "value_ints" else np.float32
                del node.attribute[i]
                node.attribute.append(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(np.zeros(0, dtype))))
                break


def to_relax(model: ir.Model, shapes: Mapping[str, Mapping[str, Any]], target_name: str = "?"):
    """Import ``model`` into a Relax ``IRModule`` with the given static input shapes.

    Args:
        model: the model (not changed).
        shapes: from :func:`bind_input_shapes`.
        target_name: for error messages.
    """
    from tvm.relax.frontend.onnx import from_onnx

    from graphpress.backends.tvm.converters import corrected_converters

    proto = _materialize(to_proto(model), model)  # TVM's importer reads external data relative to the working directory
    _constants_as_tensors(proto.graph)
    missing = unsupported_ops(proto)
    if missing:
        first_op, nodes = next(iter(missing.items()))
        more = f" (and {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
        raise GraphpressError(
            f"target {target_name}: TVM cannot lower op {first_op} (node '{nodes[0]}'){more}; "
            "remove or replace it before compiling, or export ONNX for ONNX Runtime instead"
        )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    import tvm

    symbols: dict[str, Any] = {}  # one variable per dynamic dim, shared by the inputs that have it
    shape_dict = {k: [symbols.setdefault(d, tvm.tirx.Var(d, "int64")) if isinstance(d, str) else d for d in v["shape"]] for k, v in shapes.items()}
    try:
        with corrected_converters(), warnings.catch_warnings():
            # the importer runs ONNX's checker first and warns what it finds: the int8 guard's marks
            # (attributes named _graphpress_*, which the converters read) are not ONNX's
            warnings.filterwarnings("ignore", message=r"Unrecognized attribute: _graphpress_", category=UserWarning)
            return from_onnx(
                proto,
                shape_dict=shape_dict,
                dtype_dict={k: v["dtype"] for k, v in shapes.items()},
                opset=opset,
                keep_params_in_input=False,
            )
    except Exception as e:
        hint = "; TVM's importer could not follow the dynamic dims through the model: compile without them (static shapes)" if symbols else ""
        raise GraphpressError(f"target {target_name}: TVM's ONNX import failed ({one_line(e, 300, last=True)}){hint}") from e


#: Graph passes run (on a copy) before lowering: TVM folds neither constants through shape ops
#: nor BatchNorm into conv weights, and has no recurrent ops (LSTM/GRU/RNN are unrolled over
#: their static sequence length: :mod:`graphpress.passes.recurrent`), nor STFT (a DFT by MatMul:
#: :mod:`graphpress.passes.spectral`); convolutions of one input become one
#: (:mod:`graphpress.passes.parallel`: the input read once, the channels in fuller vectors).
PREPARE_SPEC = "cleanup,unroll_recurrent,decompose_stft,one_hot_gather,fold_batchnorm,merge_parallel_convs,cleanup"


def prepare_for_lowering(
    model: ir.Model, spec: str = PREPARE_SPEC, shapes: Mapping[str, Mapping[str, Any]] | None = None, frozen: Mapping[str, Any] | None = None
) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with model-local functions inlined (TVM's importer has no functions; the
    ``fuse`` pass writes attention as one), its inputs given the static ``shapes`` the artifact is
    built for (so ``spec``'s folding turns shape arithmetic -- Shape, Gather, Concat into a
    Reshape -- into constants TVM's importer needs), and ``spec`` applied (invariants checked);
    the input is not changed."""
    import onnx_ir.passes.common as common_passes

    from graphpress.ir.external_data import rebase
    from graphpress.passes import InvariantInstrument, PassManager, build_passes
    from graphpress.passes.share import TAG, Unshare

    from graphpress.backends.tvm.expand import TvmDecompose, expand_functions, tvm_lowers_wrong

    supported = tvm_supported_ops()
    proto, expanded = expand_functions(
        to_proto(model), lambda n: (n.op_type not in supported and n.op_type not in NOT_EXPANDED) or tvm_lowers_wrong(n)
    )
    copy = rebase(ir.serde.deserialize_model(proto), model)
    if frozen:
        _freeze(copy, frozen)
    inlined = len(copy.functions)
    if inlined:
        common_passes.InlinePass()(copy)
        common_passes.RemoveUnusedFunctionsPass()(copy)
    # weight-sharing lookups (codebook[indices]) become dense weights again: the dense kernels
    # are what TVM schedules, and a lookup per inference only adds work (benchmarks/compression.py)
    unshared = Unshare()(copy).stats["folded_lookups"] if any(TAG in n.metadata_props for n in copy.graph) else 0
    info: dict[str, Any] = {"spec": spec, "inlined_functions": inlined, "unshared_lookups": unshared}
    if expanded:
        info["expanded_to_function_bodies"] = dict(collections.Counter(expanded))
    if shapes:
        try:
            set_input_shapes(copy, shapes)
        except Exception as e:  # onnx's inference refuses the graph: lowering goes on with what it has
            info["shape_inference"] = f"failed ({one_line(e, 200)})"
    result = PassManager(build_passes(spec), [InvariantInstrument()]).run(copy) if spec else None
    stats = result.stats() if result is not None else {}
    if spec:  # ops TVM lacks or lowers wrong, written as simpler ones now that shapes are static
        decomposed = PassManager([TvmDecompose()], [InvariantInstrument()]).run(copy).records[0].stats
        if decomposed.get("decomposed"):
            info["decomposed"] = decomposed.get("ops", {})
            with contextlib.suppress(Exception):
                PassManager(build_passes("cleanup"), [InvariantInstrument()]).run(copy)
    if shapes and (stats.get("unrolled") or stats.get("decomposed")):
        # ONNX's shape inference may have failed on what was replaced (its STFT rule gets a
        # rank-2 signal wrong): infer again and fold what the new static shapes make constant
        with contextlib.suppress(Exception):
            set_input_shapes(copy, shapes)
            PassManager(build_passes("cleanup"), [InvariantInstrument()]).run(copy)
    return copy, {**info, "folded_bn": stats.get("folded_bn", 0), "unrolled_recurrent": stats.get("unrolled", 0),
                  "decomposed_stft": stats.get("decomposed", 0), "one_hot_gathers": stats.get("one_hot_gathers", 0), "merged_parallel_convs": stats.get("merged", 0)}  # fmt: skip


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
