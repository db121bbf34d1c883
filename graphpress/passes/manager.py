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

from graphpress.errors import GraphpressError, InvariantError, NumericMismatchError, PassFailedError
from graphpress._heap import frozen_heap
from graphpress.ir import numeric
from graphpress.ir.divergence import attribute_divergence
from graphpress.ir.io import save, to_proto, upgrade_opset
from graphpress.ir.verify import check, find_cycle
from graphpress.passes.base import Pass, PassResult
from graphpress.passes.context import PassContext

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
#: Families of passes that change the function on purpose: the end-to-end check is a budget.
LOSSY_FAMILIES = ("pruning", "sharing", "quantization")
#: The default end-to-end budget of a lossy pipeline: every output keeps this cosine.
LOSSY_MIN_COSINE = 0.99


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
        cycle = find_cycle(model) if any("not in topological order" in p for p in problems) else None
        if cycle:
            raise GraphpressError(f"input model: the graph has a cycle ({' -> '.join(cycle)}); ONNX graphs must be acyclic")
        if problems:
            raise InvariantError(problems, "input model")

    def after_pass(self, pass_, model, result, record):
        problems = check(model)
        if problems:
            raise InvariantError(problems, f"after pass '{record.name}' (a bug in that pass; report it, and leave the pass out meanwhile)")


