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

__all__ = ["blocked", "blocked_samples", "onnxruntime_best", "repeats_for"]


def blocked(fns: Mapping[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median milliseconds per engine, run in blocks: A B C, then C B A, ``repeat/2`` timed calls
    each after 2 warm-up calls.

    Blocks rather than one-call-each interleaving: a runtime's spinning worker threads (ORT's
    best setting) keep the cores busy right after its call and would be charged to the next engine;
    a 50 ms pause before each block lets the previous engine's threads go to sleep.
    """
    return {k: statistics.median(v) for k, v in blocked_samples(fns, repeat).items()}


def blocked_samples(fns: Mapping[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Every timed call's milliseconds per engine, in the blocks of :func:`blocked`."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    half = max(1, repeat // 2)
    for order in (list(fns), list(fns)[::-1]):
        for key in order:
            fn = fns[key]
            time.sleep(0.05)
            for _ in range(2):
                fn()
            for _ in range(half):
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1e3)
    return times


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
