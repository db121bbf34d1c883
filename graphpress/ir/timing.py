"""Side-by-side latency: engines timed in the same run, in blocks, as medians.

The one wall-clock timer for comparing engines (the benchmarks and ``compile``'s measurement
against ONNX Runtime use it); a compiled artifact alone is timed by TVM's own time evaluator
(:func:`graphpress.backends.tvm.runtime.vm_timings`; two builds side by side:
:func:`~graphpress.backends.tvm.runtime.time_side_by_side`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import onnx_ir as ir

__all__ = ["ORT_SETTINGS_KEY", "best_block", "blocked", "blocked_samples", "choose_onnxruntime_settings", "onnxruntime_best", "onnxruntime_settings",
           "repeats_for", "session_options", "wait_until_idle", "warm_up"]


def blocked(fns: Mapping[str, Callable[[], object]], repeat: int, rounds: int = 1) -> dict[str, float]:
    """Median milliseconds per engine, run in blocks: A B C, then C B A (``rounds`` times),
    ``repeat`` timed calls each in all, after :data:`WARM_UP_SECONDS` of untimed calls per block.

    Blocks rather than one-call-each interleaving: a runtime's spinning worker threads (ORT's
    best setting; TVM's pool spins too) keep the cores busy right after its call and would be
    charged to the next engine. Before each block the process waits until its own threads are
    idle (:func:`wait_until_idle`): a fixed 50 ms pause was too short for TVM's workers, which
    spun 50-160 ms on the 2-core Zen 5 and made ONNX Runtime's MobileNetV2 calls right after
    a TVM block twice as slow (5.8 against 2.9 ms), in ONNX Runtime's disfavour. More rounds
    spread each engine's calls over the whole measurement, so a slow spell of a shared host
    lands on every engine alike.
    """
    return {k: statistics.median(v) for k, v in blocked_samples(fns, repeat, rounds).items()}


def best_block(fns: Mapping[str, Callable[[], object]], repeat: int, rounds: int = 2) -> dict[str, float]:
    """Per engine, the lowest of its blocks' median milliseconds, in the blocks of :func:`blocked`:
    for a decision between builds on a shared host, where a slow spell lengthens every call of
    the block it lands in and nothing makes a call shorter than its code allows. Compiling
    ResNet-18 for the AVX2 path on the 2-core Zen 4, the whole-model guard's medians over all
    calls put every layer in int8 at 15.7 ms beside 12.7 for a mix with 3 layers in fp32; alone,
    in one process, the two ran 11.9 and 12.1 ms."""
    per_block = max(1, repeat // (2 * rounds))
    samples = blocked_samples(fns, repeat, rounds)
    return {k: min(statistics.median(v[i : i + per_block]) for i in range(0, len(v), per_block)) for k, v in samples.items()}


def blocked_samples(fns: Mapping[str, Callable[[], object]], repeat: int, rounds: int = 1) -> dict[str, list[float]]:
    """Every timed call's milliseconds per engine, in the blocks of :func:`blocked`."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    per_block = max(1, repeat // (2 * rounds))
    for _ in range(rounds):
        for order in (list(fns), list(fns)[::-1]):
            for key in order:
                fn = fns[key]
                wait_until_idle()
                warm_up(fn)
                for _ in range(per_block):
                    start = time.perf_counter()
                    fn()
                    times[key].append((time.perf_counter() - start) * 1e3)
    return times


#: each block's untimed calls: at least this many seconds of them (and 2 calls): an engine whose
#: threads went to sleep takes several calls to run at its speed again (MobileNetV2, 2.5 ms a
#: call: 6-8 calls, for ONNX Runtime and TVM alike)
WARM_UP_SECONDS = 0.03


def warm_up(fn: Callable[[], object], seconds: float = WARM_UP_SECONDS, least: int = 2, most: int = 1000) -> int:
    """Call ``fn`` untimed for ``seconds`` (between ``least`` and ``most`` calls); returns the calls made."""
    start = time.perf_counter()
    calls = 0
    while calls < least or (calls < most and time.perf_counter() - start < seconds):
        fn()
        calls += 1
    return calls


#: the process counts as idle when its threads used under this share of a core over a slice
IDLE_SHARE = 0.05


