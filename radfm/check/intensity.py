"""Intensity checks: dtype, NaN/Inf, modality (declared vs. detected), CT in HU, outliers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radfm.check.report import _Findings
from radfm.check.thresholds import CT_RANGE_HU
from radfm.io.readers import looks_like_ct
from radfm.io.volume import MODALITIES, Volume

_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "XR": "CR", "DX": "CR", "UNKNOWN": "unknown"}


def _check_dtype(arr: np.ndarray, found: _Findings) -> bool:
    """False when the voxel type cannot hold image intensities at all."""
    kind = arr.dtype.kind
    if kind not in "iuf":
        what = {"b": "boolean (a mask?)", "c": "complex (raw MR data?)", "O": "Python objects"}
        found.error("dtype", f"The voxels are {what.get(kind, 'not numbers')} ({arr.dtype}), not "
                    "intensities.",
                    "Pass the image itself as integers or floats (for complex MR data, the magnitude: "
                    "np.abs).")
        return False
    if arr.dtype == np.float64:
        found.info("dtype", "The voxels are float64; radfm computes in float32 (same values to ~7 digits, "
                   "half the memory).")
    return True


def _check_nan(arr: np.ndarray, found: _Findings) -> np.ndarray | None:
    """Finite-voxel mask of a float array holding NaN/Inf (None when every voxel is finite)."""
    if arr.dtype.kind != "f":
        return None
    finite = np.isfinite(arr)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if n_bad == 0:
        return None
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    what = " and ".join(w for w, n in (("NaN", n_nan), ("±Inf", n_bad - n_nan)) if n)
    found.error("nan_values", f"{n_bad:,} voxels ({100 * n_bad / arr.size:.3g}%) are {what}; one NaN turns a "
                "model's whole output into NaN.",
                "Fill or mask them and export again, e.g. np.nan_to_num(a, nan=-1024) for CT (air) or nan=0 "
                "for MR, or crop to the valid region.")
    return finite


def _finite_min_max(arr: np.ndarray, finite: np.ndarray | None) -> tuple[float, float]:
    if finite is None:
        return float(arr.min()), float(arr.max())
    vals = arr[finite]
    return (float(vals.min()), float(vals.max())) if vals.size else (math.nan, math.nan)


def _check_modality(volume: Volume, declared: str | None, values: np.ndarray, vmin: float, vmax: float,
                    found: _Findings, summary: dict[str, Any], *, judge: bool) -> None:
    """Settle the modality (declared > volume's own > detected) and run the modality's intensity checks."""
    if declared:
        modality = _MODALITY_ALIASES.get(declared.strip().upper(), declared.strip().upper())
        source = "declared"
        if modality not in MODALITIES:
            found.error("bad_modality", f"Unknown modality {declared!r}.",
                        f"Declare one of {', '.join(MODALITIES)}.")
            modality, source = "unknown", "none"
    else:
        modality = volume.modality or "unknown"
        source = volume.meta.get("modality_source") or ("declared" if modality != "unknown" else "none")
    hu_like = judge and looks_like_ct(values)
    if (modality == "unknown" and hu_like) or (modality == "CT" and source == "detected"):
        modality, source = "CT", "detected"
        found.info("modality_detected", "No modality was given or found in the header; the intensities "
                   "look like CT in Hounsfield units (air near −1000, soft tissue near 0), so the image is "
                   "treated as CT.", "Declare the modality (--modality CT/MR) if this is wrong.")
    elif modality == "unknown" and judge:
        found.info("modality_unknown", "No modality was given or found in the header, and the intensities do "
                   "not look like CT in HU; CT-specific checks were skipped.",
                   "Declare it with --modality CT or --modality MR.")
    summary["modality"], summary["modality_source"] = modality, source
    if not judge:
        return
    if modality == "MR" and hu_like:
        found.warn("modality_mismatch", "The image is declared MR but its intensities look exactly like CT "
                   "in Hounsfield units (air near −1000 HU, soft tissue near 0).",
                   "If this is a CT, declare --modality CT; MR normalisation would waste the calibrated HU "
                   "scale.")
    if modality != "CT":
        _check_outliers(values, vmin, vmax, found)
        return
    if source in ("declared", "header"):
        problem = _ct_not_hu(values, vmin, vmax)
        if problem:
            said = "declared" if source == "declared" else "by its header"
            found.error("ct_not_hu", f"The image is {said} CT but {problem}",
                        "Export the CT in Hounsfield units (apply RescaleSlope/RescaleIntercept: HU = stored "
                        "× slope + intercept); if it is not a CT, declare --modality MR (or the right one).")
            return
    _check_ct_range(values, vmin, vmax, found)


def _ct_not_hu(values: np.ndarray, vmin: float, vmax: float) -> str:
    """Why a declared CT does not look like Hounsfield units ("" when it does)."""
    p05, p995 = np.percentile(values, [0.5, 99.5])
    if vmin >= 0 and (vmax > 2000 or looks_like_ct(values - 1024)):
        return (f"its values run from {vmin:g} to {vmax:g} with nothing below 0: these are raw stored values "
                "(air near 0 instead of −1000 HU), the rescale intercept was not applied.")
    if vmax - vmin <= 50:
        return (f"its values span only {vmin:.3g} to {vmax:.3g}: normalised data (e.g. [0, 1] or z-scores), "
                "not HU, which run from about −1000 (air) to over +700 (bone).")
    if vmin >= 0 and vmax <= 255 and p05 <= 5 and p995 - p05 > 50:
        return (f"its values lie within 0–255 (min {vmin:g}, max {vmax:g}): a windowed 8-bit display export, "
                "not HU.")
    return ""


def _check_ct_range(values: np.ndarray, vmin: float, vmax: float, found: _Findings) -> None:
    """Warn on CT values outside the physical HU range (padding outside the field of view, metal)."""
    low, high = CT_RANGE_HU
    below = float(np.mean(values < low))
    if vmin <= -2000 or (vmin < low and below >= 1e-3):  # a few noisy voxels near −1150 are no news
        found.warn("ct_range", f"{100 * below:.3g}% of voxels lie below {low} HU (min {vmin:g}); values like "
                   "−2048 or −3024 are the scanner's padding outside the reconstructed field of view, not "
                   "tissue.",
                   "Usually harmless (models clip CT to a window); if you normalise by min/max, set them to "
                   "−1024 first (np.maximum(a, -1024)).")
    if vmax > high:
        above = float(np.mean(values > high))
        found.warn("ct_range", f"Values reach {vmax:g} HU ({100 * above:.3g}% above {high}): metal implants, "
                   "dense contrast, or unrescaled data.",
                   "If there is no metal in the scan, check the rescale slope/intercept of the export.")


def _check_outliers(values: np.ndarray, vmin: float, vmax: float, found: _Findings) -> None:
    """Warn when a few voxels lie far outside the bulk (min/max normalisation would squash the image)."""
    p05, p995 = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    bulk = p995 - p05
    if bulk > 0 and (vmax - vmin) > 50 * bulk:
        found.warn("intensity_outliers", f"The intensity range {vmin:.4g} to {vmax:.4g} is "
                   f"{(vmax - vmin) / bulk:.0f}× wider than the bulk of the image (p0.5–p99.5: {p05:.4g} to "
                   f"{p995:.4g}).",
                   "radfm normalises by percentiles, so this is usually fine; if the outliers are padding or "
                   "artefacts, clip them before other tools see the image.")