class NumericInstrument(Instrument):
    """Run the model with ONNX Runtime before and after each modifying pass and compare.

    Each pass is compared with the model it received, under the tolerance of the pass's
    family; on failure the first diverging node is located and a
    :class:`NumericMismatchError` names the pass and the node. A pass that changes the
    function on purpose (``prune``) is compared with the reference it returns (its
    zero-masked model), and later passes with that.

    At the end, the verdict (``self.final``) is always against the model the user gave:
    ``baseline_outputs`` when given (the CLI passes ONNX Runtime's outputs on the file as it
    was, before any opset conversion), else the model the run started from. A lossless
    pipeline is judged under the loosest family that ran; a lossy one (a pass moved the
    baseline, or a pruning/sharing/quantization pass ran) by the cosine every output keeps,
    at least ``min_cosine`` (the pipeline's accuracy budget, default 0.99).
    ``self.vs_reference`` then compares with the last moved baseline (the masked reference).

    Args:
        feeds: sample inputs: one dict (name → array) or a list of them.
        inputs_source: where they came from, for the report.
        locate: find the first diverging node on failure.
        baseline_outputs: the outputs of the model the user gave, on the same samples
            (:func:`graphpress.ir.numeric.run_samples`).
        min_cosine: the end-to-end budget of a lossy pipeline.
        baseline_family: the tolerance family of what turned the user's model into the one
            the run starts from ("cleanup" after an opset conversion on load; "exact" if none).
        baseline_model: the model ``baseline_outputs`` came from (the file as it was), for
            attributing a failed end-to-end check.

    A lossless check that fails is attributed (:func:`graphpress.ir.divergence.attribute_divergence`):
    when every difference is rounding within tolerance that an untouched node amplified
    (``Sin`` of large values, ``Ceil``, a long float16 sum), it passes with those nodes named
    in ``amplified_by``.
    """

    def __init__(
        self,
        feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
        inputs_source: str = "given",
        *,
        locate: bool = True,
        baseline_outputs: Mapping[str, np.ndarray] | None = None,
        min_cosine: float = LOSSY_MIN_COSINE,
        baseline_family: str = "exact",
        baseline_model: onnx.ModelProto | None = None,
    ):
        self.samples = numeric.as_samples(feeds)
        self.inputs_source = inputs_source
        self.locate = locate
        self.min_cosine = min_cosine
        self.final: numeric.NumericReport | None = None
        self.vs_reference: numeric.NumericReport | None = None
        self.baseline_family = baseline_family
        #: the least precise float dtype the input model computes in (judges float outputs)
        self.precision: str | None = None
        self._families: list[str] = []
        self._since_rebase: list[str] = []
        self._reference_outputs: dict[str, np.ndarray] | None = None
        self._baseline = dict(baseline_outputs) if baseline_outputs is not None else None
        self._baseline_model = baseline_model
        self._input_snapshot: onnx.ModelProto | None = None
        #: passes whose ``PassResult.reference`` replaced the baseline (e.g. ``prune``: the masked model)
        self.rebased_by: list[str] = []

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The first sample (what the first-divergence search runs)."""
        return self.samples[0]

    def _run(self, model, where: str) -> dict[str, np.ndarray]:
        return numeric.run_samples(model, self.samples, where=where)

    def run_start(self, model):
        self.rebased_by = []
        self._input_outputs = self._baseline if self._baseline is not None else self._run(model, "the input model")
        self._prev_outputs = self._run(model, "the input model") if self._baseline is not None else self._input_outputs
        self.precision = numeric.lowest_float_precision(model)
        self._families = [self.baseline_family if self._baseline is not None else "exact"]
        self._since_rebase = []
        self._reference_outputs = None
        self._input_snapshot = self._baseline_model if self._baseline_model is not None else (to_proto(model) if self.locate else None)

    def _sample(self, outputs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return outputs if len(self.samples) == 1 else {k: v[i] for k, v in outputs.items()}

    def _attribute(self, report, reference, candidate, ref_outputs, new_outputs, family: str) -> None:
        """Accept a failed lossless check whose every difference is amplified rounding (``report.amplified_by``)."""
        if reference is None or family in LOSSY_FAMILIES or family == "exact":
            return
        amplified: list[dict] = []
        for i, feeds in enumerate(self.samples):
            if numeric.compare_outputs(self._sample(ref_outputs, i), self._sample(new_outputs, i), family, precision=self.precision).passed:
                continue
            found = attribute_divergence(reference, candidate, feeds, family=family, precision=self.precision)
            if not found.explained:
                return
            amplified += [a for a in found.amplified_by if a not in amplified]
        report.amplified_by = amplified or None

    def before_pass(self, pass_, model, record):
        self._snapshot: onnx.ModelProto | None = to_proto(model) if self.locate else None

    def after_pass(self, pass_, model, result, record):
        if not result.modified:
            return
        family = getattr(result, "family", None) or pass_.family
        self._families.append(family)
        self._since_rebase.append(family)
        try:
            outputs = self._run(model, f"the model after pass '{record.name}'")
        except GraphpressError as e:  # the input ran: what the pass wrote does not
            raise NumericMismatchError(
                f"pass '{record.name}' produced a model ONNX Runtime cannot run ({e}); "
                f"leave '{record.name}' out of the pipeline and report the model"
            ) from e
        reference = getattr(result, "reference", None)
        if reference is not None:
            # the pass changed the function on purpose: its reference is the new baseline
            self._prev_outputs = self._reference_outputs = self._run(reference, f"the reference of pass '{record.name}'")
            self._since_rebase = [family]
            self.rebased_by.append(record.name)
        report = numeric.compare_outputs(self._prev_outputs, outputs, family, self.inputs_source, precision=self.precision)
        if not report.passed and reference is None:
            self._attribute(report, self._snapshot, model, self._prev_outputs, outputs, family)
        if not report.passed and self._snapshot is not None and reference is None:
            report.first_divergence = numeric.first_divergence(self._snapshot, model, self.feeds, family=family, precision=self.precision)
        record.verification = {"passed": report.passed, "max_abs_diff": report.max_abs_diff, "cosine": report.min_cosine, "family": family}
        if report.amplified_by:
            record.verification["amplified_by"] = report.amplified_by
        if not report.passed:
            advice = (
                f"it lost more than its tolerance allows on these inputs: keep more of the model in float "
                f"(the pass's exclude/tolerance options) or leave '{record.name}' out"
                if family in LOSSY_FAMILIES
                else f"leave '{record.name}' out of the pipeline and report the model"
            )
            raise NumericMismatchError(
                f"pass '{record.name}' changed the outputs beyond its '{family}' tolerance: {report.describe_failure()}; {advice}",
                report,
            )
        self._prev_outputs = outputs

    @property
    def lossy(self) -> bool:
        """Whether the pipeline changed the function on purpose (judged by a budget, not a tolerance)."""
        return bool(self.rebased_by) or any(f in LOSSY_FAMILIES for f in self._families)

    def run_end(self, model):
        loosest = max(self._families, key=FAMILY_ORDER.index)
        outputs = self._prev_outputs
        if self._reference_outputs is not None:
            since = max(self._since_rebase, key=FAMILY_ORDER.index)
            self.vs_reference = numeric.compare_outputs(self._reference_outputs, outputs, since, self.inputs_source, precision=self.precision)
        # a lossy pipeline is judged by its budget: the cosine every output keeps
        family = "quantization" if self.lossy else loosest
        self.final = numeric.compare_outputs(
            self._input_outputs, outputs, family, self.inputs_source,
            min_cosine=self.min_cosine if self.lossy else None, precision=self.precision,
        )  # fmt: skip
        if self.lossy:
            self.final.family = "budget"
        elif not self.final.passed and self._input_snapshot is not None:
            self._attribute(self.final, self._input_snapshot, model, self._input_outputs, outputs, loosest)
        if not self.final.passed:
            moved = f" (passes that change the function on purpose: {', '.join(self.rebased_by)})" if self.rebased_by else ""
            budget = f"the budget cosine >= {self.min_cosine:g}" if self.lossy else f"the '{loosest}' tolerance"
            raise NumericMismatchError(
                f"the pipeline moved the outputs beyond {budget} against the input model{moved}: "
                f"{self.final.describe_failure()}" + ("; compress less, or allow more with a lower min_cosine (--min-cosine)" if self.lossy else ""),
                self.final,
            )


class DumpInstrument(Instrument):
    """Save the IR after every pass as ``<dir>/NN_<pass>.onnx`` (and the input as ``00_input.onnx``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.count = 0
        if self.directory.exists() and not self.directory.is_dir():
            raise GraphpressError(f"{self.directory}: is a file; give a directory for the IR dumps")

    def run_start(self, model):
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GraphpressError(f"{self.directory}: cannot create the IR dump directory ({e.strerror}); give another directory") from e
        self.count = 0
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
        context: sample inputs, metric and target facts every pass gets
            (:class:`~graphpress.passes.context.PassContext`); ``None`` keeps each pass's own.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        *,
        fixpoint: bool = False,
        max_iterations: int = 10,
        context: PassContext | None = None,
    ):
        if max_iterations < 1:
            raise GraphpressError(f"max_iterations must be >= 1, got {max_iterations}")
        self.passes = list(passes)
        self.instruments: list[Instrument] = [TimingInstrument(), *instruments]
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations
        self.context = context
        if context is not None:
            for pass_ in self.passes:
                pass_.context = context

    def run(self, model: ir.Model) -> RunResult:
        """Run every pass on ``model`` (in place) and return what happened.

        In fixpoint mode a pass is not re-run when the model is exactly as that pass left
        it after a run that changed nothing (a deterministic pass would change nothing
        again); such a round is recorded with ``stats={"skipped": "unchanged since last run"}``.
        """
        if not isinstance(model, ir.Model):
            what = "a path" if isinstance(model, (str, Path)) else f"a {type(model).__name__}"
            raise GraphpressError(f"PassManager.run takes an onnx_ir.Model, got {what}; load it first with graphpress.load(...)")
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
                # a pass that writes newer ops gets the model converted first, inside its check
                converted_from, needed = _opset(model), pass_.required_opset(model)
                if not needed or not upgrade_opset(model, needed, f"pass '{pass_.name}' (needs opset {needed})"):
                    converted_from = None
                try:
                    result = pass_(model)
                except GraphpressError:
                    raise
                except Exception as e:
                    raise PassFailedError(record.name, type(pass_), e) from e
                record.modified = bool(result.modified)
                record.stats = dict(getattr(result, "stats", {}) or {})
                if converted_from is not None:
                    record.stats["converted_opset"] = f"{converted_from} -> {needed}"
                    record.modified = True
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


def _opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