def wait_until_idle(slice_s: float = 0.02, at_most_s: float = 1.0) -> float:
    """Sleep until this process's threads (an engine's spinning workers) used under
    :data:`IDLE_SHARE` of a core over a ``slice_s`` slice, at least one slice and at most
    ``at_most_s``; returns the seconds waited. ``time.process_time`` counts every thread of
    the process."""
    start = time.perf_counter()
    while True:
        cpu = time.process_time()
        time.sleep(slice_s)
        waited = time.perf_counter() - start
        if time.process_time() - cpu < IDLE_SHARE * slice_s or waited >= at_most_s:
            return waited


def repeats_for(fns: Mapping[str, Callable[[], object]], seconds: float, *, least: int = 6, most: int = 40) -> int:
    """How many timed calls per engine fit ``seconds`` in all (one untimed call of each sizes it),
    between ``least`` and ``most``."""
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    one_round = max(time.perf_counter() - start, 1e-6)
    return max(least, min(most, int(seconds / one_round)))


def onnxruntime_best(model: ir.Model, threads: int, where: str = "model") -> Any:
    """An ONNX Runtime session on ``model`` in its fastest CPU configuration (every graph
    optimization, ``threads`` intra-op threads, the default spinning thread pool); ``.run(feeds)``
    checks the feeds and returns the outputs by name."""
    from graphpress.ir.numeric import _Session

    return _Session(model, where=where, best=True, threads=threads)


#: the metadata key of a model's ONNX Runtime settings (``compress --target onnxruntime``); a key
#: of its own, not ORT's ``ort_config`` (ORT reads that only under ``ORT_LOAD_CONFIG_FROM_MODEL=1``
#: and only a few of its options)
ORT_SETTINGS_KEY = "graphpress.onnxruntime_settings"


def session_options(settings: Mapping[str, Any]) -> Any:
    """``onnxruntime.SessionOptions`` for ``settings``: ``graph_optimization_level`` and
    ``execution_mode`` by their ONNX Runtime names, ``intra_op_num_threads``, and
    ``config_entries`` (``add_session_config_entry`` keys, e.g.
    ``session.intra_op.allow_spinning``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.get("graph_optimization_level", "ORT_ENABLE_ALL"))
    opts.execution_mode = getattr(ort.ExecutionMode, settings.get("execution_mode", "ORT_SEQUENTIAL"))
    if settings.get("intra_op_num_threads"):
        opts.intra_op_num_threads = int(settings["intra_op_num_threads"])
    for key, value in settings.get("config_entries", {}).items():
        opts.add_session_config_entry(key, str(value))
    return opts


def onnxruntime_settings(threads: int) -> list[dict[str, Any]]:
    """The ONNX Runtime CPU settings worth timing for a model: every graph optimization or only
    the extended ones (the layout pass to NCHWc can cost more than it gives on small convs),
    spinning worker threads or sleeping ones, all ``threads`` or half of them (a small model can
    lose more to synchronizing than it gains)."""
    counts = sorted({threads, max(1, threads // 2)}, reverse=True)
    return [
        {"graph_optimization_level": level, "execution_mode": "ORT_SEQUENTIAL", "intra_op_num_threads": n,
         "config_entries": {"session.intra_op.allow_spinning": spin}}
        for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED") for n in counts for spin in ("1", "0")
    ]  # fmt: skip


def choose_onnxruntime_settings(model_bytes: bytes, feeds: Mapping[str, Any], threads: int, seconds: float = 3.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fastest of :func:`onnxruntime_settings` for the serialized model on ``feeds``, timed
    side by side (:func:`blocked`), and every candidate with its median milliseconds."""
    import onnxruntime as ort

    candidates = onnxruntime_settings(threads)
    fns = {}
    for i, settings in enumerate(candidates):
        session = ort.InferenceSession(model_bytes, session_options(settings), providers=["CPUExecutionProvider"])
        names = {x.name for x in session.get_inputs()}
        fns[i] = lambda s=session, f={k: v for k, v in feeds.items() if k in names}: s.run(None, f)
    medians = blocked(fns, repeats_for(fns, seconds, least=4, most=30))
    best = min(medians, key=medians.get)
    timed = [{**c, "median_ms": round(medians[i], 4)} for i, c in enumerate(candidates)]
    return candidates[best], timed
