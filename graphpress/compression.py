"""One call from a model to a smaller, faster, verified result: :func:`compress` runs a recipe
(:mod:`graphpress.pipelines`) under one accuracy budget, compiles the result for the target (or
keeps ONNX for ONNX Runtime) and measures it against the peers in one run; :func:`bench` times
a model and an artifact against ONNX Runtime's fp32 and best int8 configurations side by side.

The peers are configured at their best, never their defaults: ONNX Runtime with every graph
optimization and one thread per core; ONNX Runtime's int8 as its own quantizer does it best on
x86 -- static QDQ, uint8 activations, int8 per-channel weights, MinMax calibration on the same
samples, for convolutional models; dynamic int8 MatMuls for transformers.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.errors import GraphpressError
from graphpress.pipelines import (
    RECIPES, Budget, Quality, RecipeResult, check_target, copy_model, model_kind, parse_budget, recipe_stages, run_recipe, split_samples, target_kind,
)  # fmt: skip

__all__ = ["BenchResult", "CompressResult", "bench", "compress", "onnxruntime_int8", "ort_session"]

#: samples made from the declared input shapes when none are given
GENERATED_SAMPLES = 16


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onnxruntime_int8(model: ir.Model, calibration: Sequence[Mapping[str, np.ndarray]], workdir: str | os.PathLike) -> Path:
    """ONNX Runtime's best int8 version of ``model``, made by ONNX Runtime's own quantizer after its
    own pre-processing (``quant_pre_process``: shape inference, BatchNorm folding; not for
    transformers, where it fuses away the MatMuls dynamic quantization needs), on the model with
    its constants folded (graphpress ``cleanup``: torch exports put weights behind Transposes,
    which the quantizer does not see as weights): static QDQ
    (uint8 activations, int8 per-channel weights, MinMax on ``calibration``) for a model with
    convolutions, dynamic int8 MatMuls otherwise. Returns the path of the quantized file."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from graphpress.ir.io import save

    from graphpress.passes import PassManager, build_passes

    folded = copy_model(model)  # constants folded first (a weight behind a Transpose is no weight to the quantizer)
    PassManager(build_passes("cleanup")).run(folded)
    raw = save(folded, Path(workdir) / "ort-int8-source.onnx")
    src, dst = Path(workdir) / "ort-int8-prepared.onnx", Path(workdir) / "ort-int8.onnx"
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the quantizer logs advice on the root logger
    try:
        try:  # not for a transformer: its optimizer fuses the MatMuls the dynamic quantizer looks for (MiniLM: none left)
            if model_kind(model) == "transformer":
                raise ValueError
            quant_pre_process(str(raw), str(src))
        except Exception:  # its optimizer or symbolic shape inference refused: quantize the model as given
            src = raw
        _quantize_with_ort(model, calibration, src, dst, quantize_static, quantize_dynamic, CalibrationMethod, QuantFormat, QuantType)
    finally:
        root.level = level
    return dst


def _quantize_with_ort(model, calibration, src, dst, quantize_static, quantize_dynamic, CalibrationMethod, QuantFormat, QuantType) -> None:
    if model_kind(model) != "transformer":
        names = {v.name for v in model.graph.inputs}
        feeds = iter([{k: v for k, v in s.items() if k in names} for s in calibration])

        class _Reader:
            def get_next(self):
                return next(feeds, None)

        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    else:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"])


def _disk_bytes(model: ir.Model, packed: bool) -> tuple[int, int | None]:
    """``(bytes of the .onnx file written by graphpress, bytes packed by graphpress pack or None)``
    (packing tries every codec on every tensor: a minute for MiniLM's 91 MB, so only when asked)."""
    from graphpress.ir.io import _materialize, to_proto
    from graphpress.ir.pack import pack_bytes

    data = _materialize(to_proto(model), model).SerializeToString()
    return len(data), len(pack_bytes(data)[0]) if packed else None


def _timed(fns: Mapping[str, Callable[[], object]], seconds: float) -> dict[str, dict[str, float]]:
    """Median and spread (10th-90th percentile) in ms per engine, timed in blocks in one run."""
    from graphpress.ir.timing import blocked_samples, repeats_for

    samples = blocked_samples(fns, repeats_for(fns, seconds, least=10, most=200))
    out = {}
    for key, times in samples.items():
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
        out[key] = {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "runs": len(times)}
    return out


