"""Timing shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def blocked(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median milliseconds per engine, run in blocks: A B C, then C B A, ``repeat/2`` timed calls
    each after 2 warm-up calls.

    Blocks rather than one-call-each interleaving: a runtime's spinning worker threads (ORT's
    best setting) keep the cores busy right after its call and would be charged to the next engine;
    a 50 ms pause before each block lets the previous engine's threads go to sleep.
    """
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
    return {k: statistics.median(v) for k, v in times.items()}
