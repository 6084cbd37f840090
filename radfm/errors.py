"""Errors a user sees. Each names the problem and says what to do about it.

Why a small hierarchy: the CLI and the HTTP service turn these into a one-paragraph message
(exit code 2 / HTTP 4xx) instead of a traceback, and anything else is a bug in radfm.
"""

from __future__ import annotations


class RadfmError(Exception):
    """Base class of errors caused by the user's input or settings, not by a radfm bug."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem} {hint}".strip())


class InputError(RadfmError, ValueError):
    """An image, label, prompt or file that radfm cannot use as given."""


class ConfigError(RadfmError, ValueError):
    """A recipe/config/setting that is unknown, missing or inconsistent."""


class ResourceError(RadfmError, MemoryError):
    """The work would not fit in the memory (or time) this machine has."""


def one_line(exc: BaseException) -> str:
    """A user error as one plain line (problem and hint; newlines of listings folded into "; ")."""
    import re

    if isinstance(exc, RadfmError):
        text = f"{exc.problem} {exc.hint}".strip()
    else:
        text = f"{type(exc).__name__}: {exc}"
    return re.sub(r"\s*\n\s*", "; ", text.strip())
