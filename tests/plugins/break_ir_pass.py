"""A deliberately wrong user pass: removes a node whose output is still used."""

from graphpress.passes import Pass, PassResult, register


@register
class BreakIR(Pass):
    name = "test_break_ir"
    family = "exact"
    description = "remove a used node (a bug on purpose)"

    def call(self, model):
        node = next(n for n in model.graph if n.op_type == "Relu")
        model.graph.remove(node, safe=False)
        return PassResult(model, True, {"removed": 1})
