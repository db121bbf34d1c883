"""The rewrite-rule layer: pattern → check → replacement, with provenance and reasons.

A :class:`Rule` is an onnxscript ``RewriteRule`` (patterns are written with onnxscript's op
builder, matching is onnxscript's) with what graphpress adds:

* a unique ``name``, stamped on every node the rule creates
  (``node.metadata_props["graphpress.rule"]``, :data:`PROVENANCE_KEY`),
* a ``check`` that returns a **reason string** when it refuses (``None`` to accept),
* a QDQ guard: a rule that is not declared ``qdq_safe`` refuses to rewrite a match that reads a
  ``DequantizeLinear`` output, feeds a ``QuantizeLinear`` or contains either, because folding
  inside a quantized group changes what the quantizer rounds (the silent change of ONNX Runtime
  issue #11576),
* :func:`explain` answers "why did this rule not match at this node".

Rules are data: group them in module-level lists and run them as one pass with
:func:`rule_pass` (a registered :class:`~graphpress.passes.base.Pass` that applies the rules to a
bounded fixpoint, with commutative matching of ``Add``/``Mul`` operands)::

    from graphpress.passes.rewrite import Rule, rule_pass

    def double_neg(op, x):
        return op.Neg(op.Neg(x))

    def just_x(op, x):
        return op.Identity(x)

    RULES = [Rule("double_neg", double_neg, just_x)]
    PASS = rule_pass("no_double_neg", RULES, family="exact")
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import onnx
import onnx_ir as ir
from onnxscript.rewriter import RULE_NAME_TAG, pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchResult, MatchStatus

from graphpress.errors import GraphpressError
from graphpress.passes.base import Pass, PassResult, graph_counts, option
from graphpress.passes.registry import register

__all__ = ["PROVENANCE_KEY", "QDQ_OPS", "Rule", "RewritePass", "explain", "qdq_reason", "rule_pass"]

#: Metadata key carrying the name of the rule that created a node.
PROVENANCE_KEY = "graphpress.rule"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})

_RULE_NAMES: dict[str, Rule] = {}

#: Rewrites left in the current round of a :class:`RewritePass` (``None`` outside one). onnxscript
#: visits the nodes a rewrite inserts in the same sweep, so two rules that undo each other would
#: loop forever inside one ``apply_to_model``; the budget turns that into an error.
_round_budget: list[int] | None = None


def qdq_reason(nodes: Sequence[ir.Node]) -> str | None:
    """Why rewriting ``nodes`` (a match) would change quantized numerics, or ``None`` if it would not."""
    inside = set(map(id, nodes))
    for node in nodes:
        if node.op_type in QDQ_OPS:
            return f"node '{node.name}' is a {node.op_type}; rewriting inside a QDQ group changes quantized numerics"
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) not in inside and producer.op_type == "DequantizeLinear":
                return (
                    f"node '{node.name}' ({node.op_type}) reads DequantizeLinear '{producer.name}'; "
                    "folding into a QDQ group changes what the quantizer rounds"
                )
        for out in node.outputs:
            for user, _ in out.uses():
                if id(user) not in inside and user.op_type == "QuantizeLinear":
                    return (
                        f"node '{node.name}' ({node.op_type}) feeds QuantizeLinear '{user.name}'; "
                        "folding into a QDQ group changes what the quantizer rounds"
                    )
    return None


class Rule(pattern.RewriteRule):
    """A named rewrite rule: ``pattern(op, ...)``, ``replacement(op, ...)``, optional ``check``.

    Args:
        name: unique rule name; stamped on created nodes under :data:`PROVENANCE_KEY`.
        target: the pattern, a function ``(op, *vars) -> value`` using onnxscript's op builder.
        replacement: a function ``(op, **bindings) -> value`` building the replacement.
        check: ``(context, **bindings) -> str | None``: the reason to refuse, or ``None``.
        qdq_safe: the rewrite keeps quantized numerics (skips the QDQ guard).
        condition: an onnxscript condition function (used by :meth:`wrap`).
        as_function: put the matched nodes into a model-local function called by the single
            replacement node (onnxscript's ``as_function``).
    """

    def __init__(
        self,
        name: str,
        target: Callable[..., Any],
        replacement: Callable[..., Any],
        check: Callable[..., str | None] | None = None,
        *,
        qdq_safe: bool = False,
        condition: Callable[..., Any] | None = None,
        remove_nodes: bool = True,
        as_function: bool = False,
    ) -> None:
        if not name:
            raise ValueError("a rule needs a name (it is stamped on the nodes it creates)")
        previous = _RULE_NAMES.get(name)
        if previous is not None and _origin(previous) != _origin_of(target, replacement):
            raise ValueError(f"rule name '{name}' is already used by another rule; rule names are unique")
        self.check_fn = check
        self.qdq_safe = qdq_safe
        self._inner_condition = condition
        self._target_fn = target
        self._replacement_fn = replacement
        self.applied = 0
        super().__init__(target, replacement, self._condition, name=name, remove_nodes=remove_nodes, as_function=as_function)
        _RULE_NAMES[name] = self

    @classmethod
    def wrap(
        cls, rule: pattern.RewriteRule, name: str | None = None, *, qdq_safe: bool = False, check: Callable[..., str | None] | None = None
    ) -> Rule:
        """Adopt an onnxscript rule (e.g. from ``onnxscript.rewriter.rules.common``) as a graphpress rule.

        ``check`` adds a condition of ours to the rule's own (a reason to refuse, or ``None``).
        """
        new = cls(
            name or rule.name or type(rule).__name__,
            rule._target_pattern,  # noqa: SLF001 - onnxscript keeps these private; pinned via onnxscript's API
            rule._replacement_pattern,  # noqa: SLF001
            check,
            condition=rule._condition_function,  # noqa: SLF001
            qdq_safe=qdq_safe,
            remove_nodes=rule.remove_nodes,
            as_function=rule.as_function,
        )
        new.graph_pre_visitor = rule.graph_pre_visitor
        new.graph_post_visitor = rule.graph_post_visitor
        return new

    def _condition(self, context, **bindings) -> MatchResult:
        result = MatchResult()
        if not self.qdq_safe:
            reason = qdq_reason(context.nodes)
            if reason:
                return result.fail(reason)
        if self._inner_condition is not None:
            inner = self._inner_condition(context, **bindings)
            if not inner:
                return inner if isinstance(inner, MatchResult) else result.fail("the rule's condition refused")
        if self.check_fn is not None:
            reason = self.check_fn(context, **_accepted(self.check_fn, bindings))
            if reason:
                return result.fail(str(reason))
        return result

    def try_rewrite(self, model, graph_or_function, node, *, verbose=None, tracer=None):
        delta = super().try_rewrite(model, graph_or_function, node, verbose=verbose, tracer=tracer)
        if delta is not None and not _exists_in_opset(delta.new_nodes, model):
            # e.g. onnxscript's HardSwish rule in an opset-11 model (HardSwish is opset 14):
            # models keep their opset on load, so a rule must not write ops from a later one
            for new in delta.new_nodes:  # built but never inserted: release their inputs' uses
                for i in range(len(new.inputs)):
                    new.replace_input_with(i, None)
            return None
        if delta is not None and tracer is None:
            self.root.applied += 1
            if _round_budget is not None:
                _round_budget[0] -= 1
                if _round_budget[0] < 0:
                    raise GraphpressError(
                        f"rewrite rules do not converge: rule '{self.name}' has rewritten {self.root.applied} times in one "
                        "sweep; two rules probably undo each other"
                    )
            for new in delta.new_nodes:
                new.metadata_props[PROVENANCE_KEY] = self.name
            # onnxscript joins its rule-name tag of the matched nodes into the new ones ("a, b");
            # along a chain of rewrites that string doubles each time. Ours is authoritative.
            for old in delta.match.nodes:
                old.metadata_props.pop(RULE_NAME_TAG, None)
        return delta

    def commute(self) -> list[Rule]:
        """Variants with the operands of commutative ops (Add, Mul, ...) swapped; they count into this rule."""
        variants = []
        for target in self._target_pattern.commute():
            variant = object.__new__(type(self))
            variant.__dict__.update(self.__dict__)
            variant._target_pattern = target
            variant._matcher = type(self._matcher)(target)
            variant._parent = self
            variants.append(variant)
        return variants

    @property
    def root(self) -> Rule:
        return getattr(self, "_parent", self)


def _exists_in_opset(nodes, model) -> bool:
    """Whether every default-domain op in ``nodes`` is defined at the model's opset."""
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx")) if model is not None else None
    if version is None:
        return True
    for node in nodes:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, version, "")
            except onnx.defs.SchemaError:
                return False
    return True


