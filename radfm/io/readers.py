"""``load_volume``: any supported file or DICOM folder → a canonical-orientation ``Volume``.

Why one entry point: every format ends in the same three steps (check the array is a volume,
reorient to canonical in ``orientation.to_canonical``, decide the modality), so a mask
predicted on a NIfTI and on the same scan as DICOM lands on the same anatomy.

Readers never write to, lock or modify the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from radfm.errors import InputError, RadfmError
from radfm.io.coords import LPS_TO_RAS
from radfm.io.dicom import is_dicom_file, read_dicom_file, read_dicom_series
from radfm.io.headers import nifti_precheck, numpy_precheck, sitk_precheck
from radfm.io.orientation import check_affine, to_canonical
from radfm.io.volume import MODALITIES, NativeGrid, Volume

log = logging.getLogger(__name__)

SUPPORTED = (".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .dcm (or a folder holding a DICOM series), "
             ".npy, .npz")
_SITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mhd"}
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_MAX_CHANNELS = 8
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "XR": "CR", "DX": "CR", "UNKNOWN": "unknown"}


@dataclass
class _Raw:
    """A file's voxels in stored order, before reorientation."""

    array: np.ndarray
    affine: np.ndarray
    fmt: str
    meta: dict[str, Any] = field(default_factory=dict)
    header_modality: str = ""
    header: Any = None
    single_slice_ok: bool = False


