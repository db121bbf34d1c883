"""The side-by-side timer's fairness: a block starts only once the previous engine's threads
are idle, and after enough untimed calls."""

from __future__ import annotations

import threading
import time

from graphpress.ir import timing
from graphpress.ir.timing import best_block, blocked, blocked_samples, wait_until_idle, warm_up


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


def test_a_slow_spell_over_some_blocks_does_not_decide_between_builds(monkeypatch):
    """Two builds on a fake clock: ``fast`` takes 10 ms a call but a slow spell of the host makes
    its first 7 calls (two blocks and one call of a third) take 30; ``slow`` takes 12 ms
    throughout. The median over all calls makes ``fast`` the slower; its best block does not."""
    clock = [0.0]
    calls = {"fast": 0}
    per_block = 3  # repeat 12, rounds 2: A B, B A, A B, B A

    def fast():
        calls["fast"] += 1
        clock[0] += 0.030 if calls["fast"] <= 2 * per_block + 1 else 0.010

    def slow():
        clock[0] += 0.012

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(timing, "wait_until_idle", lambda: 0.0)
    monkeypatch.setattr(timing, "warm_up", lambda fn: 0)
    assert blocked({"fast": fast, "slow": slow}, 12, rounds=2)["fast"] > 12
    calls["fast"] = 0
    ms = best_block({"fast": fast, "slow": slow}, 12, rounds=2)
    assert abs(ms["fast"] - 10) < 1e-6 and abs(ms["slow"] - 12) < 1e-6, ms
