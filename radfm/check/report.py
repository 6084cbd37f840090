"""What the input check returns: findings (level, stable code, message, hint) and the report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from radfm.errors import InputError

Level = Literal["error", "warning", "info"]


@dataclass
class Finding:
    """One problem or fact about the input.

    Attributes:
        level: "error" (would ruin the result), "warning" (may degrade it) or "info".
        code: stable machine name, e.g. "nan_values", "ct_not_hu", "axes_swapped".
        message: what is wrong, in numbers, without patient data.
        hint: what to do about it.
    """

    level: Level
    code: str
    message: str
    hint: str = ""

    def format(self) -> str:
        """``"ERROR  code: message — hint"`` (tags padded so the codes line up)."""
        tag = {"error": "ERROR", "warning": "WARN", "info": "INFO"}[self.level]
        line = f"{tag:<5}  {self.code}: {self.message}"
        return f"{line} — {self.hint}" if self.hint else line


@dataclass
class CheckReport:
    """All findings for one input plus a summary of its geometry and intensities.

    ``summary`` keys (when the image could be read): loaded, shape, n_channels, spacing_mm,
    orientation (the stored grid's axis codes, e.g. "LPS"), canonical_orientation ("RAS"),
    anisotropy, dtype, min, max, p0.5, p50, p99.5, modality, modality_source, memory_mib
    (estimated working memory), memory_budget_mib, axes_check (numbers behind the axis-order
    heuristic). ``{"loaded": False}`` when the file could not be read.
    """

    path: str | None
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when no finding is an error (warnings and infos do not block a run)."""
        return not self.errors

    def codes(self, level: Level | None = None) -> set[str]:
        """Codes of the findings (of one level when given)."""
        return {f.code for f in self.findings if level is None or f.level == level}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (numpy scalars converted, NaN/Inf → None)."""
        return {"path": self.path, "ok": self.ok, "findings": [asdict(f) for f in self.findings],
                "summary": _jsonable(self.summary)}

    def format(self) -> str:
        """Human-readable report: a few summary lines, then one line per finding, then a verdict."""
        s = self.summary
        lines = [f"radfm check: {self.path if self.path is not None else '<in-memory volume>'}"]
        if s.get("loaded") and s.get("spacing_mm") and None not in s["spacing_mm"]:
            channels = f" × {s['n_channels']} channels" if s.get("n_channels", 1) > 1 else ""
            spacing = "×".join(f"{v:.3g}" for v in s["spacing_mm"])
            lines.append(f"  shape {tuple(s['shape'])}{channels}, spacing {spacing} mm, stored orientation "
                         f"{s.get('orientation', '?')}, dtype {s.get('dtype', '?')}")
        if s.get("p50") is not None:
            lines.append(f"  intensities min {_num(s['min'])}, p0.5 {_num(s['p0.5'])}, median "
                         f"{_num(s['p50'])}, p99.5 {_num(s['p99.5'])}, max {_num(s['max'])}")
        if "modality" in s:
            memory = f", estimated working memory {s['memory_mib']:.0f} MiB" if "memory_mib" in s else ""
            lines.append(f"  modality {s['modality']} ({s.get('modality_source', 'none')}){memory}")
        lines.extend(f.format() for f in self.findings)
        n_err, n_warn = len(self.errors), len(self.warnings)
        warns = f"{n_warn} warning{'s' * (n_warn != 1)}"
        if n_err:
            lines.append(f"NOT USABLE: {n_err} error{'s' * (n_err != 1)}, {warns}")
        else:
            lines.append("OK: usable" + (f" ({warns})" if n_warn else ""))
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise :class:`InputError` listing every error with its hint; do nothing when ok."""
        errs = self.errors
        if not errs:
            return
        where = f" ({self.path})" if self.path else ""
        items = "\n".join(f"  - [{f.code}] {f.message}" + (f" What to do: {f.hint}" if f.hint else "")
                          for f in errs)
        raise InputError(f"The input image{where} cannot be used as given ({len(errs)} problem"
                         f"{'s' * (len(errs) != 1)}):\n{items}\n",
                         "Fix these and run `radfm check IMAGE` again.")


class _Findings(list):
    """A list of findings with one-line adders (keeps the checks below readable)."""

    def error(self, code: str, message: str, hint: str = "") -> None:
        self.append(Finding("error", code, message, hint))

    def warn(self, code: str, message: str, hint: str = "") -> None:
        self.append(Finding("warning", code, message, hint))

    def info(self, code: str, message: str, hint: str = "") -> None:
        self.append(Finding("info", code, message, hint))


def _num(v: Any) -> str:
    return "?" if v is None else f"{v:.4g}"


def _jsonable(obj: Any) -> Any:
    """numpy → Python, NaN/Inf → None, anything exotic → str, so ``json.dumps(allow_nan=False)`` works."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)
