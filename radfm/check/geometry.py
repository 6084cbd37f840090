"""Geometry checks: affine, spacing, orientation, anisotropy and axes stored in the wrong order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radfm.check.report import _Findings
from radfm.check.thresholds import (
    _LAGS,
    _SAMPLE_VOXELS,
    ANISOTROPY_WARN,
    SWAP_MARGIN,
    SWAP_MIN_RATIO,
    _sample,
)
from radfm.io.volume import Volume


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


def _fmt_spacing(spacing: np.ndarray) -> str:
    return "×".join(f"{s:.3g}" for s in spacing)