def _origin(rule: Rule) -> tuple[str, str]:
    return _origin_of(rule._target_fn, rule._replacement_fn)


def _origin_of(target: Any, replacement: Any) -> tuple[str, str]:
    def where(f: Any) -> str:
        f = getattr(f, "__func__", f)
        code = getattr(f, "__code__", None)
        if code is None:
            return f"{type(f).__qualname__}@{id(f)}"
        return f"{code.co_filename}:{code.co_firstlineno}"

    return where(target), where(replacement)


def _accepted(fn: Callable[..., Any], bindings: dict[str, Any]) -> dict[str, Any]:
    """The bindings ``fn`` accepts (all of them when it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return bindings
    return {k: v for k, v in bindings.items() if k in params}


def explain(rule: Rule | pattern.RewriteRule, node: ir.Node, model: ir.Model | None = None) -> str:
    """Why ``rule`` does (or does not) rewrite at ``node``: one line with the reason.

    Tries the rule and its commuted variants rooted at ``node`` without changing anything and
    reports the best attempt: the failing check's reason, or where structural matching failed.
    """
    graph = node.graph
    if graph is None:
        return f"rule '{rule.name}': node '{node.name}' is not in a graph"
    tracer = MatchingTracer()
    variants = rule.commute() if isinstance(rule, Rule) else [rule]
    for variant in variants or [rule]:
        match = variant.match(model, graph, node, tracer=tracer, check_nodes_are_removable=variant.remove_nodes)
        if match:
            return f"rule '{rule.name}' matches at node '{node.name}' ({node.op_type})"
    infos = [info for matches in tracer.best_matches_map.values() for info in matches if info.root_node is node]
    where = f"rule '{rule.name}' does not match at node '{node.name}' ({node.op_type})"
    if not infos:
        return f"{where}: the node is not the root (last op) of the rule's pattern"
    best = max(infos, key=lambda info: info.score())
    reason = best.match_result.reason or "structure differs"
    kind = "check refused" if best.status == MatchStatus.CONDITION_FAILED else "pattern mismatch"
    return f"{where}: {kind}: {reason}"


class RewritePass(Pass):
    """Apply a list of rules to a bounded fixpoint. Subclass and set ``rules`` (or use :func:`rule_pass`)."""

    rules: ClassVar[Sequence[Rule]] = ()
    commute: ClassVar[bool] = True
    family = "fusion"

    @dataclasses.dataclass
    class Options:
        max_iterations: int = option(8, help="rounds of rule application before giving up on a fixpoint", min=1, max=1000)

    def call(self, model: ir.Model) -> PassResult:
        rules = list(self.rules)
        for rule in rules:
            rule.applied = 0
        rule_set = pattern.RewriteRuleSet(rules, commute=self.commute)
        global _round_budget
        total = 0
        rounds = 0
        converged = False
        for rounds in range(1, self.options.max_iterations + 1):
            _round_budget = [64 + 16 * graph_counts(model)[0]]
            try:
                applied = rule_set.apply_to_model(model)
            finally:
                _round_budget = None
            total += applied
            if applied == 0:
                converged = True
                break
        for node in model.graph.all_nodes():
            node.metadata_props.pop(RULE_NAME_TAG, None)
        stats: dict[str, Any] = {"rewrites": total, "rounds": rounds}
        for rule in rules:
            if rule.applied:
                stats[rule.name] = rule.applied
        if not converged:
            stats["fixpoint_reached"] = False
        return PassResult(model, total > 0, stats)


def rule_pass(name: str, rules: Sequence[Rule], *, family: str = "fusion", description: str = "", commute: bool = True) -> type[RewritePass]:
    """Make and register a pass named ``name`` that runs ``rules`` (see the module docstring)."""
    for rule in rules:
        if not isinstance(rule, Rule):
            raise TypeError(f"pass '{name}': {rule!r} is not a graphpress Rule (wrap onnxscript rules with Rule.wrap)")
    cls = type(
        f"RulePass_{name}",
        (RewritePass,),
        {
            "name": name,
            "family": family,
            "description": description or f"rewrite rules: {', '.join(r.name for r in rules)}",
            "rules": tuple(rules),
            "commute": commute,
            "__module__": inspect.stack()[1].frame.f_globals.get("__name__", __name__),
            "__qualname__": f"RulePass_{name}",
        },
    )
    return register(cls)
