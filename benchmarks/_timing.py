"""Timing shared by the benchmarks: graphpress's own side-by-side timer (``graphpress.ir.timing``)."""

from __future__ import annotations

from graphpress.ir.timing import blocked, blocked_samples

__all__ = ["blocked", "blocked_samples"]
