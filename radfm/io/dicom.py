"""DICOM reading: series folders and single (also enhanced multi-frame) files, via pydicom.

Why pydicom and not SimpleITK's series reader: we need the slice order, the per-slice
rescale and the header whitelist under our own control, and the error that lists several
series must show only non-identifying facts.

Privacy rule: nothing read from a DICOM header leaves this module except the allowed tags of
:data:`radfm.phi.ALLOWED_TAGS` (:data:`SAFE_TAGS`) and the geometry. Patient name/ID/birth date,
UIDs, dates, series descriptions, institution and operator names are never put into ``meta``,
logs or error messages.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from radfm.errors import ConfigError, InputError
from radfm.io.coords import LPS_TO_RAS
from radfm.io.dicom_bounds import _dcmread, _guard, _pixels, _rescale
from radfm.phi import ALLOWED_TAGS, safe_value
from radfm.phi import safe_meta as phi_safe_meta

log = logging.getLogger(__name__)
T = TypeVar("T")

#: DICOM keyword → meta key: the attributes of :data:`radfm.phi.ALLOWED_TAGS`, the only ones whose
#: values may be copied into ``Volume.meta``. Series Description is not one of them: PS3.15 Annex E
#: removes or cleans it (X/Z/D), since sites write names and free text there.
SAFE_TAGS: dict[str, str] = {keyword: key for keyword, (key, _) in ALLOWED_TAGS.items()}


def safe_meta(ds: Dataset) -> dict[str, Any]:
    """Allowed, non-identifying header facts as plain Python values (absent or malformed ones dropped)."""
    return phi_safe_meta(ds)


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# --------------------------------------------------------------------------------- geometry


@dataclass
class DicomPixels:
    """Voxels and geometry read from DICOM, before canonical reorientation.

    Attributes:
        array: ``(columns, rows, slices)`` (native index order), values after rescale.
        affine: 4×4 native index → world RAS+ mm.
        meta: whitelisted facts plus reader notes (never patient data).
        modality: the header's Modality value ("" when absent).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any]
    modality: str