def suffix_of(path: Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_volume(path: str | Path, *, modality: str | None = None, series: int | None = None) -> Volume:
    """Read a 3D image with its geometry into canonical RAS+ orientation.

    Args:
        path: a NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd), single DICOM
            file, folder holding a DICOM series, or numpy .npy/.npz file (npz key ``vol`` or
            the only array, optional ``affine`` 4×4; without it the identity affine is used).
        modality: declared modality ("CT", "MR", …); overrides the header and detection.
        series: index of the series to read when a DICOM folder holds several (the error for
            such a folder lists them).

    Returns:
        ``Volume`` with ``array`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (C ≤ 8) in canonical
        orientation, ``affine`` canonical index → RAS+ mm, ``native`` the stored grid, and
        ``meta`` holding only non-identifying facts. CT from DICOM is float32 HU.

    Raises:
        InputError: missing/empty/corrupt file, unsupported format, not a 3D volume, several
            DICOM series without ``series``, unknown ``modality``.
    """
    p = Path(path).expanduser()
    declared = normalise_modality(modality) if modality is not None else None
    if not p.exists():
        raise InputError(f"No file or folder at {p}.", "Check the path (and the current directory).")
    if p.is_dir():
        dp = read_dicom_series(p, series)
        raw = _Raw(dp.array, dp.affine, "dicom-series", dp.meta, dp.modality,
                   single_slice_ok=dp.meta.get("n_files") == 1)
    else:
        if series is not None:
            log.warning("series=%s is only used for DICOM folders; ignored for %s", series, p.name)
        raw = _read_file(p)
    array = _check_dims(raw.array, p, single_slice_ok=raw.single_slice_ok)
    array = _sensible_dtype(array, p)
    affine = check_affine(raw.affine, p.name)
    try:
        canonical, canonical_affine, ornt_back = to_canonical(array, affine)
    except ValueError:  # e.g. two axes pointing the same way: nibabel cannot name an orientation
        raise InputError(f"{p.name}: the voxel axes of its affine do not give an orientation (two axes along "
                         "the same direction).", "Fix the file's direction/sform header.") from None
    native = NativeGrid(affine=affine, shape=tuple(int(s) for s in array.shape[:3]), ornt=ornt_back,
                        fmt=raw.fmt, source=str(p.resolve()), header=raw.header)
    modality_name, source = resolve_modality(declared, raw.header_modality, canonical)
    meta = {**raw.meta, "modality_source": source}
    volume = Volume(array=canonical, affine=canonical_affine, modality=modality_name, native=native, meta=meta)
    log.info("loaded %s: %s shape %s spacing %s mm, modality %s (%s)", p.name, meta.get("format"),
             volume.shape, tuple(round(s, 3) for s in volume.spacing), modality_name, source)
    return volume


def _read_file(p: Path) -> _Raw:
    """One file through its format's reader; an unexpected library exception is a corrupt file, not a crash."""
    try:
        return _read_file_unguarded(p)
    except (RadfmError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.debug("reader failed on %s", p.name, exc_info=True)
        raise InputError(f"{p.name} is corrupt or not the format its name says ({type(exc).__name__}).",
                         "Copy or export the file again.") from None


def _read_file_unguarded(p: Path) -> _Raw:
    if p.stat().st_size == 0:
        raise InputError(f"{p.name} is empty (0 bytes).",
                         "The file was probably not copied or downloaded completely; copy it again.")
    suffix = suffix_of(p)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(p)
    if suffix in _SITK_SUFFIXES:
        return _read_sitk(p, _SITK_SUFFIXES[suffix])
    if suffix in (".npy", ".npz"):
        return _read_numpy(p, suffix)
    if suffix in _DICOM_SUFFIXES or is_dicom_file(p):
        dp = read_dicom_file(p)
        return _Raw(dp.array, dp.affine, "dicom-file", dp.meta, dp.modality, single_slice_ok=True)
    raise InputError(f"Unsupported file type {suffix or '(no extension)'!r} for {p.name}.",
                     f"radfm reads {SUPPORTED}. Convert the image (e.g. with 3D Slicer or SimpleITK) to one "
                     "of these.")


def _read_nifti(p: Path) -> _Raw:
    data = nifti_precheck(p)  # header vs file size and budget; .nii.gz inflated with a cap, CRC checked
    try:
        img = nib.load(str(p)) if data is None else _nifti_from_bytes(data)
        # Force the read inside the try: a truncated .nii.gz only fails when the data is read.
        array = np.asarray(img.dataobj)
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{p.name} is not a readable NIfTI file ({type(exc).__name__}).",
                         "It is probably truncated or corrupt (an interrupted download or copy); copy it "
                         "again, or re-export it from the source.") from exc
    header = img.header.copy()
    meta: dict[str, Any] = {"format": "nifti"}
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        meta["geometry_warning"] = ("NIfTI has neither qform nor sform; the position in the patient is "
                                    "unknown (voxel sizes only)")
        log.warning("%s: no qform/sform; orientation in the patient is unknown", p.name)
    return _Raw(array, np.asarray(img.affine, dtype=np.float64), "nifti", meta, header=header)


def _nifti_from_bytes(data: bytes) -> nib.Nifti1Image:
    if int.from_bytes(data[:4], "little") == 540 or int.from_bytes(data[:4], "big") == 540:
        return nib.Nifti2Image.from_bytes(data)
    return nib.Nifti1Image.from_bytes(data)


def _read_sitk(p: Path, kind: str) -> _Raw:
    sitk_precheck(p, kind)  # header claim vs budget and file size; compressed data inflated with a cap
    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:
        raise InputError(f"{p.name} could not be read as {kind.upper()} ({_first_line(exc)[:120]}).",
                         "The file (or, for .mhd/.nhdr, its separate data file) is missing, truncated "
                         "or corrupt; copy it again.") from exc
    dim = img.GetDimension()
    if dim == 2:
        size = "×".join(str(s) for s in img.GetSize())
        raise InputError(f"{p.name} is a 2D image ({size}); radfm needs a 3D volume.",
                         "Give the 3D scan instead (NIfTI/NRRD/MHA volume or the DICOM series folder); "
                         "a single slice is read as a one-slice volume only from a DICOM file.")
    if dim > 4:
        raise InputError(f"{p.name} is a {dim}D image; radfm needs a 3D volume (optionally with channels).",
                         "Extract the 3D volume you want (e.g. one time point) first.")
    try:
        array = sitk.GetArrayFromImage(img)  # (z, y, x[, components]) or (t, z, y, x)
    except Exception as exc:
        raise InputError(f"{p.name}: the voxel data could not be read ({_first_line(exc)}).",
                         "The file is probably truncated; copy it again.") from exc
    vector = img.GetNumberOfComponentsPerPixel() > 1
    if dim == 4:  # ITK 4D: (t, z, y, x) → (x, y, z, t): the fourth axis becomes channels
        if vector:
            raise InputError(f"{p.name} is a 4D image with vector pixels.", "Extract a 3D volume first.")
        array = np.transpose(array, (3, 2, 1, 0))
    elif vector:
        array = np.transpose(array, (2, 1, 0, 3))
    else:
        array = np.transpose(array, (2, 1, 0))
    spacing = np.asarray(img.GetSpacing()[:3], dtype=np.float64)
    origin = np.asarray(img.GetOrigin()[:3], dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing  # columns = axis directions scaled by voxel size
    lps[:3, 3] = origin
    header = {"origin": tuple(origin), "spacing": tuple(spacing), "direction": tuple(direction.ravel())}
    return _Raw(np.ascontiguousarray(array), LPS_TO_RAS @ lps, "sitk", {"format": kind}, header=header)


def _read_numpy(p: Path, suffix: str) -> _Raw:
    affine: np.ndarray | None = None
    numpy_precheck(p, suffix)  # array headers (and zip member sizes) against the budget and file size
    try:
        if suffix == ".npy":
            array = np.load(str(p), allow_pickle=False)
        else:
            with np.load(str(p), allow_pickle=False) as npz:
                keys = list(npz.keys())
                images = [k for k in keys if k != "affine"]
                if "vol" in keys:
                    key = "vol"
                elif len(images) == 1:
                    key = images[0]
                else:
                    raise InputError(f"{p.name} holds {len(images)} arrays ({', '.join(images) or 'none'}) and "
                                     "none is called 'vol'.",
                                     "Save the image under the key 'vol' (and optionally its 4×4 'affine').")
                array = npz[key]
                if "affine" in keys:
                    affine = np.asarray(npz["affine"], dtype=np.float64)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{p.name} is not a readable numpy file ({type(exc).__name__}).",
                         "Save it with numpy.save / numpy.savez (plain arrays, no pickled objects); if it "
                         "was copied, copy it again.") from exc
    meta: dict[str, Any] = {"format": "numpy"}
    if affine is None:
        affine = np.eye(4)
        meta["geometry_warning"] = ("no affine in the file: identity used (1 mm voxels, array axes taken as "
                                    "R, A, S); positions in the patient are unknown")
        log.warning("%s: no affine; using identity (1 mm, axes taken as RAS)", p.name)
    elif affine.shape != (4, 4):
        raise InputError(f"The 'affine' in {p.name} has shape {affine.shape}, not (4, 4).",
                         "Store the 4×4 voxel→RAS+ mm matrix (as nibabel's img.affine) under 'affine'.")
    return _Raw(np.asarray(array), affine, "numpy", meta)


def _check_dims(array: np.ndarray, p: Path, *, single_slice_ok: bool) -> np.ndarray:
    """Make sure the array is ``(X, Y, Z)`` or ``(X, Y, Z, C≤8)``; explain what is wrong otherwise."""
    # Trailing singleton axes (NIfTI time = 1, vector dim 5 with t = 1) carry no data.
    while array.ndim > 3 and array.shape[3] == 1:
        array = array[:, :, :, 0, ...]
    shape = tuple(int(s) for s in array.shape)
    if array.ndim == 2 and single_slice_ok:
        array = array[:, :, None]
    elif array.ndim < 3:
        raise InputError(f"{p.name} holds a {array.ndim}D array of shape {shape}; radfm needs a 3D volume.",
                         "Give the 3D scan (or stack the slices into an (X, Y, Z) array); add a slice axis "
                         "(X, Y, 1) only if a single slice is really meant.")
    elif array.ndim == 4 and shape[3] > _MAX_CHANNELS:
        hint = "Pick one volume (e.g. one time point) or save the channels on the last axis."
        if shape[0] <= _MAX_CHANNELS:
            hint = ("It looks channels-first; move the channel axis last (numpy.moveaxis(a, 0, -1)) or pick "
                    "one volume.")
        raise InputError(f"{p.name} is 4D with shape {shape}: the last axis ({shape[3]}) is too long to be "
                         f"channels (at most {_MAX_CHANNELS}); radfm needs a 3D volume.", hint)
    elif array.ndim > 4:
        raise InputError(f"{p.name} holds a {array.ndim}D array of shape {shape}; radfm needs a 3D volume "
                         f"(optionally with up to {_MAX_CHANNELS} channels on a 4th axis).",
                         "Extract the 3D volume you want first.")
    if 0 in array.shape:
        raise InputError(f"{p.name} has an empty axis (shape {shape}).", "The file holds no voxels; re-export it.")
    return array


def _sensible_dtype(array: np.ndarray, p: Path) -> np.ndarray:
    """Keep integer/bool dtypes (masks stay small); floats as float32 (enough for any scanner)."""
    if np.iscomplexobj(array):
        raise InputError(f"{p.name} holds complex values.", "Save the magnitude image (numpy.abs) instead.")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{p.name} holds values of type {array.dtype}, not numbers.",
                         "Save the image as a numeric array.")
    return array


