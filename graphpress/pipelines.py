"""Recipes: named pipelines of passes under one accuracy budget for the whole pipeline.

A recipe is a list of :class:`Stage` s -- the lossless clean-up first, then the lossy steps
(pruning, quantization, sharing), each with candidate settings from the strongest to the
mildest. :func:`run_recipe` splits the one budget across the lossy steps **by measurement**:

1. every lossy step after the first is measured alone on the cleaned model, at the strongest
   candidate that fits the whole budget: what it will cost later (its reserve);
2. the steps then run in order, each taking the strongest candidate whose loss -- measured on
   the model so far, on the validation part of the samples -- leaves the later steps' reserves;
3. the result is judged on the **held-out** part of the samples (never seen by a choice); when it
   exceeds the budget there, the steps are chosen again with a smaller share of the budget
   (:data:`SHARES`, down to only what loses nothing on the choosing samples), and when nothing
   fits, the lossy steps are dropped (the result never exceeds the budget on the held-out
   samples).

Every candidate runs under the pass manager's checks (:class:`~graphpress.passes.NumericInstrument`
against the model it received, :class:`~graphpress.passes.InvariantInstrument`); a candidate a
check refuses is rolled back and the next one tried, with the reason recorded.

The budget (:class:`Budget`) is top-1 agreement with the original model (``"1%"``: at most 1 %
of the held-out rows may change their argmax; with labels, at most 1 point of accuracy), the
mean output cosine (``"cos:0.99"``), or a user metric (``Budget.of_metric(fn, drop=0.01)``:
``fn(model) -> float``, higher is better).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from graphpress.errors import GraphpressError

if TYPE_CHECKING:
    from graphpress.passes.context import TargetFacts

__all__ = ["RECIPES", "TARGETS", "Budget", "Quality", "RecipeResult", "Stage", "check_target", "copy_model", "model_kind", "parse_budget", "recipe_stages",
           "run_recipe", "split_samples", "target_kind"]

#: the recipes, and what each does
RECIPES = {
    "lossless": "cleanup, fusion, weight deduplication: the same function, fewer nodes and bytes",
    "int8": "lossless + int8 quantization: static QDQ for convolutional and dense models, dynamic int8 MatMuls for transformers (fp16 for cuda)",
    "prune-int8": "lossless + structured pruning (the largest ratio the budget allows) + int8",
    "smallest": "lossless + unstructured pruning + k-means weight sharing (fewest clusters the budget allows); written packed too",
    "fastest": "whichever of lossless, int8 and prune-int8 measures fastest on the target within the budget",
}

#: where a recipe's result runs
TARGETS = ("onnxruntime", "x86", "aarch64", "cuda")

LOSSLESS_SPEC = "cleanup,fuse,cleanup,dedup"


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much the whole pipeline may lose, measured against the original model.

    Attributes:
        kind: ``agreement`` (top-1 agreement; accuracy with labels), ``cosine`` (mean output
            cosine) or ``metric`` (a user metric).
        value: ``agreement``/``metric``: the largest drop (0.01 = 1 %); ``cosine``: the lowest
            mean cosine.
        metric: ``kind == "metric"``: ``metric(model) -> float``, higher is better.
    """

    kind: str
    value: float
    metric: Callable[[ir.Model], float] | None = None

    @classmethod
    def of_metric(cls, metric: Callable[[ir.Model], float], drop: float = 0.01) -> Budget:
        """A budget on the user's metric: it may drop by at most ``drop``."""
        return cls("metric", float(drop), metric)

    @property
    def allowed(self) -> float:
        """The largest loss (see :meth:`Quality.loss`) the budget allows."""
        return 1.0 - self.value if self.kind == "cosine" else self.value

    def describe(self, labeled: bool = False) -> str:
        """The budget in words (``labeled``: judged by accuracy against labels)."""
        if self.kind == "cosine":
            return f"mean output cosine >= {self.value:g}"
        if self.kind == "metric":
            return f"the metric drops by at most {self.value:g}"
        return f"top-1 {'accuracy drops by at most ' + format(100 * self.value, 'g') + ' pt' if labeled else 'agreement drops by at most ' + format(100 * self.value, 'g') + '%'}"


