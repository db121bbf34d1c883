"""The pass manager and its instruments.

A :class:`PassManager` runs an explicit list of passes. Instruments hook in before and
after each pass (like TVM's ``PassInstrument``): :class:`TimingInstrument`,
:class:`InvariantInstrument` (IR invariants after every pass),
:class:`NumericInstrument` (each pass against the model *it received*, with the pass
family's tolerance, plus the whole pipeline against the input) and
:class:`DumpInstrument` (the IR after every pass). With ``fixpoint=True`` the list is
repeated until no pass modifies the model, at most ``max_iterations`` times; reaching
the bound is recorded, never silent. Every pass that was asked for appears in the
records, modified or not.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import GraphpressError, InvariantError, NumericMismatchError
from graphpress._heap import frozen_heap
from graphpress.ir import numeric
from graphpress.ir.io import save, to_proto
from graphpress.ir.verify import check
from graphpress.passes.base import Pass, PassResult

__all__ = [
    "DumpInstrument",
    "Instrument",
    "InvariantInstrument",
    "NumericInstrument",
    "PassManager",
    "PassRecord",
    "RunResult",
    "TimingInstrument",
]

#: Order of tolerance families from strictest to loosest (a pipeline is judged by its loosest pass).
FAMILY_ORDER = ("exact", "cleanup", "fusion", "pruning", "sharing", "quantization")


@dataclasses.dataclass
class PassRecord:
    """What happened when one pass ran (one entry of the report's ``passes`` list)."""

    name: str
    options: dict[str, Any]
    modified: bool = False
    seconds: float = 0.0
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    iteration: int = 0
    verification: dict[str, Any] | None = None
    #: bytes of all initializers after the pass (the model's size as it would be stored)
    weight_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "seconds": round(self.seconds, 6), "modified": self.modified, "stats": self.stats, "options": self.options}
        if self.weight_bytes is not None:
            d["weight_bytes"] = self.weight_bytes
        if self.iteration:
            d["iteration"] = self.iteration
        if self.verification is not None:
            d["verification"] = self.verification
        return d


@dataclasses.dataclass
class RunResult:
    """Result of :meth:`PassManager.run`."""

    model: ir.Model
    modified: bool
    records: list[PassRecord]
    iterations: int
    fixpoint_reached: bool | None

    def stats(self) -> dict[str, Any]:
        """Every pass's stats summed by key (numbers only)."""
        total: dict[str, Any] = {}
        for rec in self.records:
            for key, value in rec.stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total


class Instrument:
    """Hooks the :class:`PassManager` calls. Override what you need."""

    def run_start(self, model: ir.Model) -> None:
        """Before the first pass."""

    def before_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Before each pass."""

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, record: PassRecord) -> None:
        """After each pass (``record.modified``/``stats`` already filled)."""

    def run_end(self, model: ir.Model) -> None:
        """After the last pass."""


class TimingInstrument(Instrument):
    """Wall-clock seconds per pass into ``record.seconds``."""

    def before_pass(self, pass_, model, record):
        self._start = time.perf_counter()

    def after_pass(self, pass_, model, result, record):
        record.seconds = time.perf_counter() - self._start


class InvariantInstrument(Instrument):
    """Check IR invariants (:func:`graphpress.ir.verify`) on the input and after every pass."""

    def run_start(self, model):
        problems = check(model)
        if problems:
            raise InvariantError(problems, "input model")

    def after_pass(self, pass_, model, result, record):
        problems = check(model)
        if problems:
            raise InvariantError(problems, f"after pass '{record.name}' (a bug in that pass; report it, and drop the pass from --passes meanwhile)")


class NumericInstrument(Instrument):
    """Run the model with ONNX Runtime before and after each modifying pass and compare.

    Each pass is compared with the model it received, under the tolerance of the pass's
    family; on failure the first diverging node is located and a
    :class:`NumericMismatchError` names the pass and the node. At the end the whole
    pipeline is compared with the input model under the loosest family that ran
    (``self.final``).

    Args:
        feeds: sample inputs (name → array).
        inputs_source: where they came from, for the report.
        locate: find the first diverging node on failure.
    """

    def __init__(self, feeds: Mapping[str, np.ndarray], inputs_source: str = "given", *, locate: bool = True):
        self.feeds = dict(feeds)
        self.inputs_source = inputs_source
        self.locate = locate
        self.final: numeric.NumericReport | None = None
        self._families: list[str] = []
        #: passes whose ``PassResult.reference`` replaced the baseline (e.g. ``prune``: the masked model)
        self.rebased_by: list[str] = []

    def run_start(self, model):
        self.rebased_by = []
        self._input_outputs = numeric.run(model, self.feeds)
        self._prev_outputs = self._input_outputs
        self._families = ["exact"]

    def before_pass(self, pass_, model, record):
        self._snapshot: onnx.ModelProto | None = to_proto(model) if self.locate else None

    def after_pass(self, pass_, model, result, record):
        if not result.modified:
            return
        family = pass_.family
        self._families.append(family)
        outputs = numeric.run(model, self.feeds)
        reference = getattr(result, "reference", None)
        if reference is not None:
            # the pass changed the function on purpose: its reference is the new baseline
            self._prev_outputs = numeric.run(reference, self.feeds)
            self._input_outputs = self._prev_outputs
            self.rebased_by.append(record.name)
        report = numeric.compare_outputs(self._prev_outputs, outputs, family, self.inputs_source)
        if not report.passed and self._snapshot is not None and reference is None:
            report.first_divergence = numeric.first_divergence(self._snapshot, model, self.feeds, family=family)
        record.verification = {"passed": report.passed, "max_abs_diff": report.max_abs_diff, "cosine": report.min_cosine, "family": family}
        if not report.passed:
            raise NumericMismatchError(
                f"pass '{record.name}' changed the outputs beyond its '{family}' tolerance: "
                f"{report.describe_failure()}; drop '{record.name}' from --passes and report the model",
                report,
            )
        self._prev_outputs = outputs

    def run_end(self, model):
        loosest = max(self._families, key=FAMILY_ORDER.index)
        outputs = numeric.run(model, self.feeds) if len(self._families) > 1 else self._prev_outputs
        self.final = numeric.compare_outputs(self._input_outputs, outputs, loosest, self.inputs_source)
        if not self.final.passed:
            raise NumericMismatchError(
                f"the pipeline changed the outputs beyond the '{loosest}' tolerance: {self.final.describe_failure()}",
                self.final,
            )


class DumpInstrument(Instrument):
    """Save the IR after every pass as ``<dir>/NN_<pass>.onnx`` (and the input as ``00_input.onnx``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.count = 0

    def run_start(self, model):
        self.directory.mkdir(parents=True, exist_ok=True)
        save(model, self.directory / "00_input.onnx")

    def after_pass(self, pass_, model, result, record):
        self.count += 1
        save(model, self.directory / f"{self.count:02d}_{record.name}.onnx")


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value is not None)


