"""Lazy package exports: ``from radfm.serve import create_app`` without importing every submodule.

Why: the heavy dependencies (peft, MONAI, FastAPI, transformers models) load only when a name that
needs them is used, so ``radfm check`` and ``radfm --help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any

__all__ = ["exports_by_module", "lazy_getattr"]


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` resolving ``exports`` (``{name: module}``) on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__


def exports_by_module(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``{module: [names]}`` -> ``{name: module}`` for :func:`lazy_getattr`.

    Why grouped: a package's export table then names each module once, so it reads as a table
    of contents and a moved module is one edit; a name listed twice is an error, not a silent
    override.
    """
    out: dict[str, str] = {}
    for module, names in groups.items():
        for name in names:
            if name in out:
                raise ValueError(f"{name!r} is exported from both {out[name]!r} and {module!r}")
            out[name] = module
    return out