def parse_budget(budget: str | float | Budget | None) -> Budget:
    """``"1%"`` / ``0.01`` (top-1 agreement), ``"cos:0.99"`` (mean cosine), a :class:`Budget`;
    ``None``: 1 %."""
    if budget is None:
        return Budget("agreement", 0.01)
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)):
        return Budget("agreement", float(budget))
    text = str(budget).strip()
    try:
        if text.lower().startswith(("cos:", "cosine:")):
            value = float(text.split(":", 1)[1])
            if not 0.0 < value <= 1.0:
                raise ValueError
            return Budget("cosine", value)
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        if not 0.0 <= value < 1.0:
            raise ValueError
        return Budget("agreement", value)
    except ValueError:
        raise GraphpressError(f"budget '{budget}': give a top-1 agreement drop such as '1%' or a mean cosine such as 'cos:0.99'") from None


def split_samples(samples: Sequence[Mapping[str, np.ndarray]], held_out: float = 0.25) -> tuple[list[dict], list[dict]]:
    """``(choose, held_out)``: the samples the steps are chosen on, and the last ``held_out``
    share (at least one) that only judges the result. One sample is split along its first axis
    when it has several rows; a single row serves both (and the report says so)."""
    samples = [dict(s) for s in samples]
    if len(samples) == 1:
        rows = min(np.shape(v)[0] if np.ndim(v) else 1 for v in samples[0].values())
        if rows >= 2:
            cut = rows - max(1, int(round(rows * held_out)))
            return [{k: v[:cut] for k, v in samples[0].items()}], [{k: v[cut:] for k, v in samples[0].items()}]
        return samples, samples
    cut = len(samples) - max(1, int(round(len(samples) * held_out)))
    return samples[:cut], samples[cut:]


def _first_output_rows(outputs: Mapping[str, np.ndarray], rows_per_sample: list[int]) -> np.ndarray:
    """The first output as a 2-D array, one row per sample row (``run_samples`` concatenates)."""
    first = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    total = sum(rows_per_sample)
    if first.ndim >= 1 and first.shape[0] == total:
        return first.reshape(total, -1)
    return first.reshape(len(rows_per_sample), -1)


class Quality:
    """A model's loss against the original on a set of samples, in the budget's terms.

    ``loss(model)`` is ``1 - agreement`` (with labels: original accuracy - accuracy),
    ``1 - mean cosine``, or ``metric(original) - metric(model)``; :attr:`Budget.allowed` is the
    largest the budget allows."""

    def __init__(self, budget: Budget, original: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None = None):
        from graphpress.ir.numeric import run_samples

        self.budget = budget
        self.samples = [dict(s) for s in samples]
        self.labels = None if labels is None else np.asarray(labels).reshape(-1)
        self._rows = [int(min(np.shape(v)[0] if np.ndim(v) else 1 for v in s.values())) for s in self.samples]
        if budget.kind == "metric":
            self._reference = float(budget.metric(original))
        else:
            self._reference = _first_output_rows(run_samples(original, self.samples, where="the original model"), self._rows)
            if self.labels is not None and self.labels.size != self._reference.shape[0]:
                raise GraphpressError(f"labels: {self.labels.size} given for {self._reference.shape[0]} sample rows; give one label per row")

    def outputs(self, model: ir.Model) -> np.ndarray:
        from graphpress.ir.numeric import run_samples

        return _first_output_rows(run_samples(model, self.samples, where="the compressed model"), self._rows)

    def loss(self, model: ir.Model) -> float:
        if self.budget.kind == "metric":
            return self._reference - float(self.budget.metric(model))
        return self.loss_of_outputs(self.outputs(model))

    def loss_of_outputs(self, got: np.ndarray) -> float:
        """The loss of outputs already computed (e.g. by a compiled artifact), rows as :meth:`outputs`."""
        ref = self._reference
        got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
        if self.budget.kind == "cosine":
            num = (ref * got).sum(1)
            den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
            cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
            return float(1.0 - cos.mean())
        if self.labels is not None:
            return float((ref.argmax(1) == self.labels).mean() - (got.argmax(1) == self.labels).mean())
        return float(1.0 - (ref.argmax(1) == got.argmax(1)).mean())

    def describe(self, loss: float) -> str:
        """The loss in the budget's words."""
        if self.budget.kind == "cosine":
            return f"mean cosine {1 - loss:.4f}"
        if self.budget.kind == "metric":
            return f"metric drop {loss:.4g}"
        return f"top-1 accuracy drop {100 * loss:.2f} pt" if self.labels is not None else f"top-1 agreement drop {100 * loss:.2f}%"


