"""The input check (``radfm check IMAGE``): find what would silently ruin a result, before a model runs.

Why a separate check: a model given CT in raw stored values, an array transposed without its
header, or NaNs still returns a mask or a report — just a wrong one. Each problem found here
becomes a :class:`Finding` with a stable ``code`` (for programs and tests), a message a
radiology engineer understands and a hint saying what to do. Levels:

* ``error``: the result would be wrong or the run would fail (``require_valid`` raises);
* ``warning``: usable, but the result may suffer (logged);
* ``info``: facts worth knowing (oblique acquisition, modality detected from intensities).

Nothing here writes to the input, and no finding, log line or summary carries patient data
(only numbers, codes and the path the user gave).

Codes: load_failed, mixed_series, not_3d, empty_volume, constant_volume, dtype, nan_values,
orientation, bad_spacing, oblique, anisotropic, axes_swapped, bad_modality, ct_not_hu, ct_range,
intensity_outliers, modality_detected, modality_unknown, modality_mismatch, too_large.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radfm.errors import InputError
from radfm.io.readers import looks_like_ct
from radfm.io.volume import MODALITIES, Volume

log = logging.getLogger(__name__)

Level = Literal["error", "warning", "info"]

#: Working-memory factor: a run holds about this many float32 copies of the input
#: (resampled image, normalised image, patches, logits, output, mask).
MEMORY_FACTOR = 6
#: More channels than this is a time series or stacked series, not one model input (as radfm.io).
MAX_CHANNELS = 8
#: Spacing ratio (thick / thin) from which the axis-order check judges a volume.
SWAP_MIN_RATIO = 1.8
#: The data's thin pair must match this many times better than the affine's thin pair to call a swap.
SWAP_MARGIN = 2.0
#: Spacing ratio above which a warning says thin structures may be lost on resampling.
ANISOTROPY_WARN = 3.0
#: Physical CT range in HU; outside it is padding, metal or unrescaled data.
CT_RANGE_HU = (-1024 - 100, 4000)
#: Voxel budget for the statistics (percentiles, neighbour differences) so large CTs stay fast.
_SAMPLE_VOXELS = 2_000_000
_LAGS = (1, 2, 3, 4, 6, 8)
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "XR": "CR", "DX": "CR", "UNKNOWN": "unknown"}
_MIXED_SERIES = re.compile(r"holds \d+ DICOM series|\bmixes\b", re.IGNORECASE)


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


# ----------------------------------------------------------------------------------- entry points


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
    except InputError as exc:
        code = "mixed_series" if _MIXED_SERIES.search(exc.problem) else "load_failed"
        return CheckReport(shown, [Finding("error", code, exc.problem.strip(), exc.hint)], {"loaded": False})
    except Exception as exc:  # any reader crash on a bad file is still a report, not a traceback
        log.debug("load_volume failed", exc_info=True)
        finding = Finding("error", "load_failed",
                          f"The image could not be read ({type(exc).__name__}: {exc}).",
                          "Check that it is a complete NIfTI/NRRD/MHA/DICOM/.npy image (copy or export it "
                          "again).")
        return CheckReport(shown, [finding], {"loaded": False})
    report = check_volume(volume, modality=modality, memory_budget_bytes=memory_budget_bytes)
    report.path = shown
    return report


def require_valid(volume: Volume, *, modality: str | None = None) -> CheckReport:
    """Check ``volume``; raise :class:`InputError` on errors, log warnings. Every task calls this first."""
    report = check_volume(volume, modality=modality)
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


# ----------------------------------------------------------------------------------- geometry


def _check_geometry(volume: Volume, found: _Findings, summary: dict[str, Any]) -> np.ndarray | None:
    """Affine, spacing and orientation checks; returns the canonical spacing when it is usable."""
    import nibabel as nib

    affine = np.asarray(volume.affine, dtype=np.float64)
    summary["canonical_orientation"] = "RAS"
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        found.error("orientation",
                    f"The voxel-to-world affine is not a finite 4×4 matrix (shape {affine.shape}).",
                    "Fix the file's geometry header (origin, spacing, direction) and export it again.")
        summary["spacing_mm"] = [None, None, None]
        return None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    summary["spacing_mm"] = [float(s) for s in spacing]

    bad = [s for s in _declared_spacings(volume) if not (math.isfinite(s) and s > 0)]
    if bad:
        found.error("bad_spacing", "The header declares a zero, negative or undefined voxel size "
                    f"({', '.join(f'{s:g}' for s in bad)} mm).",
                    "Set the true pixel spacing and slice spacing in the header (e.g. from the DICOM "
                    "PixelSpacing and slice positions) and export the image again.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 or np.any(spacing < 1e-6):
        found.error("orientation", "The voxel-to-world affine is singular (a zero voxel size or two parallel "
                    f"axes; spacing {_fmt_spacing(spacing)} mm), so voxels have no position in the patient.",
                    "Fix the file's spacing/direction header and export the image again.")
        return None
    native = np.asarray(volume.native.affine if volume.native is not None else affine, dtype=np.float64)
    try:
        summary["orientation"] = "".join(nib.aff2axcodes(native))
    except Exception:  # a broken native affine must not stop the report
        summary["orientation"] = "???"
    if volume.meta.get("geometry_warning"):
        found.warn("orientation", f"{volume.meta['geometry_warning']}.",
                   "Results stay on the image grid, but left/right and positions in mm cannot be trusted; "
                   "export the image with its geometry (NIfTI with qform/sform, or DICOM).")

    rot = affine[:3, :3] / spacing
    gram = rot.T @ rot
    shear = float(np.max(np.abs(gram - np.diag(np.diag(gram)))))
    obliquity = float(np.degrees(np.max(nib.affines.obliquity(affine))))
    if shear > 1e-3:
        found.info("oblique", f"The voxel axes are not orthogonal (largest cosine between axes {shear:.3f}; "
                   "gantry tilt or a sheared grid).",
                   "Outputs are written on the same grid; tools that assume orthogonal axes may misplace "
                   "them.")
    elif obliquity > 0.5:
        found.info("oblique", f"The acquisition is oblique ({obliquity:.1f}° from the nearest patient axis).",
                   "Fine for radfm; viewers that ignore the rotation show the image tilted.")

    ratio = float(spacing.max() / spacing.min())
    summary["anisotropy"] = ratio
    if ratio > ANISOTROPY_WARN:
        found.warn("anisotropic", f"The voxels are {ratio:.1f}× longer along one axis (spacing "
                   f"{_fmt_spacing(spacing)} mm).",
                   "Models resample to their own spacing; structures thinner than the thick spacing (small "
                   "nodules, thin vessels) may be lost. Use thinner slices if the scanner exported them.")
    return spacing


def _declared_spacings(volume: Volume) -> list[float]:
    """Voxel sizes as the file header states them (the affine cannot show a negative one)."""
    out: list[float] = []
    header = volume.native.header if volume.native is not None else None
    try:
        if header is not None and hasattr(header, "get_zooms"):
            out += [float(z) for z in header.get_zooms()[:3]]
        elif isinstance(header, dict) and header.get("spacing") is not None:
            out += [float(z) for z in header["spacing"]]
        if volume.meta.get("spacing") is not None:
            out += [float(z) for z in volume.meta["spacing"]]
    except (TypeError, ValueError):
        out.append(float("nan"))
    return out


def _check_axes(arr: np.ndarray, spacing: np.ndarray, found: _Findings, summary: dict[str, Any]) -> None:
    """Does the array's axis order agree with the affine? (data transposed without its header)

    Judged only for anisotropic volumes with one thick axis (thick / thin ≥ 1.8, thin pair
    within 25 %). Cues from the voxels, measured by :func:`_structure_functions`:

    * texture pair: the two thin axes were sampled alike (one slice plane: same pixel size and
      reconstruction), so their structure functions D(k) agree at every lag k and the thick
      axis is the odd one out. The data's thick axis is the one whose other two axes agree
      best (mean |log D_b(k) / D_c(k)| over lags).
    * neighbour difference: a thicker sampling step usually gives larger neighbour differences.
      Overlapping reconstructions (3 mm slices every 2 mm) invert this, so it never decides alone.
    * shape: a square slice matrix (e.g. 512×512) lying across a thin and the thick axis is
      typical of a transposed stack.

    An error needs the texture cue with margin ≥ ``SWAP_MARGIN`` and one of the other two;
    the shape alone gives a warning.
    """
    order = np.argsort(spacing, kind="stable")
    thin_a, thin_b, thick = (int(i) for i in order)
    shape = tuple(int(s) for s in arr.shape[:3])
    result: dict[str, Any] = {"judged": False}
    summary["axes_check"] = result
    if spacing[thick] / spacing[thin_a] < SWAP_MIN_RATIO or spacing[thin_b] / spacing[thin_a] > 1.25:
        result["reason"] = "not anisotropic with one thick axis"
        return
    if min(shape) < 6:
        result["reason"] = "too few voxels along an axis"
        return
    sf = _structure_functions(arr if arr.ndim == 3 else arr[..., 0])
    pair = np.full(3, np.nan)
    for j in range(3):
        b, c = (a for a in range(3) if a != j)
        ok = np.isfinite(sf[b]) & np.isfinite(sf[c])
        if ok.sum() >= 2:
            pair[j] = float(np.mean(np.abs(np.log(sf[b][ok] / sf[c][ok]))))
    if not (np.all(np.isfinite(pair)) and np.all(np.isfinite(sf[:, 0]))):
        result["reason"] = "too little structure to compare the axes"
        return
    data_thick = int(np.argmin(pair))
    margin = float(pair[thick] / max(pair[data_thick], 1e-9))
    square_normal = _square_matrix_normal(shape)
    d1 = sf[:, 0]
    result.update({"judged": True, "affine_thick_axis": thick, "data_thick_axis": data_thick,
                   "pair_mismatch": [float(v) for v in pair], "neighbour_diff": [float(v) for v in d1],
                   "margin": margin, "square_matrix_normal": square_normal})

    if data_thick != thick and margin >= SWAP_MARGIN:
        why = []
        if d1[data_thick] >= 1.25 * d1[thick]:
            why.append(f"neighbouring voxels differ {d1[data_thick] / d1[thick]:.1f}× more along axis "
                       f"{data_thick} than along axis {thick}")
        if square_normal == data_thick:
            n = shape[(data_thick + 1) % 3]
            why.append(f"the square {n}×{n} slice matrix lies across axes "
                       f"{tuple(a for a in range(3) if a != data_thick)}")
        if why:
            found.error("axes_swapped",
                        f"The array's axis order disagrees with the affine: the affine makes axis {thick} "
                        f"the thick one ({spacing[thick]:.3g} mm vs {spacing[thin_a]:.3g} mm) but the voxels "
                        f"look sliced along axis {data_thick} (the texture of the other two axes matches "
                        f"{margin:.1f}× better; " + "; ".join(why) + ").",
                        "The array was probably transposed (e.g. z,y,x vs x,y,z) without updating the "
                        "header. Export it again from the original DICOM, or transpose the array back before "
                        "saving it with this affine.")
            return
    if square_normal is not None and square_normal != thick and shape[thick] >= 2 * shape[square_normal]:
        found.warn("axes_swapped",
                   f"The thick axis {thick} ({spacing[thick]:.3g} mm) has {shape[thick]} voxels "
                   f"({shape[thick] * spacing[thick]:.0f} mm) while axis {square_normal} has only "
                   f"{shape[square_normal]}: that looks like a slice stack transposed without its header.",
                   "Open the image in a viewer and check that the anatomy is not stretched; if it is, export "
                   "it again from the original DICOM.")


def _square_matrix_normal(shape: tuple[int, ...]) -> int | None:
    """Axis perpendicular to the only pair of axes with equal voxel counts (a square slice matrix)."""
    hits = [j for j in range(3)
            if shape[(j + 1) % 3] == shape[(j + 2) % 3] and shape[j] != shape[(j + 1) % 3]]
    return hits[0] if len(hits) == 1 else None


def _structure_functions(vol: np.ndarray) -> np.ndarray:
    """``sf[axis, i]`` = mean |I(x + lag_i) − I(x)| along ``axis`` over foreground pairs, / intensity range.

    The other two axes are strided so each axis reads about ``_SAMPLE_VOXELS`` voxels. A lag
    beyond a third of the axis, too few foreground pairs, or a zero difference give NaN.
    """
    out = np.full((3, len(_LAGS)), np.nan)
    lo, hi, threshold = _foreground_threshold(vol)
    scale = max(hi - lo, 1e-12)
    for ax in range(3):
        step = max(1, math.ceil(math.sqrt(vol.size / _SAMPLE_VOXELS)))
        index = [slice(None, None, step)] * 3
        index[ax] = slice(None)
        sub = np.asarray(vol[tuple(index)], dtype=np.float32)
        sub = np.where(np.isfinite(sub), sub, np.float32(lo))
        fg = sub > threshold
        for i, lag in enumerate(_LAGS):
            if lag > vol.shape[ax] // 3:
                break
            head = [slice(None)] * 3
            tail = [slice(None)] * 3
            head[ax], tail[ax] = slice(0, -lag), slice(lag, None)
            both = fg[tuple(head)] & fg[tuple(tail)]
            if both.sum() < 50:
                continue
            d = float(np.abs(sub[tuple(tail)] - sub[tuple(head)])[both].mean()) / scale
            out[ax, i] = d if d > 1e-9 else np.nan
    return out


def _foreground_threshold(vol: np.ndarray) -> tuple[float, float, float]:
    """(p1, p99, threshold) of the intensities, ignoring a padding/background value at the minimum."""
    s = _sample(vol)
    s = s[np.isfinite(s)] if s.dtype.kind == "f" else s.ravel()
    if s.size == 0:
        return 0.0, 1.0, 0.0
    smin = s.min()
    if np.mean(s == smin) > 0.01 and np.any(s > smin):  # −3024 outside the CT field of view, 0 around MR
        s = s[s > smin]
    lo, hi = (float(v) for v in np.percentile(s, [1, 99]))
    return lo, hi, lo + 0.1 * (hi - lo)


# ----------------------------------------------------------------------------------- intensities


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


# ----------------------------------------------------------------------------------- memory


def _check_memory(arr: np.ndarray, found: _Findings, summary: dict[str, Any],
                  budget_bytes: int | None) -> None:
    """Estimate working memory (float32 copies) against the budget or the machine's free memory."""
    need = int(arr.size) * 4 * MEMORY_FACTOR
    if budget_bytes is None:
        import psutil

        budget_bytes = int(psutil.virtual_memory().available)
    mib = 1024**2
    summary["memory_mib"] = need / mib
    summary["memory_budget_mib"] = budget_bytes / mib
    size = "×".join(map(str, arr.shape))
    if need > budget_bytes:
        found.error("too_large", f"Processing this {size} image needs about {need / mib:,.0f} MiB but only "
                    f"{budget_bytes / mib:,.0f} MiB are available.",
                    "Crop to the region of interest, use the sliding-window option, or run on a machine with "
                    "more memory.")
    elif need > 0.5 * budget_bytes:
        found.warn("too_large", f"Processing this {size} image needs about {need / mib:,.0f} MiB, more than "
                   f"half of the {budget_bytes / mib:,.0f} MiB available.",
                   "Close other programs, crop, or use the sliding-window option if the run gets killed.")


# ----------------------------------------------------------------------------------- helpers


def _sample(arr: np.ndarray, max_voxels: int = _SAMPLE_VOXELS) -> np.ndarray:
    """Regular-strided subsample (deterministic) so statistics on a 512²×600 CT take milliseconds."""
    if arr.size <= max_voxels:
        return np.asarray(arr)
    step = math.ceil((arr.size / max_voxels) ** (1 / 3))
    return np.asarray(arr[::step, ::step, ::step])


def _fmt_spacing(spacing: np.ndarray) -> str:
    return "×".join(f"{s:.3g}" for s in spacing)


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
