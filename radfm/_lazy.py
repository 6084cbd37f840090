"""Lazy package exports: ``from radfm.serve import create_app`` without importing every submodule.

Why: the heavy dependencies (peft, MONAI, FastAPI, transformers models) load only when a name that
needs them is used, so ``radfm check`` and ``radfm --help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` resolving ``exports`` (``{name: module}``) on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__
