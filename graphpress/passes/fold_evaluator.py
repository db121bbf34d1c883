"""Constant folding that computes floating-point values the way the runtime does.

onnxscript's constant folder (0.7.2) evaluates nodes with ONNX's reference implementation
(numpy). For floating-point math its results can differ from ONNX Runtime's kernels in the
last bit -- ``Tan`` in float16, a ``ReduceSum``'s summation order -- and an op downstream can
magnify that: a folded ``Tan`` one float16 ulp off, then ``Ceil``, changed an output by 1
(found by ``make fuzz``, NNSmith seed 158). So a folded value should be what the runtime
would have computed: :func:`runtime_folding` makes the folder evaluate floating-point
single-output ops with ONNX Runtime, one node at a time, and everything else (shape
arithmetic, integer and data-movement ops, which are exact either way) with the reference
implementation, as before.

Workaround: onnxscript has no evaluator argument; this swaps its module-level
``_reference_evaluator`` for the duration of a fold. Delete when the folder takes an
evaluator (onnxscript's own comment there says "we could also use ORT's implementation").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnxscript.optimizer import _constant_folding

__all__ = ["runtime_folding"]

logger = logging.getLogger(__name__)

#: ops whose result is a copy or rearrangement of their inputs (or an IEEE conversion): exact
#: in any evaluator
_EXACT_OPS = {
    "Cast", "CastLike", "Concat", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Pad", "Reshape", "Shape", "Size",
    "Slice", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze", "Where", "ConstantOfShape", "Range", "Trilu",
}  # fmt: skip
_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
#: Half-precision math is not folded at all. ONNX Runtime computes float16 ops it has no
#: float16 kernel for in float32 and drops the rounding to float16 between two such ops
#: (``Ceil(Tan(x))`` sees the float32 tangent), so no node-by-node evaluation, its own
#: included, reproduces what the model computes at run time (NNSmith seed 158: a folded
#: ``Ceil(Tan(c))`` one off). Folding it would gain little: the runtime does it in float32.
_HALF = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


def _single_output(domain: str, op: str, version: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op, version, domain)
    except Exception:  # noqa: BLE001 - unknown op or version
        return False
    return len(schema.outputs) == 1 and schema.outputs[0].option != onnx.defs.OpSchema.FormalParameterOption.Variadic


def _ort_evaluate(domain: str, op: str, version: int, args: tuple, attributes: dict[str, Any]) -> np.ndarray:
    from graphpress.ir.numeric import run

    inputs, feeds, initializers = [], {}, []
    for i, arg in enumerate(args):
        if arg is None:
            inputs.append("")
            continue
        name = f"in{i}"
        inputs.append(name)
        array = np.asarray(arg)
        if array.dtype in _FLOATS:  # a value, as the runtime would get it from another node
            feeds[name] = array
        else:  # axes, shapes, indices: constant operands, as in the model
            initializers.append(onnx.numpy_helper.from_array(array, name))
    node = onnx.helper.make_node(op, inputs, ["out"], domain=domain or None, **attributes)
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in feeds.items()],
        [onnx.ValueInfoProto(name="out")], initializers,
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(domain, version)])
    model.ir_version = 10
    return run(model, feeds)["out"]


class _RuntimeEvaluator:
    """The folder's evaluator: floating-point math in ONNX Runtime, the rest as before."""

    def __init__(self, fallback):
        self.fallback = fallback

    def evaluate(self, domain: str, op: str, version: int, *args: Any, **kwargs: Any) -> Any:
        floats = any(isinstance(a, np.ndarray) and a.dtype in _FLOATS for a in args)
        if op not in _EXACT_OPS and any(isinstance(a, np.ndarray) and a.dtype in _HALF for a in args):
            return None  # not folded: see _HALF
        if floats and domain in ("", "ai.onnx") and op not in _EXACT_OPS and _single_output(domain, op, version):
            try:
                return _ort_evaluate(domain, op, version, args, kwargs)
            except Exception as e:  # noqa: BLE001 - an op/attribute ORT will not take alone: as before
                logger.debug("runtime folding of %s fell back to the reference implementation: %s", op, e)
        return self.fallback.evaluate(domain, op, version, *args, **kwargs)


@contextlib.contextmanager
def runtime_folding() -> Iterator[None]:
    """Within the block, onnxscript's folder computes floating-point values with ONNX Runtime,
    and a partial evaluator that raises leaves its node as it is instead of failing the pass.

    onnxscript 0.7.2's ``SplitToSequence`` evaluator reads ``split.ndim`` of a ``split`` input
    whose value is unknown and whose shape is a static scalar (onnx node test
    ``test_split_to_sequence_1``): ``AttributeError`` on ``None``. Partial evaluators are
    optimizations; skipping one keeps the node, which is always correct.
    """
    original = _constant_folding._reference_evaluator
    registry = _constant_folding.registry
    lookup = registry.lookup_evaluators

    def guarded_lookup(domain, opname, version):
        return [_skip_on_error(f) for f in lookup(domain, opname, version)]

    _constant_folding._reference_evaluator = _RuntimeEvaluator(original)
    registry.lookup_evaluators = guarded_lookup
    try:
        yield
    finally:
        _constant_folding._reference_evaluator = original
        del registry.lookup_evaluators  # the class's method again


def _skip_on_error(evaluator):
    def guarded(node, op, state):
        try:
            return evaluator(node, op, state)
        except Exception:  # an optimization that cannot handle this node: keep the node
            return None

    return guarded
