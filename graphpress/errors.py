"""Errors graphpress raises on purpose.

Every user-facing error is a :class:`GraphpressError`: its message is one line that
names the file, the pass, the option or the node, and says what to do. The CLI
prints it and exits with code 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations

import re

__all__ = [
    "GraphpressError",
    "InvariantError",
    "ModelLoadError",
    "NumericMismatchError",
    "PassFailedError",
    "SpecError",
    "one_line",
]


def one_line(error: BaseException, limit: int = 200, *, last: bool = False) -> str:
    """A library's error as one line for a graphpress message: colour codes stripped, the
    first (or, for TVM, whose tracebacks end with the reason, the ``last``) non-empty line,
    at most ``limit`` characters; the exception's type name when it has no text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    return (lines[-1] if last else lines[0])[:limit]


class GraphpressError(Exception):
    """A user error: bad input, bad option, a failed check. One line, actionable."""


class ModelLoadError(GraphpressError):
    """The model file or object cannot be read as a model."""


class SpecError(GraphpressError):
    """A pass SPEC names an unknown pass/option or gives a bad value."""


class InvariantError(GraphpressError):
    """The IR breaks a structural invariant (see :func:`graphpress.ir.verify`).

    Attributes:
        violations: every violation found, one string each.
    """

    def __init__(self, violations: list[str], where: str = "model"):
        self.violations = list(violations)
        head = f"{where}: {len(self.violations)} IR invariant violation(s): "
        super().__init__(head + "; ".join(self.violations[:10]) + (" ..." if len(self.violations) > 10 else ""))


class NumericMismatchError(GraphpressError):
    """A transformed model's outputs differ from the reference beyond tolerance.

    Attributes:
        report: the :class:`graphpress.ir.numeric.NumericReport` that failed.
    """

    def __init__(self, message: str, report=None):
        self.report = report
        super().__init__(message)


class PassFailedError(GraphpressError):
    """A pass raised an exception that is not a :class:`GraphpressError` (a bug in the pass).

    The original exception is ``__cause__`` (the CLI shows its traceback with ``--debug``).

    Attributes:
        pass_name: the pass's registry name.
    """

    def __init__(self, pass_name: str, pass_type: type, error: BaseException):
        self.pass_name = pass_name
        first = one_line(error, 300)
        where = f"{pass_type.__module__}.{pass_type.__qualname__}"
        super().__init__(
            f"pass '{pass_name}' ({where}) raised {type(error).__name__}: {first}; it is a bug in that pass: "
            "leave it out and report it (--debug shows the traceback)"
        )