@dataclasses.dataclass
class CompressResult:
    """What :func:`compress` made and measured.

    Attributes:
        model: the compressed model (ONNX, in the IR).
        compiled: the compiled artifact (TVM targets), else None.
        recipe: the recipe run (``fastest``: the one it chose, in ``chosen_recipe``).
        steps: the recipe's steps (:class:`graphpress.pipelines.RecipeResult`), with every
            candidate tried and why it was kept, rolled back or skipped.
        rows: the before/after table, one dict per model variant (size, params, MACs,
            latency and its ratio to ONNX Runtime fp32, accuracy on the held-out samples).
        notes: lines the user should read (generated samples, a single held-out row, ...).
    """

    model: ir.Model
    compiled: Any
    recipe: str
    chosen_recipe: str
    target: str
    budget: Budget
    steps: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    notes: list[str]
    machine: dict[str, Any]
    held_out_loss: float
    seconds: float
    labeled: bool = False
    #: the model given, and the model after each kept step (``(stage, model)``): the report's pictures
    original: ir.Model | None = None
    path: list[tuple[str, ir.Model]] = dataclasses.field(default_factory=list)
    #: target ``onnxruntime``, measured: the session settings chosen (stored in the model's
    #: metadata, :func:`ort_session` opens it with them) and every candidate's median
    onnxruntime_settings: dict[str, Any] | None = None

    def to_module(self, module, example_inputs: Any = None, **options: Any) -> Any:
        """The compressed model as a copy of ``module``, the ``torch.nn.Module`` it was exported
        from: pruned, folded, with fake-quantized or shared weights (:func:`graphpress.to_module`,
        which checks it against the compressed model; give it your inputs with ``samples=``)."""
        from graphpress.torch_module import to_module

        return to_module(self.model, module, example_inputs, **options)

    def budget_text(self) -> str:
        """The budget in words (accuracy in points when labels were given)."""
        return self.budget.describe(self.labeled)

    def to_dict(self) -> dict[str, Any]:
        """The report JSON: the project's report keys (``passes``: the chosen candidates' pass
        records; ``before``/``after``; ``verification``: the held-out verdict), then the table,
        the steps with every candidate tried, the notes and the machine."""
        first, compressed = self.rows[0], next(r for r in self.rows if r["variant"].startswith("graphpress, ONNX"))
        brief = lambda row: {k: row.get(k) for k in ("params", "onnx_bytes", "macs")}  # noqa: E731
        return {
            "passes": [p for step in self.steps for p in step.get("passes") or []],
            "before": brief(first), "after": brief(compressed),
            "verification": {"budget": self.budget_text(), "held_out_loss": self.held_out_loss, "passed": self.held_out_loss <= self.budget.allowed,
                             "held_out": compressed.get("held_out")},
            "recipe": self.recipe, "chosen_recipe": self.chosen_recipe, "target": self.target,
            "steps": self.steps, "rows": self.rows, "notes": self.notes, "machine": self.machine, "seconds": self.seconds,
            **({"onnxruntime_settings": self.onnxruntime_settings} if self.onnxruntime_settings else {}),
        }  # fmt: skip


def _as_model(model: ir.Model | str | os.PathLike) -> ir.Model:
    from graphpress.ir import load

    return load(model) if isinstance(model, (str, os.PathLike)) else model


def _samples_for(model: ir.Model, samples) -> tuple[list[dict], str | None]:
    from graphpress.ir.numeric import as_samples, make_inputs

    if samples is None:
        made = [make_inputs(model, seed=i) for i in range(GENERATED_SAMPLES)]
        return made, (f"no samples given: {GENERATED_SAMPLES} inputs were generated from the declared shapes (seeds 0-{GENERATED_SAMPLES - 1}); "
                      "accuracy was not measured on real data: give --samples X.npz")  # fmt: skip
    return as_samples(samples), None


def _default_budget(model: ir.Model) -> Budget:
    """1 % top-1 agreement for convolutional and dense models (classifiers), mean cosine 0.99 for
    transformers (embeddings have no top-1)."""
    return Budget("cosine", 0.99) if model_kind(model) == "transformer" else Budget("agreement", 0.01)


