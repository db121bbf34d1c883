"""The report JSON written by ``--report`` (contract in DESIGN.md).

``{"passes": [{"name", "seconds", "modified", "stats", ...}], "before": {"params", "bytes",
"macs", "nodes"}, "after": {...}, "verification": {"max_abs_diff", "cosine", ...}}``;
extra fields may be added, these stay.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import graphpress
from graphpress.errors import GraphpressError
from graphpress.ir.analysis import ModelSummary
from graphpress.ir.atomic import write_bytes_atomic
from graphpress.ir.io import check_writable
from graphpress.ir.numeric import NumericReport
from graphpress.passes.manager import RunResult

__all__ = ["build_report", "strict_json", "write_json_atomic"]


def build_report(
    run: RunResult,
    before: ModelSummary,
    after: ModelSummary,
    verification: NumericReport | None,
    *,
    model: str | None = None,
    spec: str | None = None,
    rebased_by: list[str] | None = None,
    vs_reference: NumericReport | None = None,
) -> dict[str, Any]:
    """Assemble the report dict of one ``optimize`` run.

    ``verification`` is always the end-to-end check against the input model; when a pass
    moved the baseline on purpose (``prune``), ``verification.vs_reference`` compares with
    that pass's masked reference and ``verification.baseline_moved_by`` names the passes.
    """
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
        report["verification"]["baseline"] = "input model"
        report["verification"]["baseline_moved_by"] = list(rebased_by or [])
        if vs_reference is not None:
            report["verification"]["vs_reference"] = vs_reference.to_dict()
    return report


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as strict JSON to ``path``, whole or not at all.

    Non-finite floats (an infinite tolerance, a NaN difference) become the strings
    ``"inf"``, ``"-inf"`` and ``"nan"``: JSON has no such numbers, and ``Infinity`` tokens
    break strict parsers.
    """
    dest = check_writable(path, "report")
    text = json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n"
    try:
        write_bytes_atomic(dest, text.encode())
    except OSError as e:
        raise GraphpressError(f"{dest}: cannot write the report ({e.strerror or e})") from e


def strict_json(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and non-finite floats as strings."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
