"""The pass registry: registry name → pass class."""

from __future__ import annotations

from graphpress.errors import SpecError
from graphpress.passes.base import Pass

__all__ = ["all_passes", "get", "register"]

_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` available under ``cls.name`` in SPECs."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no registry name (set the class attribute 'name')")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"pass name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Pass]:
    """The pass class registered as ``name``; a :class:`SpecError` listing the valid names otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown pass '{name}'; valid passes: {', '.join(sorted(_REGISTRY))}") from None


def all_passes() -> dict[str, type[Pass]]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin() -> None:
    # Importing the modules registers their passes.
    import graphpress.passes.cleanup  # noqa: F401