def compress(
    model: ir.Model | str | os.PathLike,
    target: str = "onnxruntime",
    *,
    samples: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    budget: str | float | Budget | None = None,
    recipe: str = "int8",
    labels: np.ndarray | None = None,
    measure: bool = True,
    progress: Callable[[str], None] | None = None,
    rpc: str | None = None,
    recover: Mapping[str, Any] | None = None,
    train_data: Any = None,
) -> CompressResult:
    """Compress ``model`` with ``recipe`` within ``budget`` and build it for ``target``.

    Args:
        model: an IR model or the path of an ``.onnx`` file (not changed).
        target: ``onnxruntime`` (the result is ONNX), ``x86``, ``aarch64`` or ``cuda`` (compiled
            with TVM; host targets are checked against ONNX Runtime and timed), with a variant
            where TVM has one (``x86:avx2``, ``aarch64:i8mm``, ``cuda:sm_80``); the quantizer
            knows the target's facts (7-bit weights for x86 without an int8 dot product).
        samples: real inputs (a dict of arrays with a leading row axis, or a list of dicts); the
            last quarter is held out and only judges the result. Default: generated inputs
            (the result's notes say so).
        budget: what the whole pipeline may lose against ``model`` (:func:`graphpress.pipelines.parse_budget`):
            ``"1%"`` top-1 agreement (accuracy with ``labels``), ``"cos:0.99"``, a
            :class:`~graphpress.pipelines.Budget`; default: 1 % for convolutional models,
            cosine 0.99 for others.
        recipe: one of :data:`graphpress.pipelines.RECIPES`.
        labels: one label per sample row (optional): the budget is then accuracy.
        measure: time the result against the peers (host targets and ``onnxruntime``).
        progress: called with a line per step (the CLI shows them).
        rpc: compile for a device reached through TVM's RPC (``HOST:PORT:KEY`` through a
            tracker, ``HOST:PORT`` one server): the int8 guards and the check run there, and so
            does the artifact's held-out verdict (:func:`graphpress.backends.tvm.compile_model`).
        recover: fine-tune every lossy candidate against ``model`` before it is judged
            (:func:`graphpress.recover`'s options, e.g. ``{"epochs": 3}``), so stronger
            candidates fit the budget; the held-out samples still only judge.
        train_data: the inputs recovery trains on (an ``.npz`` path, a dict of rows or a list
            of feed dicts; default: the samples the steps are chosen on).

    Raises:
        GraphpressError: a bad option, or a model the pipeline or the backend cannot handle.
    """
    import time

    start = time.perf_counter()
    if recipe not in RECIPES:
        raise GraphpressError(f"recipe '{recipe}': choose one of {', '.join(RECIPES)}")
    check_target(target)
    facts = None
    if target != "onnxruntime":  # the variant checked, and what the passes may know of it
        from graphpress.backends.tvm.targets import resolve_target, target_facts

        facts = target_facts(resolve_target(target))
    original = copy_model(_as_model(model))
    given, note = _samples_for(original, samples)
    notes = [note] if note else []
    choose, held_out = split_samples(given)
    if held_out is choose:
        notes.append("one sample row: the held-out check ran on the samples the steps were chosen on")
    budget = parse_budget(budget) if budget is not None else _default_budget(original)
    split_labels = _split_labels(labels, choose, held_out)
    say = progress or (lambda line: None)

    recover_fn = _recovery(original, recover, train_data if train_data is not None else choose, say) if recover is not None else None

    def run(name: str) -> RecipeResult:
        say(f"recipe {name}")
        return run_recipe(original, recipe_stages(name, original, target), budget, choose, held_out, labels=split_labels, progress=say, target=facts,
                          recover=recover_fn)  # fmt: skip

    compiled = None
    if recipe == "fastest":
        results = {name: run(name) for name in ("lossless", "int8", "prune-int8")}
        chosen, compiled = _fastest(results, target, held_out, original, say)
        result = results[chosen]
    else:
        chosen, result = recipe, run(recipe)
    if rpc is not None and target == "onnxruntime":
        raise GraphpressError("--rpc: the onnxruntime target writes ONNX; give a TVM target (e.g. --target aarch64) to compile for the device")
    if compiled is None and target != "onnxruntime":
        compiled = _compile(result.model, target, held_out, original, say, rpc)
    if compiled is not None and compiled.meta["build"].get("int8_refused"):
        notes.append(f"the integer kernels were refused by the check against ONNX Runtime ({compiled.meta['build']['int8_refused'][:200]}); "
                     "the artifact computes the quantized model in float Quantize/Dequantize arithmetic instead")  # fmt: skip
    judge = Quality(budget, original, held_out, split_labels[1])
    rows, machine = _rows(original, result.model, compiled, target, choose, held_out, judge, measure, say, pack=chosen == "smallest")
    settings = _choose_settings(result.model, held_out[0], say) if target == "onnxruntime" and measure else None
    return CompressResult(result.model, compiled, recipe, chosen, target, budget, result.steps, rows, notes, machine, result.held_out_loss,
                          round(time.perf_counter() - start, 1), labeled=labels is not None, original=original, path=result.path,
                          onnxruntime_settings=settings)  # fmt: skip