@dataclasses.dataclass
class Stage:
    """One step of a recipe: candidate pass SPECs, strongest first (``{tolerance}`` in a SPEC is
    filled with the share of the budget the step may use)."""

    name: str
    candidates: list[str]
    lossy: bool = True


def model_kind(model: ir.Model) -> str:
    """``conv`` (convolutions), ``transformer`` (attention or layer norms: activations of wide
    range, where dynamic int8 MatMuls keep accuracy) or ``dense`` (MLPs)."""
    ops = {n.op_type for n in model.graph}
    if ops & {"Conv", "ConvTranspose"}:
        return "conv"
    return "transformer" if ops & {"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention"} else "dense"


def target_kind(target: str) -> str:
    """``x86``, ``aarch64``, ``cuda`` or ``onnxruntime``: a target name without its variant
    (``x86:avx2``, ``aarch64:i8mm``, ``cuda:sm_80``)."""
    return target.split(":", 1)[0]


def check_target(target: str) -> None:
    """Raises GraphpressError unless ``target`` is ``onnxruntime`` or names a TVM target kind
    (the backend checks the variant)."""
    if target_kind(target) not in TARGETS or (target != "onnxruntime" and target_kind(target) == "onnxruntime"):
        raise GraphpressError(f"target '{target}': choose one of {', '.join(TARGETS)} (x86:PATH, aarch64:i8mm, cuda:sm_XX included)")


def _quantize_candidates(model: ir.Model, target: str) -> list[str]:
    if target_kind(target) == "cuda":
        return ["quantize:mode=fp16"]
    if model_kind(model) != "transformer":
        return ["quantize:mode=static", "quantize:mode=static;tolerance={tolerance};max_fallback=16"]
    return ["quantize:mode=dynamic;ops=MatMul", "quantize:mode=dynamic;ops=MatMul;tolerance={tolerance};max_fallback=16"]


PRUNE_RATIOS = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
UNSTRUCTURED_RATIOS = (0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.3)
SHARE_CLUSTERS = (16, 32, 64, 128, 256)


def recipe_stages(recipe: str, model: ir.Model, target: str = "onnxruntime") -> list[Stage]:
    """The stages of ``recipe`` for ``model`` on ``target`` (``fastest`` is chosen by
    :func:`graphpress.compress`, which times the others)."""
    if recipe not in RECIPES or recipe == "fastest":
        raise GraphpressError(f"recipe '{recipe}': choose one of {', '.join(r for r in RECIPES if r != 'fastest')} (fastest: graphpress.compress)")
    check_target(target)
    stages = [Stage("lossless", [LOSSLESS_SPEC], lossy=False)]
    if recipe == "prune-int8":
        stages.append(Stage("prune", [f"prune:ratio={r}" for r in PRUNE_RATIOS]))
    if recipe in ("int8", "prune-int8"):
        stages.append(Stage("quantize", _quantize_candidates(model, target)))
    if recipe == "smallest":
        stages.append(Stage("prune", [f"prune:mode=unstructured;scope=global;ratio={r}" for r in UNSTRUCTURED_RATIOS]))
        stages.append(Stage("share", [f"share:clusters={c}" for c in SHARE_CLUSTERS]))
    return stages