class PassManager:
    """Run passes in order with instruments.

    Args:
        passes: the passes, in order.
        instruments: hooks (a :class:`TimingInstrument` is always added first).
        fixpoint: repeat the whole list until no pass modifies the model.
        max_iterations: bound on fixpoint repetitions (>= 1).
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        *,
        fixpoint: bool = False,
        max_iterations: int = 10,
    ):
        if max_iterations < 1:
            raise GraphpressError(f"max_iterations must be >= 1, got {max_iterations}")
        self.passes = list(passes)
        self.instruments: list[Instrument] = [TimingInstrument(), *instruments]
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations

    def run(self, model: ir.Model) -> RunResult:
        """Run every pass on ``model`` (in place) and return what happened.

        In fixpoint mode a pass is not re-run when the model is exactly as that pass left
        it after a run that changed nothing (a deterministic pass would change nothing
        again); such a round is recorded with ``stats={"skipped": "unchanged since last run"}``.
        """
        with frozen_heap():
            return self._run(model)

    def _run(self, model: ir.Model) -> RunResult:
        for inst in self.instruments:
            inst.run_start(model)
        records: list[PassRecord] = []
        any_modified = False
        iterations = 0
        fixpoint_reached: bool | None = None
        version = 0  # bumped whenever a pass modifies the model
        clean_at: dict[int, int] = {}  # pass index -> version it last ran on without changes
        while True:
            iterations += 1
            modified_this_round = False
            for index, pass_ in enumerate(self.passes):
                record = PassRecord(pass_.name, pass_.option_dict(), iteration=iterations if self.fixpoint else 0)
                if self.fixpoint and clean_at.get(index) == version:
                    record.stats = {"skipped": "unchanged since last run"}
                    records.append(record)
                    continue
                for inst in self.instruments:
                    inst.before_pass(pass_, model, record)
                result = pass_(model)
                record.modified = bool(result.modified)
                record.stats = dict(getattr(result, "stats", {}) or {})
                record.weight_bytes = _weight_bytes(model)
                for inst in self.instruments:
                    inst.after_pass(pass_, model, result, record)
                records.append(record)
                if record.modified:
                    version += 1
                    clean_at.pop(index, None)
                else:
                    clean_at[index] = version
                modified_this_round |= record.modified
            any_modified |= modified_this_round
            if not self.fixpoint:
                break
            if not modified_this_round:
                fixpoint_reached = True
                break
            if iterations >= self.max_iterations:
                fixpoint_reached = False
                break
        for inst in self.instruments:
            inst.run_end(model)
        return RunResult(model, any_modified, records, iterations, fixpoint_reached)