def _substrings(text: str) -> list[str]:
    """``embeddings|LayerNorm``: ``|``-separated substrings of initializer names."""
    return [s.strip() for s in text.split("|") if s.strip()]


def _blocks(text: str) -> str | dict[str, str]:
    """``auto``, or ``in>out|in2>out2``: the blocks of :func:`graphpress.recover_blocks`."""
    if text.strip() == "auto":
        return "auto"
    pairs = [p.split(">") for p in _substrings(text)]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(text)
    return {a.strip(): b.strip() for a, b in pairs}


#: the options of ``compress(recover=...)`` / ``--recover``: those of :func:`graphpress.recover`,
#: and ``blocks`` (with ``block_epochs``, ``block_mask``): :func:`graphpress.recover_blocks` first
RECOVER_OPTIONS = {"epochs": int, "lr": float, "batch_size": int, "temperature": float, "loss": str, "seed": int, "held_out": float, "freeze": _substrings, "schedule": str,
                   "blocks": _blocks, "block_epochs": int, "block_mask": str}  # fmt: skip
BLOCK_OPTIONS = ("blocks", "block_epochs", "block_mask")


def _recovery(original: ir.Model, options: Mapping[str, Any], data: Any, say) -> Callable[[ir.Model], tuple[ir.Model, str]]:
    from graphpress.recovery import recover, recover_blocks

    unknown = sorted(set(options) - set(RECOVER_OPTIONS))
    if unknown:
        raise GraphpressError(f"recover option '{unknown[0]}': choose from {', '.join(RECOVER_OPTIONS)}")

    if any(k in options for k in BLOCK_OPTIONS) and "blocks" not in options:
        raise GraphpressError("recover options block_epochs/block_mask go with blocks=auto (or blocks=in>out|...)")
    blocks = {k: options[k] for k in BLOCK_OPTIONS if k in options}
    options = {k: v for k, v in options.items() if k not in BLOCK_OPTIONS}

    def run(model: ir.Model) -> tuple[ir.Model, str]:
        staged = ""
        try:
            if blocks:
                first = recover_blocks(model, original, data, blocks["blocks"], mask=blocks.get("block_mask"), epochs=blocks.get("block_epochs", 5), seed=options.get("seed", 0), progress=say)
                model = first.model
                staged = f"{len(first.blocks)} block{'s' if len(first.blocks) != 1 else ''} in {first.seconds:.1f} s, then "
            result = recover(model, original, data, progress=say, **options)
        except GraphpressError:
            raise
        except Exception as e:  # a bug in recovery: the candidate is rolled back with the reason, the run goes on
            raise GraphpressError(f"recovery failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
        kept = "" if result.epoch == len(result.history) else ("; every epoch did worse: the weights before training kept" if result.epoch == 0 else f"; epoch {result.epoch} kept")
        return result.model, f"{staged}{len(result.history)} epochs in {result.seconds:.1f} s, held-out {result.metric} {result.before:.4f} -> {result.after:.4f}{kept}"

    return run


def parse_recover(text: str) -> dict[str, Any]:
    """``epochs=3,lr=0.001`` (``--recover``) as options of :func:`graphpress.recover`."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in RECOVER_OPTIONS:
            raise GraphpressError(f"--recover {text}: give KEY=VALUE pairs from {', '.join(RECOVER_OPTIONS)} (e.g. epochs=3,lr=0.001)")
        try:
            out[key] = RECOVER_OPTIONS[key](value.strip())
        except ValueError:
            what = "auto or INPUT>OUTPUT|INPUT>OUTPUT value names" if key == "blocks" else f"a {RECOVER_OPTIONS[key].__name__}"
            raise GraphpressError(f"--recover {text}: {key}={value} is not {what}") from None
    return out


def _choose_settings(model: ir.Model, feeds: Mapping[str, np.ndarray], say) -> dict[str, Any]:
    """The ONNX Runtime session settings that run ``model`` fastest here (timed side by side),
    stored in its metadata under :data:`~graphpress.ir.timing.ORT_SETTINGS_KEY` with where they
    were measured."""
    import json

    import onnxruntime as ort

    from graphpress.ir.io import _materialize, to_proto
    from graphpress.ir.timing import ORT_SETTINGS_KEY, choose_onnxruntime_settings

    say("choosing ONNX Runtime's session settings")
    chosen, timed = choose_onnxruntime_settings(_materialize(to_proto(model), model).SerializeToString(), feeds, _threads())
    stored = {**chosen, "measured": {"cpu": cpu_model(), "threads": _threads(), "onnxruntime": ort.__version__,
                                     "median_ms": next(t["median_ms"] for t in timed if {k: t[k] for k in chosen} == chosen)}}  # fmt: skip
    model.metadata_props[ORT_SETTINGS_KEY] = json.dumps(stored, sort_keys=True)
    return {"chosen": stored, "candidates": timed}


def ort_session(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU) on the ``.onnx`` file at ``path`` with the session
    settings ``compress --target onnxruntime`` measured fastest and stored in it (metadata key
    ``graphpress.onnxruntime_settings``); every graph optimization when it has none.

    Args:
        path: an ``.onnx`` file (its external data beside it, as ONNX Runtime reads it).
        threads: intra-op threads instead of the stored count (which was measured on the machine
            that compressed the model).

    Raises:
        GraphpressError: no such file, not an ONNX model, unreadable settings, or a model ONNX
            Runtime refuses (one line naming the file).
    """
    import json

    import onnx
    import onnxruntime as ort

    from graphpress.ir.timing import ORT_SETTINGS_KEY, session_options

    p = Path(path)
    if not p.is_file():
        raise GraphpressError(f"{p}: no such file; give the path of an .onnx model")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise GraphpressError(f"{p}: not an ONNX model ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    stored = next((m.value for m in proto.metadata_props if m.key == ORT_SETTINGS_KEY), None)
    settings: dict[str, Any] = {"graph_optimization_level": "ORT_ENABLE_ALL"}
    if stored is not None:
        try:
            settings = json.loads(stored)
            session_options(settings)  # every name checked before the session is made
        except (ValueError, TypeError, AttributeError) as e:
            raise GraphpressError(f"{p}: its metadata '{ORT_SETTINGS_KEY}' is not valid settings ({e}); remove the key or compress again") from None
    if threads is not None:
        settings = {**settings, "intra_op_num_threads": int(threads)}
    opts = session_options(settings)
    try:
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise GraphpressError(f"{p}: ONNX Runtime refuses the model ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None


def _split_labels(labels, choose, held_out):
    if labels is None:
        return (None, None)
    labels = np.asarray(labels).reshape(-1)
    rows = [sum(int(min(np.shape(v)[0] for v in s.values())) for s in part) for part in (choose, held_out)]
    if held_out is choose:
        return labels, labels
    if labels.size != rows[0] + rows[1]:
        raise GraphpressError(f"labels: {labels.size} given for {rows[0] + rows[1]} sample rows; give one label per row")
    return labels[: rows[0]], labels[rows[0] :]


def _compile(model: ir.Model, target: str, held_out, original, say, rpc: str | None = None):
    from graphpress.backends.tvm.build import CHECK_SAMPLES, compile_model

    say(f"compiling for {target}")
    # checked against ONNX Runtime on the held-out samples; timed below with the peers
    try:
        return compile_model(model, target, samples=held_out[:CHECK_SAMPLES], baseline=original, measure=False, progress=say, rpc=rpc)
    except GraphpressError as e:
        if "differs from ONNX Runtime" not in str(e) or not any(n.op_type == "QuantizeLinear" for n in model.graph):
            raise
        # the integer kernels' result was refused by the check: the quantized model in float
        # Quantize/Dequantize arithmetic instead (what ONNX Runtime computes), checked the same way
        say(f"integer kernels refused by the check ({str(e)[:160]}): compiling without them")
        compiled = compile_model(model, target, samples=held_out[:CHECK_SAMPLES], baseline=original, measure=False, int8="off", progress=say, rpc=rpc)
        compiled.meta["build"]["int8_refused"] = str(e)
        return compiled


def _fastest(results: dict[str, RecipeResult], target: str, held_out, original, say) -> tuple[str, Any]:
    """The recipe whose result runs fastest on ``target`` (ONNX Runtime, or the compiled artifact
    on this host); cross-compiled targets: the most compressed (prune-int8)."""
    from graphpress.ir.timing import onnxruntime_best

    feeds = held_out[0]
    if target_kind(target) in ("aarch64", "cuda"):
        return "prune-int8", None
    engines, compiled = {}, {}
    for name, result in results.items():
        if target == "onnxruntime":
            session = onnxruntime_best(result.model, _threads(), f"the {name} result")
            engines[name] = (lambda s=session: s.session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in s.session.get_inputs()}}))
        else:
            compiled[name] = _compile(result.model, target, held_out, original, say)
            engines[name] = lambda c=compiled[name]: c(**feeds)
    say("timing the candidates")
    timed = _timed(engines, 3.0)
    chosen = min(timed, key=lambda k: timed[k]["median_ms"])
    return chosen, compiled.get(chosen)


