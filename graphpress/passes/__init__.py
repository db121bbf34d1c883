"""Passes, the pass manager, its instruments, the registry and SPEC parsing."""

from graphpress.passes.base import Pass, PassResult, option
from graphpress.passes.context import PassContext, TargetFacts
from graphpress.passes.manager import (
    DumpInstrument,
    Instrument,
    InvariantInstrument,
    NumericInstrument,
    PassManager,
    PassRecord,
    RunResult,
    TimingInstrument,
)
from graphpress.passes.registry import all_passes, get, register
from graphpress.passes.spec import build_passes, parse_spec
from graphpress.passes import builtin  # noqa: E402,F401  (last: registers the built-in passes)

__all__ = [
    "DumpInstrument",
    "Instrument",
    "InvariantInstrument",
    "NumericInstrument",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "RunResult",
    "TargetFacts",
    "TimingInstrument",
    "all_passes",
    "build_passes",
    "get",
    "option",
    "parse_spec",
    "register",
]
