"""IR invariants, checked between passes.

:func:`verify` walks the main graph and every subgraph and collects *all* violations
before raising one :class:`~graphpress.errors.InvariantError` that lists them:

* topological order: every node input is a graph input, an initializer, a value visible
  from an enclosing graph, or the output of an earlier node;
* one producer per value: each node output's ``producer()`` is that node, and no two
  values of a graph share a name;
* no dangling uses: every use recorded on a value points at a node that is in a graph and
  has that value at that input index, and every node input is recorded as a use;
* initializers registered: an initializer has a tensor, its key is its name, it is not
  also produced by a node;
* dtypes/shapes consistent where known: an initializer's tensor matches the value's
  declared dtype and shape; graph outputs come from a node, an input or an initializer.
"""

from __future__ import annotations

import onnx_ir as ir

from graphpress.errors import InvariantError

__all__ = ["check", "find_cycle", "verify"]


def verify(model: ir.Model, where: str = "model") -> None:
    """Raise :class:`InvariantError` listing every violated invariant, or return None."""
    problems = check(model)
    if problems:
        raise InvariantError(problems, where)


def check(model: ir.Model) -> list[str]:
    """Return every violated invariant as a list of one-line strings (empty if valid)."""
    problems: list[str] = []
    _check_graph(model.graph, visible=set(), problems=problems)
    return problems


def _label(node: ir.Node) -> str:
    return f"node '{node.name or '?'}' ({node.op_type})"


def _check_graph(graph: ir.Graph, visible: set[int], problems: list[str]) -> None:
    gname = graph.name or "main"
    defined: set[int] = set(visible)
    names: dict[str, str] = {}

    def claim(value: ir.Value, owner: str) -> None:
        if value.name is None:
            return
        other = names.get(value.name)
        if other is not None and other != owner:
            problems.append(f"graph '{gname}': value name '{value.name}' is defined twice ({other} and {owner})")
        names[value.name] = owner

    for value in graph.inputs:
        defined.add(id(value))
        claim(value, "a graph input")
    for key, value in graph.initializers.items():
        if value.name != key:
            problems.append(f"graph '{gname}': initializer key '{key}' differs from its value name '{value.name}'")
        if value.const_value is None:
            problems.append(f"graph '{gname}': initializer '{key}' has no tensor")
        elif value.dtype is not None and value.const_value.dtype != value.dtype:
            problems.append(
                f"graph '{gname}': initializer '{key}' is declared {value.dtype.name} "
                f"but holds {value.const_value.dtype.name}"
            )
        elif value.shape is not None and value.const_value.shape is not None and _known(value.shape) and tuple(value.shape) != tuple(value.const_value.shape):
            problems.append(
                f"graph '{gname}': initializer '{key}' is declared {list(value.shape)} "
                f"but holds {list(value.const_value.shape)}"
            )
        if value.producer() is not None:
            problems.append(f"graph '{gname}': initializer '{key}' is also produced by {_label(value.producer())}")
        defined.add(id(value))
        if not value.is_graph_input():
            claim(value, "an initializer")

    for node in graph:
        if node.graph is not graph:
            problems.append(f"graph '{gname}': {_label(node)} is listed but belongs to another graph")
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if id(value) not in defined:
                producer = value.producer()
                if producer is not None and producer.graph is graph:
                    problems.append(
                        f"graph '{gname}': {_label(node)} uses '{value.name}' before its producer "
                        f"{_label(producer)} (not in topological order)"
                    )
                elif producer is not None:
                    problems.append(
                        f"graph '{gname}': {_label(node)} uses '{value.name}' whose producer "
                        f"{_label(producer)} is not in any visible graph (dangling use)"
                    )
                else:
                    problems.append(
                        f"graph '{gname}': {_label(node)} uses '{value.name}' which is not a graph input, "
                        "an initializer or a node output (unregistered value)"
                    )
            if (node, index) not in set(value.uses()):
                problems.append(
                    f"graph '{gname}': {_label(node)} input {index} '{value.name}' is not in that value's use list"
                )
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _check_graph(attr.as_graph(), defined, problems)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    _check_graph(sub, defined, problems)
        for value in node.outputs:
            if value.producer() is not node:
                problems.append(f"graph '{gname}': output '{value.name}' of {_label(node)} names another producer")
            defined.add(id(value))
            claim(value, _label(node))
        # uses must point back at live nodes
    for node in graph:
        for value in node.outputs:
            for use in value.uses():
                user = use.node
                if user.graph is None:
                    problems.append(
                        f"graph '{gname}': '{value.name}' of {_label(node)} is used by {_label(user)}, "
                        "which was removed from the graph (dangling use)"
                    )
                elif use.idx >= len(user.inputs) or user.inputs[use.idx] is not value:
                    problems.append(
                        f"graph '{gname}': use list of '{value.name}' says {_label(user)} input {use.idx}, "
                        "but that input is another value"
                    )
    for value in graph.outputs:
        if id(value) not in defined:
            problems.append(f"graph '{gname}': output '{value.name}' is not produced by any node, input or initializer")


def _known(shape: ir.Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def find_cycle(model: ir.Model) -> list[str] | None:
    """Names of the nodes on one cycle of the main graph (first node repeated at the end), or None."""
    nodes = list(model.graph)
    users: dict[int, list[ir.Node]] = {}
    for node in nodes:
        for value in node.outputs:
            users[id(node)] = users.get(id(node), []) + [use.node for use in value.uses() if use.node.graph is model.graph]
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if state.get(id(start)):
            continue
        path: list[ir.Node] = []
        stack = [(start, iter(users.get(id(start), [])))]
        state[id(start)] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[id(node)] = 2
            elif state.get(id(child)) == 1:
                loop = path[path.index(child) :] + [child]
                return [n.name or n.op_type for n in loop]
            elif not state.get(id(child)):
                state[id(child)] = 1
                path.append(child)
                stack.append((child, iter(users.get(id(child), []))))
    return None