#: the first row of compress's table: the model the user gave, on ONNX Runtime
ORIGINAL = "original, ONNX Runtime fp32"
ORIGINAL_QUANTIZED = "original (quantized already), ONNX Runtime"


def _rows(original, compressed, compiled, target, choose, held_out, judge: Quality, measure: bool, say, pack: bool) -> tuple[list[dict], dict]:
    """The before/after table: the original on ONNX Runtime (fp32), ONNX Runtime's best int8 of the
    original, the compressed ONNX on ONNX Runtime, and the artifact (``pack``: with packed sizes)."""
    from graphpress.ir import summarize
    from graphpress.ir.timing import onnxruntime_best
    from graphpress.passes.quantization import is_quantized

    threads = _threads()
    feeds = held_out[0]
    variants: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="graphpress-compress-") as tmp:
        from graphpress.ir import load

        quantized = bool(is_quantized(original))
        if quantized:  # its own row is ONNX Runtime's int8 (quantizing it again: a graph ORT refuses)
            ort_int8, peer_note = None, "not made: the original is quantized already (its own row is ONNX Runtime's int8)"
        else:
            say("ONNX Runtime's best int8 of the original (its own quantizer)")
            try:
                ort_int8 = load(onnxruntime_int8(original, choose, tmp))
                judge.loss(ort_int8)  # the quantizer can write what ONNX Runtime refuses (per-channel DequantizeLinear below opset 13)
            except Exception as e:  # the peer's quantizer refused this model, or ORT refused its result: its row says why
                ort_int8, peer_note = None, f"not made: {str(e).splitlines()[0][:160]}"
        first = ORIGINAL_QUANTIZED if quantized else ORIGINAL
        models = {first: original, "ONNX Runtime int8 (its quantizer, best settings)": ort_int8, "graphpress, ONNX on ONNX Runtime": compressed}
        engines = {}
        for label, m in models.items():
            if m is None:  # the peer's int8: its row says why it is missing
                variants[label] = {"note": peer_note}
                continue
            summary = summarize(copy_model(m))
            size, packed = _disk_bytes(m, pack)
            loss = judge.loss(m)  # one ONNX Runtime pass over the held-out samples
            row = {"params": summary.params, "macs": summary.macs, "onnx_bytes": size, "packed_bytes": packed,
                   "held_out": judge.describe(loss), "held_out_loss": loss}  # fmt: skip
            variants[label] = row
            if measure:
                session = onnxruntime_best(m, threads, label)
                names = {i.name for i in session.session.get_inputs()}
                engines[label] = lambda s=session, f={k: v for k, v in feeds.items() if k in names}: s.session.run(None, f)
        if compiled is not None:
            label = f"graphpress, compiled for {target}"
            row: dict[str, Any] = {}
            if compiled.meta["target_name"] and (_host(target) or compiled.remote is not None):
                got = np.concatenate([np.asarray(compiled.run_named(**s)[compiled.output_names[0]]).reshape(-1) for s in held_out])
                loss = judge.loss_of_outputs(got)
                row.update(held_out=judge.describe(loss), held_out_loss=loss)
                if compiled.remote is not None:
                    label = f"{label} (held-out run on {compiled.remote.describe()}; latency: graphpress bench --rpc)"
                    compiled.release()  # the device is free again
                elif measure:
                    engines[label] = lambda: compiled(**feeds)
            variants[label] = row
        if engines:
            say("timing, side by side")
            timed = _timed(engines, 4.0)
            base = timed[first]["median_ms"]
            for label, t in timed.items():
                variants[label].update({k: round(v, 4) for k, v in t.items() if k != "runs"}, runs=t["runs"], speedup=round(base / t["median_ms"], 3))
    machine = {"cpu": cpu_model(), "threads": threads}
    return [{"variant": k, **v} for k, v in variants.items()], machine


