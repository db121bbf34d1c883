"""The pass registry: registry name → pass class."""

from __future__ import annotations

import importlib
import importlib.util

from graphpress.errors import SpecError, one_line
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
    """The pass class registered as ``name``; a :class:`SpecError` listing the valid names otherwise.

    A dotted name loads a user's pass by import path: ``mypkg.mymodule`` (the module
    registers exactly one pass, or exposes one as ``PASS``) or ``mypkg.mymodule.MyPass``.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name or importlib.util.find_spec(name) is not None:
        return _import_pass(name)
    raise SpecError(f"unknown pass '{name}'; valid passes: {', '.join(sorted(_REGISTRY))} (or a dotted import path)")


def _import(path: str, name: str):
    """Import ``name`` for the pass ``path``; None when the module itself does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            return None  # the module (or a package above it) does not exist
        raise SpecError(f"pass '{path}': importing module '{name}' failed: {type(e).__name__}: {e}") from e
    except Exception as e:  # the user's module raised while importing
        first = one_line(e)
        raise SpecError(f"pass '{path}': importing module '{name}' failed: {type(e).__name__}: {first}") from e


def _import_pass(path: str) -> type[Pass]:
    module = _import(path, path)
    if module is None:
        module_name, _, attr = path.rpartition(".")
        module = _import(path, module_name) if module_name else None
        if module is None:
            raise SpecError(f"pass '{path}': no module '{module_name or path}' on the Python path; check the name and PYTHONPATH")
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise SpecError(f"pass '{path}': '{attr}' in module '{module_name}' is not a graphpress Pass subclass")
        return cls
    cls = getattr(module, "PASS", None)
    if isinstance(cls, type) and issubclass(cls, Pass):
        return cls
    found = [c for c in _REGISTRY.values() if c.__module__ == module.__name__]
    if len(found) != 1:
        raise SpecError(
            f"pass '{path}': module registers {len(found)} passes; name one as '{path}.ClassName' or set PASS in the module"
        )
    return found[0]


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (the built-ins register when ``graphpress.passes`` is imported)."""
    return dict(sorted(_REGISTRY.items()))
