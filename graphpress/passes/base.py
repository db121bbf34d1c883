"""The pass contract: ``call(model) -> PassResult(model, modified, stats)``.

A graphpress pass is an onnx-ir ``InPlacePass`` with three additions:

* ``name``: its registry name (what ``--passes`` uses),
* ``family``: which numeric tolerance table checks it (``exact``, ``cleanup``, ``fusion``,
  ``pruning``, ``quantization``; see :data:`graphpress.ir.numeric.TOLERANCES`),
* ``Options``: a dataclass of typed options declared with :func:`option`, validated when
  the pass is built (type, range, choices), so a SPEC string and a Python call are
  checked the same way.

``modified`` must be exact (fixpoint loops stop on it) and ``stats`` says what changed,
e.g. ``{"nodes_removed": 12}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import onnx_ir as ir

from graphpress.errors import SpecError
from graphpress.passes.context import PassContext

__all__ = ["Pass", "PassResult", "graph_counts", "option"]


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """onnx-ir's ``PassResult`` plus ``stats`` (counts of what the pass changed) and ``reference``.

    ``reference``: for passes that change the function on purpose (pruning), the model the
    output must match numerically instead of the model the pass received (for pruning: the
    zero-masked model). Later passes and the end-to-end check are then measured against it.
    ``family``: the tolerance family of this run, if not the pass's class-level ``family``.
    """

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference: ir.Model | None = dataclasses.field(default=None, repr=False)
    #: the tolerance family this run is judged by, when it differs from the pass's own
    #: (``dedup``: ``exact`` for identical merges, ``cleanup`` for layout merges)
    family: str | None = None


def option(default: Any, *, help: str, min: float | None = None, max: float | None = None, choices: tuple | None = None) -> Any:
    """Declare a typed pass option (a dataclass field with its help text and limits).

    Args:
        default: default value; its annotation in the ``Options`` class gives the type.
        help: one-line description shown in error messages and ``graphpress passes``.
        min: smallest allowed value (numbers), inclusive.
        max: largest allowed value (numbers), inclusive.
        choices: the allowed values (strings).
    """
    return dataclasses.field(default=default, metadata={"help": help, "min": min, "max": max, "choices": choices})


def _type_of(field: dataclasses.Field) -> type:
    t = field.type
    if isinstance(t, str):
        t = {"int": int, "float": float, "bool": bool, "str": str}.get(t, str)
    return t


def describe_option(field: dataclasses.Field) -> str:
    t = _type_of(field)
    meta = field.metadata
    limits = ""
    if meta.get("choices"):
        limits = " one of " + "|".join(map(str, meta["choices"]))
    elif meta.get("min") is not None or meta.get("max") is not None:
        limits = f" in [{meta.get('min', '-inf')}, {meta.get('max', 'inf')}]"
    # a trailing underscore only avoids a Python keyword (``global_``): SPECs write ``global``
    return f"{field.name.rstrip('_')} ({t.__name__}{limits}, default {field.default})"


def convert_option(pass_name: str, field: dataclasses.Field, raw: Any) -> Any:
    """Convert ``raw`` (a string from a SPEC, or a Python value) to the option's type and check it."""
    t = _type_of(field)
    where = f"pass '{pass_name}' option '{field.name}'"
    value = raw
    if isinstance(raw, str) and t is not str:
        text = raw.strip()
        try:
            if t is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = text.lower() in ("true", "1", "yes")
            else:
                value = t(text)
        except ValueError:
            raise SpecError(f"{where}: '{raw}' is not a {t.__name__}; expected {describe_option(field)}") from None
    elif t is float and isinstance(raw, int) and not isinstance(raw, bool):
        value = float(raw)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise SpecError(f"{where}: {raw!r} is not a {t.__name__}; expected {describe_option(field)}")
    meta = field.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise SpecError(f"{where}: '{value}' is not allowed; choose one of {', '.join(map(str, meta['choices']))}")
    if meta.get("min") is not None and value < meta["min"]:
        raise SpecError(f"{where}: {value} is below the minimum {meta['min']}; expected {describe_option(field)}")
    if meta.get("max") is not None and value > meta["max"]:
        raise SpecError(f"{where}: {value} is above the maximum {meta['max']}; expected {describe_option(field)}")
    return value


class Pass(ir.passes.InPlacePass):
    """Base class of graphpress passes. Subclass, set ``name``/``family``/``Options``, implement ``call``.

    Example::

        @register
        class DropDocStrings(Pass):
            name = "drop_doc_strings"
            family = "exact"

            @dataclasses.dataclass
            class Options:
                keep_graph: bool = option(True, help="keep the graph's own doc string")

            def call(self, model):
                count = 0
                for node in model.graph.all_nodes():
                    if node.doc_string:
                        node.doc_string = None
                        count += 1
                return PassResult(model, count > 0, {"cleared": count})
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "exact"
    description: ClassVar[str] = ""
    #: the pass reads ``context.samples`` (calibration, activation statistics, accuracy checks)
    uses_samples: ClassVar[bool] = False
    #: the default-domain opset the pass needs (0: any). The pass manager converts an older
    #: model to it just before the pass runs (inside the pass's numeric check), never on load.
    min_opset: ClassVar[int] = 0

    def required_opset(self, model: ir.Model) -> int:
        """The opset this run needs on ``model`` (default :attr:`min_opset`; a pass that only
        sometimes writes newer ops says so here, e.g. only when the model has what it rewrites)."""
        return self.min_opset

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        super().__init__()
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        options = {(f"{k}_" if k not in fields and f"{k}_" in fields else k): v for k, v in options.items()}
        unknown = [k for k in options if k not in fields]
        if unknown:
            valid = ", ".join(describe_option(f) for f in fields.values()) or "none"
            raise SpecError(f"pass '{self.name}' has no option '{unknown[0]}'; valid options: {valid}")
        converted = {k: convert_option(self.name, fields[k], v) for k, v in options.items()}
        self.options = self.Options(**converted)
        #: what the pass needs beyond the model; the PassManager sets it for a run
        self.context = PassContext()

    def option_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def __repr__(self) -> str:
        opts = ";".join(f"{k}={v}" for k, v in self.option_dict().items())
        return f"{type(self).__name__}({self.name}{':' + opts if opts else ''})"

    def call(self, model: ir.Model) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError


def graph_counts(model: ir.Model) -> tuple[int, int]:
    """(number of nodes, number of initializers) over the main graph and all subgraphs."""
    nodes = 0
    inits = 0
    for graph in model.graphs():
        nodes += len(graph)
        inits += len(graph.initializers)
    return nodes, inits