def normalise_modality(modality: str) -> str:
    """Upper-case a declared modality, accept common aliases ("MRI" → "MR"), reject the rest."""
    name = _MODALITY_ALIASES.get(modality.strip().upper(), modality.strip().upper())
    if name not in MODALITIES:
        raise InputError(f"Unknown modality {modality!r}.", f"Use one of {', '.join(MODALITIES)}.")
    return name


def looks_like_ct(array: np.ndarray) -> bool:
    """True when intensities look like CT in HU: some air near −1000 HU and soft tissue near 0.

    The one CT-in-HU test of radfm (reading and ``radfm check`` share it). Conservative: anything
    else stays "unknown" rather than guessed. Big volumes are subsampled for speed.
    """
    if array.dtype.kind not in "if" or array.size == 0:
        return False
    values = np.asarray(array)
    if values.ndim == 3:
        step = max(1, round((values.size / 2_000_000) ** (1 / 3)))
        values = values[::step, ::step, ::step]
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if values.size == 0:
        return False
    air = np.mean((values >= -1100) & (values <= -900))
    soft = np.mean((values >= -200) & (values <= 300))
    return bool(air >= 0.005 and soft >= 0.02 and np.percentile(values, 99.5) <= 4000)


def resolve_modality(declared: str | None, header: str, array: np.ndarray) -> tuple[str, str]:
    """(modality, source): declared > DICOM header > CT detection > "unknown"."""
    header = header.strip().upper()
    if declared is not None:
        if header and header in MODALITIES and header != declared:
            log.warning("declared modality %s differs from the DICOM header's %s; using %s",
                        declared, header, declared)
        return declared, "declared"
    if header in MODALITIES and header != "unknown":
        return header, "header"
    if looks_like_ct(array):
        return "CT", "detected"
    return "unknown", "none"


def _first_line(exc: BaseException) -> str:
    """First non-empty line of an exception message (ITK's are dozens of lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


__all__ = ["SUPPORTED", "load_volume", "looks_like_ct", "normalise_modality", "resolve_modality", "suffix_of"]