def _bench_remote(artifact: Any, inputs, rpc: str, seconds: float) -> BenchResult:
    """The artifact directory timed on the device at ``rpc`` (TVM's time evaluator there)."""
    from graphpress.backends.tvm.runtime import Remote, concrete_input_specs, load, vm_timings
    from graphpress.ir.numeric import as_samples, random_inputs

    if artifact is None or hasattr(artifact, "meta"):
        raise GraphpressError("bench --rpc: give the artifact directory (--artifact DIR): it is uploaded to the device and timed there")
    remote = Remote(rpc)
    compiled = load(artifact, remote=remote)
    feeds = _fit_to_artifact(as_samples(inputs)[0], compiled) if inputs is not None else random_inputs(concrete_input_specs(compiled.meta["inputs"]))
    import tvm

    args = [tvm.runtime.tensor(a, compiled.device) for a in compiled._arrays((), feeds)]
    first = vm_timings(compiled.vm, compiled.device, args, number=1, repeat=1)[0]  # a warm-up call that also sizes the run
    runs = max(5, min(200, int(seconds * 1e3 / max(first, 1e-3))))
    times = vm_timings(compiled.vm, compiled.device, args, number=1, repeat=runs)
    del args
    compiled.release()  # the device is free again
    row = {"engine": f"graphpress artifact ({compiled.meta.get('target_name', '?')}) on {remote.describe()}", "median_ms": round(statistics.median(times), 4),
           "p10_ms": round(float(np.percentile(times, 10)), 4), "p90_ms": round(float(np.percentile(times, 90)), 4), "runs": runs, "speedup": None}  # fmt: skip
    return BenchResult([row], {"cpu": remote.describe(), "threads": "the device's"})


