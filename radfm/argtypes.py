"""argparse ``type=`` validators for numeric options: a clear one-line refusal instead of a silent accept.

Why: ``--instance-steps -5`` used to be accepted and quietly did nothing; a negative thread count
or a zero time limit fails later with a confusing message, or not at all. Each validator raises
``argparse.ArgumentTypeError``, which the ``radfm`` parser prints as one line naming the option.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["non_negative_float", "non_negative_int", "port", "positive_float", "positive_int"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _require(ok: bool, rule: str, shown: object) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {shown}")


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (counts: steps, shots, threads, tokens)."""
    value = _int(text)
    _require(value >= 1, "1 or more", value)
    return value


def non_negative_int(text: str) -> int:
    """A whole number ≥ 0 (indices, seeds, optional step counts where 0 means off)."""
    value = _int(text)
    _require(value >= 0, "0 or more", value)
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (sizes, learning rates, time-to-live)."""
    value = _float(text)
    _require(value > 0, "greater than 0", text)
    return value


def non_negative_float(text: str) -> float:
    """A finite number ≥ 0 (time limits where 0 disables)."""
    value = _float(text)
    _require(value >= 0, "0 or more", text)
    return value


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    value = _int(text)
    _require(1 <= value <= 65535, "a port number 1..65535", value)
    return value
