"""The input check's entry points: ``check_path`` (never raises for bad input), ``check_volume``, ``require_valid``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from radfm.check.geometry import _check_axes, _check_geometry
from radfm.check.intensity import _check_dtype, _check_modality, _check_nan, _finite_min_max
from radfm.check.memory import _check_memory
from radfm.check.report import CheckReport, Finding, _Findings
from radfm.check.thresholds import MAX_CHANNELS, _sample
from radfm.errors import RadfmError
from radfm.io.volume import Volume

log = logging.getLogger(__name__)


_MIXED_SERIES = re.compile(r"holds \d+ DICOM series|\bmixes\b", re.IGNORECASE)


def check_path(path: str | Path, *, modality: str | None = None, series: int | None = None,
               memory_budget_bytes: int | None = None) -> CheckReport:
    """Load ``path`` read-only with ``radfm.io.load_volume`` and check it; never raises for bad input.

    A file that cannot be read becomes a "load_failed" error finding carrying the loader's
    message (a folder with several DICOM series: "mixed_series"), so ``radfm check`` can always
    print a report instead of a traceback.
    """
    shown = str(path)
    try:
        from radfm.io import load_volume  # lazy: the checker must import even where io is broken

        volume = load_volume(path, modality=modality, series=series)
    except RadfmError as exc:
        code = "mixed_series" if _MIXED_SERIES.search(exc.problem) else "load_failed"
        return CheckReport(shown, [Finding("error", code, exc.problem.strip(), exc.hint)], {"loaded": False})
    except Exception as exc:  # any reader crash on a bad file is still a report, not a traceback
        log.debug("load_volume failed", exc_info=True)
        finding = Finding("error", "load_failed",
                          f"The image could not be read ({type(exc).__name__}).",
                          "Check that it is a complete NIfTI/NRRD/MHA/DICOM/.npy image (copy or export it "
                          "again).")
        return CheckReport(shown, [finding], {"loaded": False})
    report = check_volume(volume, modality=modality, memory_budget_bytes=memory_budget_bytes)
    report.path = shown
    return report


def require_valid(volume: Volume, *, modality: str | None = None) -> CheckReport:
    """Check ``volume``; raise :class:`InputError` on errors, log warnings. Every task calls this first."""
    report = check_volume(volume, modality=modality)
    if volume.native is not None and volume.native.source:
        report.path = Path(volume.native.source).name  # the file's name only (no server temp folders)
    report.raise_for_errors()
    for f in report.warnings:
        log.warning("input check %s: %s %s", f.code, f.message, f.hint)
    return report


def check_volume(volume: Volume, *, modality: str | None = None,
                 memory_budget_bytes: int | None = None) -> CheckReport:
    """Run every check on an in-memory volume.

    Args:
        volume: canonical RAS+ volume, ``array`` (X, Y, Z) or (X, Y, Z, C).
        modality: declared modality; overrides ``volume.modality`` (source "declared").
        memory_budget_bytes: memory the run may use; default ``psutil`` available memory.
    """
    found = _Findings()
    arr = np.asarray(volume.array)
    summary: dict[str, Any] = {"loaded": True, "shape": [int(s) for s in arr.shape[:3]],
                               "dtype": str(arr.dtype)}
    report = CheckReport(None, found, summary)

    if arr.ndim not in (3, 4):
        found.error("not_3d", f"The image array has {arr.ndim} dimension(s) {tuple(arr.shape)}; radfm needs "
                    "a 3D volume (X, Y, Z) or (X, Y, Z, C).",
                    "Export one 3D volume (stack 2D slices; from 5D data pick one time point or echo).")
        return report
    n_channels = 1 if arr.ndim == 3 else int(arr.shape[3])
    summary["n_channels"] = n_channels
    if n_channels > MAX_CHANNELS:
        found.error("not_3d", f"The image has {n_channels} volumes along a 4th axis (a time series or "
                    f"several series stacked); at most {MAX_CHANNELS} channels are accepted.",
                    "Pick one volume (e.g. one time point or echo) and save it as a 3D file.")

    if sum(int(n) > 1 for n in arr.shape[:3]) < 2 and arr.size:
        found.error("degenerate_volume", f"The image is a line of voxels (shape {tuple(arr.shape[:3])}), not a "
                    "slice or a volume.", "Export the full image (at least a 2D slice).")
        return report
    spacing = _check_geometry(volume, found, summary)
    if arr.size == 0:
        found.error("empty_volume", f"The image has a zero-size axis (shape {tuple(arr.shape)}), so it holds "
                    "no voxels.", "The file holds a header but no slices; export the image again.")
        return report
    if not _check_dtype(arr, found):
        return report
    finite = _check_nan(arr, found)

    sample = _sample(arr)
    values = (sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()).astype(np.float64)
    if values.size == 0:  # every voxel NaN/Inf: already an error, nothing more to measure
        return report
    vmin, vmax = _finite_min_max(arr, finite)
    p05, p50, p995 = (float(v) for v in np.percentile(values, [0.5, 50, 99.5]))
    summary.update({"min": vmin, "max": vmax, "p0.5": p05, "p50": p50, "p99.5": p995})
    constant = vmin == vmax
    if constant:
        found.error("constant_volume", f"All voxels have the same value ({vmin:g}).",
                    "The export lost the image content (a blank series, or a mask saved as the image); "
                    "export the image again.")

    _check_modality(volume, modality, values, vmin, vmax, found, summary, judge=not constant)
    if spacing is not None and not constant:
        _check_axes(arr, spacing, found, summary)
    _check_memory(arr, found, summary, memory_budget_bytes)
    return report

