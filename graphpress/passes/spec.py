"""Parse a pass SPEC: ``name[:key=value[;key=value]],name...``.

Example: ``cleanup,fuse,prune:ratio=0.5;criterion=l2``. Unknown passes, unknown options,
values of the wrong type or out of range raise one :class:`~graphpress.errors.SpecError`
that lists the valid choices.
"""

from __future__ import annotations

from graphpress.errors import SpecError
from graphpress.passes import registry
from graphpress.passes.base import Pass

__all__ = ["build_passes", "parse_spec"]


def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """Split a SPEC into ``[(pass name, {option: raw string})]`` without checking names."""
    if spec is None or not spec.strip():
        raise SpecError("empty pass SPEC; give e.g. 'cleanup' or 'cleanup,fuse'")
    items: list[tuple[str, dict[str, str]]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise SpecError(f"empty pass name in SPEC '{spec}' (stray comma?)")
        name, _, rest = part.partition(":")
        name = name.strip()
        options: dict[str, str] = {}
        if rest.strip():
            for assignment in rest.split(";"):
                if not assignment.strip():
                    continue
                key, eq, value = assignment.partition("=")
                if not eq or not key.strip():
                    raise SpecError(f"pass '{name}': option '{assignment}' is not key=value")
                if key.strip() in options:
                    raise SpecError(f"pass '{name}': option '{key.strip()}' is given twice")
                options[key.strip()] = value.strip()
        items.append((name, options))
    return items


def build_passes(spec: str) -> list[Pass]:
    """Parse ``spec`` and instantiate each pass with its validated options."""
    return [registry.get(name)(**options) for name, options in parse_spec(spec)]
