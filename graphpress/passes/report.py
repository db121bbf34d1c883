"""The report JSON written by ``--report`` (contract in DESIGN.md).

``{"passes": [{"name", "seconds", "modified", "stats", ...}], "before": {"params", "bytes",
"macs", "nodes"}, "after": {...}, "verification": {"max_abs_diff", "cosine", ...}}``;
extra fields may be added, these stay.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import graphpress
from graphpress.errors import GraphpressError
from graphpress.ir.analysis import ModelSummary
from graphpress.ir.io import check_writable
from graphpress.ir.numeric import NumericReport
from graphpress.passes.manager import RunResult

__all__ = ["build_report", "write_json_atomic"]


def build_report(
    run: RunResult,
    before: ModelSummary,
    after: ModelSummary,
    verification: NumericReport | None,
    *,
    model: str | None = None,
    spec: str | None = None,
    rebased_by: list[str] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict of one ``optimize`` run."""
    report: dict[str, Any] = {
        "graphpress_version": graphpress.__version__,
        "model": model,
        "spec": spec,
        "passes": [rec.to_dict() for rec in run.records],
        "before": before.brief(),
        "after": after.brief(),
        "ops_before": before.ops,
        "ops_after": after.ops,
        "verification": verification.to_dict() if verification is not None else {"performed": False},
    }
    if verification is not None:
        report["verification"]["performed"] = True
        # passes that change the function on purpose (pruning) are checked against their own
        # reference (the zero-masked model), which then is the baseline of the end-to-end check
        report["verification"]["baseline"] = f"reference of pass '{rebased_by[-1]}'" if rebased_by else "input model"
    return report


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename."""
    dest = check_writable(path, "report")
    parent = dest.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise GraphpressError(f"{dest}: cannot write the report ({e.strerror})") from e
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=_jsonable)
            f.write("\n")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, float):
        return str(obj)
    return str(obj)
