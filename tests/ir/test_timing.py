"""The side-by-side timer's fairness: a block starts only once the previous engine's threads
are idle, and after enough untimed calls."""

from __future__ import annotations

import threading
import time

from graphpress.ir.timing import blocked_samples, wait_until_idle, warm_up


def _spin(seconds: float) -> threading.Thread:
    """A thread burning a core for ``seconds``, as a runtime's worker spins after a call."""

    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_wait_before_a_block_lasts_as_long_as_a_worker_thread_spins():
    thread = _spin(0.3)
    waited = wait_until_idle()
    thread.join()
    assert 0.25 <= waited <= 1.5, waited
    assert wait_until_idle() < 0.25  # nothing spins now: one slice, or a few on a loaded host


def test_each_block_starts_after_the_previous_engines_threads_stopped_spinning():
    """Engine ``a`` leaves a thread spinning for 0.2 s after each call (as TVM's pool does); the
    calls of engine ``b`` timed right after must not overlap it."""
    spinners: list[threading.Thread] = []
    overlapped = []

    def a():
        time.sleep(0.01)  # a call's own work: a few warm-up calls, not a thousand
        spinners.append(_spin(0.2))

    def b():
        overlapped.append(any(t.is_alive() for t in spinners))

    blocked_samples({"a": a, "b": b}, repeat=4, rounds=1)
    for t in spinners:
        t.join()
    assert overlapped and not any(overlapped), overlapped


def test_warm_up_calls_for_its_time_and_at_least_twice():
    calls = []
    assert warm_up(lambda: calls.append(time.sleep(0.01)), seconds=0.05) == len(calls)
    assert 4 <= len(calls) <= 7, len(calls)
    assert warm_up(lambda: None, seconds=0.0) == 2
