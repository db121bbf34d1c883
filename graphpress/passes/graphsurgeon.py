"""Run an existing onnx-graphsurgeon function as a graphpress pass.

Many deployment stacks already have ``def f(graph: gs.Graph) -> None`` scripts. The adapter
converts the model to a graphsurgeon ``Graph``, calls the function, runs graphsurgeon's
``cleanup().toposort()`` and brings the result back into onnx-ir, so the pass manager checks it
like any other pass (invariants, and numerics with ``--verify``)::

    import onnx_graphsurgeon as gs
    from graphpress.passes.graphsurgeon import graphsurgeon_pass

    @graphsurgeon_pass(name="drop_identities", family="exact")
    def drop_identities(graph: gs.Graph) -> None:
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            src, dst = node.inputs[0], node.outputs[0]
            for consumer in list(dst.outputs):
                consumer.inputs[consumer.inputs.index(dst)] = src
            if dst in graph.outputs:
                graph.outputs[graph.outputs.index(dst)] = src
            node.outputs.clear()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import onnx_ir as ir

from graphpress.ir.io import _materialize, to_proto
from graphpress.passes.base import Pass, PassResult, graph_counts
from graphpress.passes.registry import register

__all__ = ["GraphSurgeonPass", "graphsurgeon_pass"]


class GraphSurgeonPass(Pass):
    """A pass whose work is a graphsurgeon function (set ``function``; see :func:`graphsurgeon_pass`)."""

    function: ClassVar[Callable[[Any], Any]]
    family = "exact"

    def call(self, model: ir.Model) -> PassResult:
        import onnx_graphsurgeon as gs

        proto = _materialize(to_proto(model), model)  # graphsurgeon reads constants from the proto
        baseline = gs.export_onnx(gs.import_onnx(proto)).graph.SerializeToString(deterministic=True)
        graph = gs.import_onnx(proto)
        returned = type(self).function(graph)
        if isinstance(returned, gs.Graph):
            graph = returned
        graph.cleanup().toposort()
        new_proto = gs.export_onnx(graph)
        modified = new_proto.graph.SerializeToString(deterministic=True) != baseline
        if not modified:
            return PassResult(model, False, {"nodes_removed": 0})
        before = graph_counts(model)[0]
        new_proto.ir_version = proto.ir_version
        new_model = ir.serde.deserialize_model(new_proto)
        model.graph = new_model.graph
        for key in [k for k in model.functions if k not in new_model.functions]:
            del model.functions[key]
        return PassResult(model, True, {"nodes_removed": before - graph_counts(model)[0]})


def graphsurgeon_pass(
    function: Callable[[Any], Any] | None = None, *, name: str | None = None, family: str = "exact", description: str = ""
):
    """Decorator: register ``function(graph: gs.Graph) -> None`` as a pass (named after it by default)."""

    def wrap(fn: Callable[[Any], Any]) -> type[GraphSurgeonPass]:
        cls = type(
            f"GraphSurgeon_{fn.__name__}",
            (GraphSurgeonPass,),
            {
                "name": name or fn.__name__,
                "family": family,
                "description": description or (fn.__doc__ or "").strip().split("\n")[0] or f"graphsurgeon function {fn.__name__}",
                "function": staticmethod(fn),
                "__module__": fn.__module__,
                "__qualname__": f"GraphSurgeon_{fn.__name__}",
            },
        )
        return register(cls)

    return wrap(function) if function is not None else wrap