def _fit_to_artifact(feeds: Mapping[str, np.ndarray], artifact) -> dict[str, np.ndarray]:
    """``feeds`` cut to the artifact's static batch (its first rows) when they hold more rows, so
    that every engine runs the same inputs; a clear error when they cannot fit."""
    out = dict(feeds)
    for spec in artifact.meta["inputs"]:
        name, shape = spec["name"], spec["shape"]
        if name not in out:
            raise GraphpressError(f"bench: the inputs have no '{name}', which the artifact takes; inputs: {', '.join(out)}")
        value = np.asarray(out[name])
        if shape and isinstance(shape[0], int) and value.ndim == len(shape) and value.shape[0] > shape[0] and list(value.shape[1:]) == list(shape[1:]):
            out[name] = value[: shape[0]]
    return out


def _host(target: str) -> bool:
    from graphpress.backends.tvm.targets import resolve_target

    return resolve_target(target).is_host


@dataclasses.dataclass
class BenchResult:
    """Latency side by side: one dict per engine (median, 10th/90th percentile, runs, speed-up
    over ONNX Runtime fp32), and the machine."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "machine": self.machine}


#: :func:`bench`'s row of ONNX Runtime on a model that came quantized
QUANTIZED_AS_GIVEN = "ONNX Runtime int8 (the model as given)"


def _fp32_counterpart(model: ir.Model) -> ir.Model | None:
    """``model`` with its quantized layers in float (the TVM int8 path's rewrite), or None for a
    quantized form that rewrite does not cover (ONNX Runtime's QOperator ops)."""
    from graphpress.backends.tvm.int8 import to_fp32
    from graphpress.ir.io import clone
    from graphpress.passes.quantization import INTEGER_LAYERS

    fp32 = clone(model)
    try:
        to_fp32(fp32)
    except Exception:  # noqa: BLE001 - not a form it rewrites: no fp32 row
        return None
    for node in ir.traversal.RecursiveGraphIterator(fp32.graph):
        # an integer layer left, or a float one on dequantized weights (a lone quantize/dequantize
        # pair of an activation, which the rewrite keeps, is not the layers' work)
        weight = node.inputs[1] if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.inputs) > 1 else None
        if node.op_type in INTEGER_LAYERS or (
            weight is not None and weight.producer() is not None and weight.producer().op_type == "DequantizeLinear"
        ):
            return None
    return fp32


def bench(
    model: ir.Model | str | os.PathLike | None = None,
    *,
    artifact: Any = None,
    inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    module: Any = None,
    int8: bool = True,
    seconds: float = 4.0,
    rpc: str | None = None,
) -> BenchResult:
    """Time, in one run and in blocks: ONNX Runtime fp32 on ``model``, ONNX Runtime's best int8 of
    it (:func:`onnxruntime_int8`, calibrated on ``inputs``), torch eager on ``module`` (when the
    model came from torch), and ``artifact`` (a :class:`~graphpress.backends.tvm.CompiledModel`
    or the directory of one), on the first of ``inputs`` (default: generated from the shapes).
    A ``model`` that is quantized already (:func:`~graphpress.passes.quantization.is_quantized`) is ONNX Runtime's int8 row itself
    (:data:`QUANTIZED_AS_GIVEN`: the same work as an artifact compiled from it), and its fp32
    row runs the model's float counterpart (its quantized layers in float).

    With ``rpc`` (``HOST:PORT[:KEY]``), the artifact directory is run and timed on that device
    through TVM's RPC (TVM's time evaluator there) and nothing else is timed: the peers run on
    this machine, and a ratio across two machines would mean nothing."""
    from graphpress.ir.numeric import as_samples, make_inputs, random_inputs
    from graphpress.ir.timing import onnxruntime_best
    from graphpress.passes.quantization import is_quantized

    if model is None and artifact is None:
        raise GraphpressError("bench: give a model, an artifact, or both")
    if rpc is not None:
        return _bench_remote(artifact, inputs, rpc, seconds)
    threads = _threads()
    engines: dict[str, Callable[[], object]] = {}
    if artifact is not None and not hasattr(artifact, "meta"):
        from graphpress.backends.tvm.runtime import load as load_artifact

        artifact = load_artifact(artifact)
    m = _as_model(model) if model is not None else None
    if inputs is not None:
        samples = as_samples(inputs)
    elif m is not None:
        samples = [make_inputs(m, seed=i) for i in range(8)]
    else:
        from graphpress.backends.tvm.runtime import concrete_input_specs

        samples = [random_inputs(concrete_input_specs(artifact.meta["inputs"]))]
    feeds = samples[0]
    if artifact is not None:
        feeds = _fit_to_artifact(feeds, artifact)
    with tempfile.TemporaryDirectory(prefix="graphpress-bench-") as tmp:
        if m is not None:
            session = onnxruntime_best(m, threads, "the model")
            names = {i.name for i in session.session.get_inputs()}

            def ort_run(s):
                return lambda: s.session.run(None, {k: v for k, v in feeds.items() if k in names})

            if is_quantized(m):
                # already int8: the model as given is ONNX Runtime's int8 row (quantizing it again
                # made a graph ONNX Runtime refuses), and the fp32 row is its float counterpart
                fp32 = _fp32_counterpart(m)
                if fp32 is not None:
                    engines["ONNX Runtime fp32"] = ort_run(onnxruntime_best(fp32, threads, "its fp32 counterpart"))
                engines[QUANTIZED_AS_GIVEN] = ort_run(session)
            else:
                engines["ONNX Runtime fp32"] = ort_run(session)
                if int8:
                    from graphpress.ir import load

                    engines["ONNX Runtime int8 (its quantizer, best settings)"] = ort_run(onnxruntime_best(load(onnxruntime_int8(m, samples, tmp)), threads, "ONNX Runtime's int8"))
        if module is not None:
            import torch

            torch.set_num_threads(threads)
            args = [torch.from_numpy(np.asarray(v)) for v in feeds.values()]

            def eager():
                with torch.inference_mode():
                    return module(*args)

            engines["torch eager"] = eager
        if artifact is not None:
            engines[f"graphpress artifact ({artifact.meta.get('target_name', '?')})"] = lambda: artifact(**feeds)
        timed = _timed(engines, seconds)
    base = timed.get("ONNX Runtime fp32", next(iter(timed.values())))["median_ms"]
    rows = [{"engine": k, **{kk: round(vv, 4) for kk, vv in t.items() if kk != "runs"}, "runs": t["runs"], "speedup": round(base / t["median_ms"], 3)} for k, t in timed.items()]
    return BenchResult(rows, {"cpu": cpu_model(), "threads": threads})