def _vec(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    try:
        arr = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if np.all(np.isfinite(arr)) else None


def _in_plane(ds: Dataset, frame: Dataset | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ImageOrientationPatient as 6 floats, PixelSpacing as 2 floats), functional groups first."""
    iop = _fg_value(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _fg_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    return _vec(iop), _vec(spacing)


def _fg_value(ds: Dataset, frame: Dataset | None, sequence: str, keyword: str) -> Any:
    """A value from the per-frame group, else the shared functional group, else the top level.

    Why: enhanced (multi-frame) objects move geometry and rescale into functional groups, and
    either the per-frame or the shared group may hold them.
    """
    for group in (frame, _shared_group(ds)):
        if group is not None and sequence in group and len(group[sequence].value):
            item = group[sequence].value[0]
            if keyword in item:
                return item[keyword].value
    return ds.get(keyword)


def _shared_group(ds: Dataset) -> Dataset | None:
    seq = ds.get("SharedFunctionalGroupsSequence")
    return seq[0] if seq else None


def _index_to_lps(iop: np.ndarray, spacing: np.ndarray, origin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """4×4 (column, row, slice) index → LPS mm.

    PixelSpacing is (between rows, between columns): moving one *column* index moves along the
    row direction ``iop[:3]`` by ``spacing[1]``; one *row* along ``iop[3:]`` by ``spacing[0]``.
    """
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * spacing[1]
    aff[:3, 1] = iop[3:] * spacing[0]
    aff[:3, 2] = step
    aff[:3, 3] = origin
    return aff


def _slice_step_default(ds: Dataset, frame: Dataset | None = None, *, single: bool = False) -> float:
    """Slice step when positions cannot give it: the gap between slices, or for a lone slice its
    thickness (the extent the one voxel layer really covers)."""
    keywords = ("SliceThickness", "SpacingBetweenSlices") if single else ("SpacingBetweenSlices", "SliceThickness")
    for keyword in keywords:
        value = _fg_value(ds, frame, "PixelMeasuresSequence", keyword)
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return 1.0


def _apply_rescale(stack: list[np.ndarray], rescales: list[tuple[float, float]]) -> np.ndarray:
    """Stack slices and apply per-slice rescale; float32 only when a rescale changes values."""
    if all(r == (1.0, 0.0) for r in rescales):
        return np.stack(stack, axis=-1)
    out = np.empty((*stack[0].shape, len(stack)), dtype=np.float32)
    for k, (plane, (slope, intercept)) in enumerate(zip(stack, rescales)):
        out[..., k] = plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out


def _to_native_plane(plane: np.ndarray) -> np.ndarray:
    """(rows, columns[, samples]) → (columns, rows[, samples]) so index 0 walks along a row."""
    return np.swapaxes(plane, 0, 1)


# --------------------------------------------------------------------------------- single file


@_guard
def read_dicom_file(path: Path) -> DicomPixels:
    """Read one DICOM file: a single slice (→ ``(X, Y, 1)``) or a multi-frame object.

    Multi-frame enhanced objects take geometry from the functional groups and are sorted by
    frame position along the slice normal when positions are given.
    """
    try:
        ds = _dcmread(path)
    except InputError:
        raise
    except InvalidDicomError:
        raise InputError(f"{path.name} is not a DICOM file (no DICOM preamble/header could be read).",
                         "Check the file; radfm reads DICOM Part 10 files, NIfTI, NRRD, MHA/MHD and .npy/.npz.") \
            from None
    except Exception as exc:
        raise InputError(f"{path.name} could not be read as DICOM ({type(exc).__name__}).",
                         "The file may be truncated or corrupt; copy it again.") from None
    where = path.name
    pixels = _pixels(ds, where)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta = {**safe_meta(ds), "format": "dicom-file", "n_files": 1}
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames == 1:
        pixels = pixels[None]  # (1, rows, cols[, samples])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = [per_frame[f] if per_frame and len(per_frame) == n_frames else None for f in range(n_frames)]

    iop, spacing = _in_plane(ds, frames[0])
    positions = [_vec(_fg_value(ds, fr, "PlanePositionSequence", "ImagePositionPatient")) for fr in frames]
    order = list(range(n_frames))
    missing_geometry = iop is None or iop.size != 6 or any(p is None for p in positions)
    if missing_geometry:
        # Nothing places the frames in the patient: use DICOM's default axes (rows along L,
        # columns along P) so viewers agree, and say so.
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
        positions = [np.array([0.0, 0.0, float(k) * _slice_step_default(ds, frames[0])]) for k in order]
        meta["geometry_warning"] = ("the DICOM header has no image position/orientation; voxel positions "
                                    "in the patient are unknown (default axes used)")
        log.warning("%s: no image position/orientation in the DICOM header; using default axes", where)
    if spacing is None or spacing.size != 2 or np.any(spacing <= 0):
        spacing = np.array([1.0, 1.0])
        meta["spacing_warning"] = "no PixelSpacing in the header; 1 mm assumed"
        log.warning("%s: no PixelSpacing; assuming 1 mm", where)
    normal = np.cross(iop[:3], iop[3:])
    if n_frames > 1 and not missing_geometry:
        order = sorted(order, key=lambda f: float(positions[f] @ normal))
    sorted_pos = [positions[f] for f in order]
    step = _step(sorted_pos, normal, _slice_step_default(ds, frames[0], single=n_frames == 1), meta, where)

    planes = [_to_native_plane(pixels[f]) for f in order]
    rescales = [_rescale(ds, frames[f], where) for f in order]
    array = _apply_rescale(planes, rescales)
    if samples > 1:  # (X, Y, samples, Z) → (X, Y, Z, samples): colour as channels
        array = np.moveaxis(array, 2, 3)
    affine = LPS_TO_RAS @ _index_to_lps(iop, spacing, sorted_pos[0], step)
    return DicomPixels(array=array, affine=affine, meta=meta, modality=str(ds.get("Modality", "")))


def _step(positions: list[np.ndarray], normal: np.ndarray, default: float, meta: dict[str, Any],
          where: str) -> np.ndarray:
    """Slice-to-slice displacement (LPS mm) from the sorted positions.

    Using the actual displacement (not just its normal component) keeps gantry-tilted series
    exact: the affine's third column then has a shear that NIfTI/nibabel represent fine.
    """
    if len(positions) < 2:
        return normal * default
    dist = np.array([float(p @ normal) for p in positions])
    gaps = np.diff(dist)
    if np.any(gaps < 1e-3):
        raise InputError(f"{where}: {int(np.sum(gaps < 1e-3)) + 1} slices share a position, so this is not "
                         "one volume (several echoes, phases or time points mixed in one series).",
                         "Split the series (e.g. with dcm2niix) and load one volume at a time.")
    median = float(np.median(gaps))
    if gaps.max() > 1.9 * median:  # one missing slice doubles the gap; uneven spacing below that only warns
        k = int(np.argmax(gaps))
        raise InputError(f"{where}: slices are missing: a gap of {gaps.max():.3g} mm after slice {k + 1} of "
                         f"{len(positions)} where the spacing is {median:.3g} mm.",
                         "Copy the whole series again (or load it knowing the gap, after resampling it).")
    if gaps.max() - gaps.min() > max(0.01 * median, 1e-3):
        meta["slice_spacing_warning"] = (f"irregular slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm); "
                                         "the affine uses the mean spacing")
        log.warning("%s: irregular slice spacing %.3g..%.3g mm", where, gaps.min(), gaps.max())
    return (positions[-1] - positions[0]) / (len(positions) - 1)


# --------------------------------------------------------------------------------- series folder


@dataclass
class SeriesInfo:
    """One series found in a folder. ``key`` is internal (a UID) and is never shown.

    Why no Series Description: it is free text (sites put names there) and PS3.15 Annex E removes
    it; the number, modality, slice size and file count tell series apart without it.
    """

    key: str
    number: int | None
    modality: str
    size: str
    files: list[Path]

    def line(self, index: int) -> str:
        number = "?" if self.number is None else str(self.number)
        return (f"  [{index}] series number {number}, {self.modality or '?'}, {self.size or '?'}, "
                f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}")


def _safe_int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if isinstance(value, int) and 0 < value < 1 << 16 else None
    except Exception:  # a broken raw element
        return None


@_guard
def scan_series(folder: Path) -> tuple[list[SeriesInfo], int]:
    """Group the DICOM image files under ``folder`` (recursively) by series.

    Returns:
        ``(series, n_files_checked)``, series sorted by (series number, file count, slice size) so
        indices are stable between runs.
    """
    groups: dict[str, SeriesInfo] = {}
    checked = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        checked += 1
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = _dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: skipped, counted in the message; a broken DICOM is an error
            if is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom", ".ima"):
                raise InputError(f"{path.name} in {folder.name} looks like DICOM but cannot be read (truncated or "
                                 "corrupt).", "Copy the series again, or remove the broken file.") from None
            continue
        if len(ds) == 0 and is_dicom_file(path):
            raise InputError(f"{path.name} in {folder.name} has a DICOM preamble but no data set (truncated).",
                             "Copy the series again, or remove the broken file.")
        if "Rows" not in ds:  # no image (SR, KO, PR…)
            continue
        key = str(ds.get("SeriesInstanceUID", "") or f"no-uid:{ds.get('SeriesNumber', '')}")
        info = groups.get(key)
        if info is None:
            number, rows, cols = (safe_value(ds, "SeriesNumber"), _safe_int(ds, "Rows"), _safe_int(ds, "Columns"))
            info = groups[key] = SeriesInfo(key=key, number=number, modality=safe_value(ds, "Modality") or "",
                                            size=f"{rows}×{cols}" if rows and cols else "", files=[])
        info.files.append(path)
    series = sorted(groups.values(),
                    key=lambda s: (s.number if s.number is not None else 1 << 30, -len(s.files), s.size, s.key))
    return series, checked


def select_series(folder: Path, series: int | None) -> SeriesInfo:
    """Pick one series; InputError listing the choices (no UIDs, no patient tags) otherwise."""
    found, checked = scan_series(folder)
    if not found:
        raise InputError(f"No DICOM image files found in folder {folder} ({checked} file"
                         f"{'s' if checked != 1 else ''} checked).",
                         "Point to the folder that holds the DICOM slices of one series, or to a NIfTI/NRRD/"
                         "MHA/.npy file.")
    listing = "\n".join(s.line(i) for i, s in enumerate(found))
    if series is None:
        if len(found) == 1:
            return found[0]
        raise InputError(f"Folder {folder} holds {len(found)} DICOM series:\n{listing}\n",
                         "Choose one with series=N (CLI: --series N), N being the index in brackets.")
    if not 0 <= series < len(found):
        raise InputError(f"series={series} is not one of the {len(found)} series in {folder}:\n{listing}\n",
                         "Pass series=N with N one of the indices in brackets (CLI: --series N).")
    return found[series]


@_guard
def read_dicom_series(folder: Path, series: int | None = None) -> DicomPixels:
    """Read one series from a folder: slices sorted along the normal, rescaled, with geometry."""
    info = select_series(folder, series)
    if len(info.files) == 1:
        out = read_dicom_file(info.files[0])
        out.meta["format"] = "dicom-series"
        return out
    where = f"series {info.number if info.number is not None else '?'} in {folder.name}"
    datasets = []
    for path in info.files:
        try:
            datasets.append(_dcmread(path))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"A file of {where} could not be read ({path.name}: {type(exc).__name__}).",
                             "The file may be truncated; copy the series again.") from None
    first = datasets[0]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"{where} mixes several multi-frame files.",
                         "Load one multi-frame DICOM file at a time (pass the file path).")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    iops = [_in_plane(ds)[0] for ds in datasets]
    if len(shapes) > 1 or any(i is None or not np.allclose(i, iops[0], atol=1e-4) for i in iops):
        raise InputError(f"{where} mixes slices of different size or orientation (e.g. localizer images "
                         "in the same series).", "Remove the odd slices or convert with dcm2niix, then load "
                         "the resulting NIfTI.")
    iop = iops[0]
    spacing = _in_plane(first)[1]
    meta = {**safe_meta(first), "format": "dicom-series", "n_files": len(datasets)}
    if spacing is None or spacing.size != 2 or np.any(spacing <= 0):
        spacing = np.array([1.0, 1.0])
        meta["spacing_warning"] = "no PixelSpacing in the header; 1 mm assumed"
    normal = np.cross(iop[:3], iop[3:])
    positions = [_vec(ds.get("ImagePositionPatient")) for ds in datasets]
    if any(p is None for p in positions):
        # Without positions only the instance number orders slices; their spacing is a guess.
        by_instance = sorted(range(len(datasets)), key=lambda n: int(datasets[n].get("InstanceNumber", n) or n))
        step_len = _slice_step_default(first)
        for rank, n in enumerate(by_instance):
            positions[n] = normal * step_len * rank
        meta["geometry_warning"] = "slices have no ImagePositionPatient; ordered by instance number"
        log.warning("%s: no ImagePositionPatient; ordering by InstanceNumber", where)
    order = sorted(range(len(datasets)), key=lambda n: float(positions[n] @ normal))
    sorted_pos = [positions[n] for n in order]
    step = _step(sorted_pos, normal, _slice_step_default(first), meta, where)
    # Decoding (often JPEG 2000) dominates; the codecs release the GIL, so threads help.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(lambda n: _pixels(datasets[n], f"{info.files[n].name} in {where}"), order))
    planes = [_to_native_plane(plane) for plane in decoded]
    rescales = [_rescale(datasets[n], None, f"{info.files[n].name} in {where}") for n in order]
    array = _apply_rescale(planes, rescales)
    if int(first.get("SamplesPerPixel", 1) or 1) > 1:
        array = np.moveaxis(array, 2, 3)
    affine = LPS_TO_RAS @ _index_to_lps(iop, spacing, sorted_pos[0], step)
    return DicomPixels(array=array, affine=affine, meta=meta, modality=str(first.get("Modality", "")))


def source_datasets(volume: Any) -> list[Dataset]:
    """The pydicom datasets of ``volume``'s series, in native slice order (index k = native slice k).

    For outputs that reference the source instances (DICOM SEG, SR): they are re-read from
    ``volume.native.source``, sorted as the reader sorted them (position along the slice normal)
    and checked against the volume's stored affine. Raises InputError when the volume was not read
    from a DICOM series folder, or the files no longer match its geometry. Patient data stays in the
    returned datasets (the DICOM output needs it) and never reaches a log or an exception.
    """
    native = volume.native
    if native is None or native.fmt != "dicom-series" or not native.source:
        fmt = native.fmt if native is not None else "an in-memory array"
        raise InputError(f"DICOM SEG/SR output needs an image read from a DICOM series folder; this one is {fmt}.",
                         "Write NIfTI / JSON output instead.")
    folder = Path(native.source)
    if not folder.is_dir():
        raise InputError(f"the source DICOM folder {folder} is no longer there.")
    files = select_series(folder, volume.meta.get("series_index"))
    datasets = [pydicom.dcmread(str(p)) for p in files.files]
    for ds in datasets:
        # Some exports (anonymisers) leave SOP Class/Instance UID empty in the data set but keep them in
        # the file meta header; highdicom needs them in the data set (in memory only, files untouched).
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if not ds.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
                ds.SOPClassUID = meta.MediaStorageSOPClassUID
            if not ds.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
                ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
            raise InputError("a file of the source series has no SOP Class/Instance UID, so a DICOM SEG/SR cannot "
                             "reference it.", "Write NIfTI / JSON output instead.")
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    order = sorted(range(len(datasets)), key=lambda n: float(np.asarray(datasets[n].ImagePositionPatient, float) @ normal))
    datasets = [datasets[n] for n in order]
    if len(datasets) != native.shape[2]:
        raise InputError(f"the series now has {len(datasets)} slices, the image had {native.shape[2]}.")
    # The first sorted slice's position must be the native affine's origin (LPS ↔ RAS).
    origin_lps = (LPS_TO_RAS @ native.affine)[:3, 3]
    if not np.allclose(np.asarray(datasets[0].ImagePositionPatient, float), origin_lps, atol=1e-3):
        raise InputError("the DICOM files do not match the geometry the image was read with.",
                         "Read the series again and run the model on it before writing DICOM output.")
    return datasets


def import_highdicom(what: str) -> Any:
    """The ``highdicom`` module, or a ConfigError saying which extra installs it (``what``: "DICOM SEG")."""
    try:
        import highdicom
    except ImportError:
        raise ConfigError(f"{what} output needs highdicom, which is not installed.",
                          'Install it with: pip install "radfm[serve]"') from None
    return highdicom
