"""Find components by name without importing them: the core's door to tasks and eval.

Why entry points: the core (CLI, demo) must compose benchmarks, task heads and demo sections
that live in ``radfm.tasks`` / ``radfm.eval`` without importing those packages (the
dependency direction in DESIGN.md). Each component declares itself in ``pyproject.toml``
under a group (``radfm.bench``, ``radfm.demo``, ``radfm.models`` …); third-party packages
can add to the same groups.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from radfm.errors import RadfmError


class UnknownComponentError(RadfmError, KeyError):
    """Raised when a name is not registered in a group; the message lists what is."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return f"{self.problem} {self.hint}".strip()


def available(group: str) -> list[str]:
    """Sorted names registered under ``group``."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load(group: str, name: str) -> Callable[..., Any]:
    """Import and return the object registered as ``name`` in ``group``."""
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        names = ", ".join(available(group)) or "none"
        raise UnknownComponentError(f"no {group.split('.')[-1]} named {name!r}.", f"Available: {names}.")
    return matches[0].load()