#: the shares of the budget the steps are chosen with, in turn, until the held-out check passes
#: (0: only candidates that lose nothing on the choosing samples)
SHARES = (1.0, 0.7, 0.5, 0.3, 0.15, 0.0)


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of ``model`` (its weights read into memory)."""
    from graphpress.ir.io import _materialize, to_proto

    return ir.serde.deserialize_model(_materialize(to_proto(model), model))


@dataclasses.dataclass
class RecipeResult:
    """What :func:`run_recipe` did.

    Attributes:
        model: the compressed model.
        steps: one record per stage: ``stage``, ``chosen`` (the SPEC or None), ``loss`` (on the
            choosing samples), ``tried`` (``[spec, outcome]`` pairs), ``passes`` (the pass
            records of the chosen candidate, with their verification).
        held_out_loss: the result's loss on the held-out samples.
        attempts: how many times the steps were chosen (more than one: the held-out check sent
            them back with a smaller share of the budget).
    """

    model: ir.Model
    steps: list[dict[str, Any]]
    held_out_loss: float
    attempts: int
    budget: Budget
    seconds: float = 0.0
    #: the model after each step that was kept, ``(stage, model)``, in order (the report's pictures)
    path: list[tuple[str, ir.Model]] = dataclasses.field(default_factory=list)


def _apply(model: ir.Model, spec: str, calibration: list[dict], check: list[dict], metric, target=None) -> tuple[ir.Model, list[dict]]:
    """``spec`` on a copy of ``model``, every pass checked; returns the copy and the pass records.
    ``target``: the :class:`~graphpress.passes.context.TargetFacts` passes may know."""
    from graphpress.passes import InvariantInstrument, NumericInstrument, PassManager, build_passes
    from graphpress.passes.context import PassContext

    copy = copy_model(model)
    instruments = [InvariantInstrument(), NumericInstrument(check, "the recipe's samples", min_cosine=0.0)]
    context = PassContext(samples=calibration, samples_source="the recipe's samples", metric=metric, target=target)
    result = PassManager(build_passes(spec), instruments, context=context).run(copy)
    return copy, [r.to_dict() for r in result.records]


def run_recipe(
    model: ir.Model,
    stages: Sequence[Stage],
    budget: Budget,
    choose: Sequence[Mapping[str, np.ndarray]],
    held_out: Sequence[Mapping[str, np.ndarray]],
    *,
    labels: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    progress: Callable[[str], None] | None = None,
    target: TargetFacts | None = None,
    recover: Callable[[ir.Model], tuple[ir.Model, str]] | None = None,
) -> RecipeResult:
    """Run ``stages`` on a copy of ``model`` within ``budget`` (see the module's doc); the passes
    know the ``target``'s facts (7-bit weights for an x86 target without an int8 dot product).

    Args:
        choose: the samples steps are calibrated and chosen on.
        held_out: the samples that judge the result only.
        labels: labels of the ``choose`` and ``held_out`` rows (optional).
        progress: called with a line per candidate tried.
        target: what passes may know of where the result runs (None: nothing).
        recover: fine-tunes every lossy candidate before it is judged (``graphpress.recover``
            against the model given; returns the model and a line for the record), so a
            stronger candidate fits the budget when training wins back what it costs.
    """
    start = time.perf_counter()
    say = progress or (lambda line: None)
    choose, held_out = [dict(s) for s in choose], [dict(s) for s in held_out]
    val = Quality(budget, model, choose, labels[0])
    judge = Quality(budget, model, held_out, labels[1])
    allowed = budget.allowed
    check = choose[:4]
    metric = (lambda m: -val.loss(m)) if budget.kind != "metric" else budget.metric  # quantize's accuracy control: higher is better

    lossless = [s for s in stages if not s.lossy]
    lossy = [s for s in stages if s.lossy]
    base, lossless_steps, lossless_path = copy_model(model), [], []
    for stage in lossless:
        say(f"{stage.name}: {stage.candidates[0]}")
        base, records = _apply(base, stage.candidates[0], choose, check, None, target)
        lossless_path.append((stage.name, base))
        lossless_steps.append({"stage": stage.name, "chosen": stage.candidates[0], "loss": val.loss(base), "tried": [[stage.candidates[0], "applied"]], "passes": records})

    def attempt(share: float) -> tuple[ir.Model, list[dict], list[tuple[str, ir.Model]]]:
        room_total = allowed * share
        reserve: dict[str, float] = {}
        for stage in lossy[1:]:  # each later step alone: what it will cost
            for spec in stage.candidates:
                spec = spec.replace("{tolerance}", f"{room_total:.6g}")
                try:
                    cand, _ = _apply(base, spec, choose, check, metric, target)
                    cand = recover(cand)[0] if recover else cand
                except GraphpressError:
                    continue
                loss = val.loss(cand)
                if loss <= room_total:
                    reserve[stage.name] = max(loss, 0.0)
                    break
        current, steps, path = base, [], []
        for i, stage in enumerate(lossy):
            room = room_total - sum(reserve.get(s.name, 0.0) for s in lossy[i + 1 :])
            step: dict[str, Any] = {"stage": stage.name, "chosen": None, "loss": None, "tried": [], "room": room}
            stage_start = time.perf_counter()
            for n, spec in enumerate(stage.candidates):
                spec = spec.replace("{tolerance}", f"{max(room, 0.0):.6g}")
                left = len(stage.candidates) - n
                # the candidates so far tell the time per candidate: at most this much is left of the step
                eta = f", at most ~{(time.perf_counter() - stage_start) / n * left:.0f} s left" if n else ""
                say(f"step {i + 1}/{len(lossy)} {stage.name}, candidate {n + 1} of at most {len(stage.candidates)}{eta}: trying {spec}")
                recovered = ""
                try:
                    cand, records = _apply(current, spec, choose, check, metric, target)
                    if recover:
                        say(f"step {i + 1}/{len(lossy)} {stage.name}: recovering {spec}")
                        cand, recovered = recover(cand)
                        recovered = f" after recovery ({recovered})"
                except GraphpressError as e:  # a check refused it (NumericMismatchError) or the pass could not run
                    step["tried"].append([spec, f"rolled back: {str(e)[:300]}"])
                    continue
                loss = val.loss(cand)
                if loss <= room:
                    step["tried"].append([spec, f"kept{recovered}: {val.describe(loss)}"])
                    step.update(chosen=spec, loss=loss, passes=records)
                    current = cand
                    path.append((stage.name, cand))
                    break
                step["tried"].append([spec, f"over its share of the budget{recovered}: {val.describe(loss)} (room {room:.4g})"])
            if step["chosen"] is None:  # over the budget, or every candidate refused to run (a quantized model's quantize)
                ran = any(not outcome.startswith("rolled back") for _, outcome in step["tried"])
                step["skipped"] = "no candidate fits its share of the budget" if ran else "no candidate could run (each one's reason below)"
            steps.append(step)
        return current, steps, path

    attempts, result, steps, loss, path = 0, base, [], judge.loss(base), []
    for share in SHARES:
        if not lossy:
            break
        attempts += 1
        cand, cand_steps, cand_path = attempt(share)
        cand_loss = judge.loss(cand)
        say(f"held-out check: {judge.describe(cand_loss)} (budget: {budget.describe(judge.labels is not None)})")
        if cand_loss <= allowed:
            result, steps, loss, path = cand, cand_steps, cand_loss, cand_path
            break
        steps = cand_steps
        for step in steps:
            step.setdefault("held_out", f"the result lost {judge.describe(cand_loss)} on the held-out samples: chosen again with a smaller share")
    else:  # nothing fitted on the held-out samples: the lossless model
        for step in steps:
            step["chosen"] = None
            step["skipped"] = "dropped: no choice kept the held-out samples within the budget"
    if lossy and loss > allowed:
        result, loss, path = base, judge.loss(base), []
    return RecipeResult(result, lossless_steps + steps, loss, attempts, budget, round(time.perf_counter() - start, 2), lossless_path + path)
