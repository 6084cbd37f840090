"""Write radfm results in the input's own space: ``save_like`` and ``save_volume``.

Why "like": a mask is only useful if it overlays the scan it came from in the user's viewer,
voxel for voxel. So results are mapped back to the file's stored grid (``to_native``) and
written with the stored geometry (for NIfTI even the original qform/sform codes), never
resampled.

Writes are atomic: everything is written into a temporary folder beside the target and moved
into place with ``os.replace`` (data files of .mhd/.nhdr first, the named file last), so an
interrupted run never leaves a half-written file under the requested name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from radfm.errors import InputError
from radfm.io.coords import LPS_TO_RAS
from radfm.io.orientation import to_native
from radfm.io.readers import suffix_of
from radfm.io.volume import NativeGrid, Volume

log = logging.getLogger(__name__)

_NIFTI = {".nii", ".nii.gz"}
_SITK = {".nrrd", ".nhdr", ".mha", ".mhd"}
_NUMPY = {".npy", ".npz"}
_DICOM = {".dcm", ".dicom"}


def save_like(array: object, reference: Volume, path: str | Path, *, dtype: object = None) -> Path:
    """Write an array computed on ``reference`` back in the reference file's own grid.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in the reference's *canonical* orientation
            (the order of ``reference.array``), e.g. a predicted mask. numpy-convertible.
        reference: the loaded volume the array belongs to.
        path: output file; the format follows the suffix (.nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd,
            .npy/.npz). For DICOM sources use NIfTI (DICOM SEG output is not available yet).
        dtype: output dtype; by default bool/integer arrays get the smallest of
            uint8/int16/uint16/int32 that holds their labels, floats float32.

    Returns:
        The absolute path written.

    Raises:
        InputError: shape mismatch, unsupported suffix, or a path that would overwrite the
            reference's own source file.
    """
    arr = np.asarray(array)
    if arr.ndim not in (3, 4) or tuple(arr.shape[:3]) != tuple(reference.shape):
        native_hint = ""
        if reference.native is not None and tuple(arr.shape[:3]) == tuple(reference.native.shape[:3]):
            native_hint = " It matches the file's stored shape: pass the array in canonical order instead."
        raise InputError(f"Array of shape {arr.shape} does not match the reference volume's canonical shape "
                         f"{reference.shape} (optionally plus a channel axis).{native_hint}",
                         "save_like expects an array in the order of reference.array (canonical RAS+).")
    out = Path(path).expanduser().resolve()
    suffix = suffix_of(out)
    _refuse_unsafe_target(out, reference.native)
    arr = _cast(arr, dtype)
    native = reference.native
    if native is None:  # made in memory: the canonical grid is the only grid there is
        data, affine = arr, np.asarray(reference.affine, dtype=np.float64)
    else:
        data, affine = to_native(arr, native), np.asarray(native.affine, dtype=np.float64)

    writer: Callable[[Path], None]
    if suffix in _NIFTI:
        def writer(target: Path) -> None:
            _write_nifti(target, data, affine, native)
    elif suffix in _SITK:
        def writer(target: Path) -> None:
            _write_sitk(target, data, affine, native)
    elif suffix in _NUMPY:
        def writer(target: Path) -> None:
            _write_numpy(target, data, affine, suffix)
    elif suffix in _DICOM:
        raise InputError(f"Writing DICOM ({out.name}) is not supported yet.",
                         "Save as .nii.gz: it carries the DICOM series' geometry and overlays it exactly.")
    else:
        raise InputError(f"Unsupported output type {suffix or '(no extension)'!r} for {out.name}.",
                         "Use .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd, .npy or .npz.")
    atomic_write(out, writer)
    log.info("wrote %s (%s, shape %s)", out, data.dtype, data.shape)
    return out


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Write a ``Volume`` as it is (its own dtype), in its native grid when it has one."""
    dtype = np.uint8 if volume.array.dtype == np.bool_ else volume.array.dtype
    return save_like(volume.array, volume, path, dtype=dtype)


# --------------------------------------------------------------------------------- safety


def _refuse_unsafe_target(out: Path, native: NativeGrid | None) -> None:
    if out.is_dir():
        raise InputError(f"{out} is a folder.", "Give a file name such as mask.nii.gz.")
    if native is None or not native.source:
        return
    source = Path(native.source).resolve()
    if out == source:
        raise InputError(f"Refusing to overwrite the input file {out}.",
                         "Write results to a new file name (e.g. add _mask before the extension).")
    if source.is_dir() and out.exists() and source in out.parents:
        raise InputError(f"Refusing to overwrite {out}, a file inside the input DICOM folder.",
                         "Write results outside the DICOM folder.")


def atomic_write(out: Path, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_target)`` in a temporary folder beside ``out``, then move into place.

    Why a folder and not a temp file: formats with a separate data file (.mhd + .zraw, .nhdr
    + .raw.gz) reference it by name, so it must be written under its final name.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".radfm-tmp", dir=out.parent))
    try:
        target = tmpdir / out.name
        writer(target)
        if not target.is_file():
            raise OSError(f"writer did not create {target.name}")
        for produced in sorted(tmpdir.iterdir()):
            if produced.name != out.name:
                os.replace(produced, out.parent / produced.name)
        os.replace(target, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------------- dtype


def _cast(arr: np.ndarray, dtype: object) -> np.ndarray:
    """Choose the output dtype; refuse casts that would wrap integer labels."""
    if dtype is None:
        return arr.astype(_default_dtype(arr), copy=False)
    target = np.dtype(dtype)  # type: ignore[call-overload]
    if target.kind in "iu" and arr.size and arr.dtype.kind in "biuf":
        info = np.iinfo(target)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < info.min or hi > info.max:
            raise InputError(f"Values {lo:g}..{hi:g} do not fit the requested dtype {target}.",
                             "Choose a wider dtype or leave dtype unset.")
    return arr.astype(target, copy=False)


def _default_dtype(arr: np.ndarray) -> np.dtype:
    if arr.dtype == np.bool_:
        return np.dtype(np.uint8)
    if arr.dtype.kind in "iu":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    if arr.dtype.kind == "f":
        return np.dtype(np.float32)
    raise InputError(f"Cannot write values of type {arr.dtype}.", "Convert the array to numbers first.")


# --------------------------------------------------------------------------------- formats


def _write_nifti(target: Path, data: np.ndarray, affine: np.ndarray, native: NativeGrid | None) -> None:
    header = native.header if native is not None and native.fmt == "nifti" else None
    if isinstance(header, nib.Nifti1Header):
        # Keep the source header's geometry fields verbatim (qform quaternion, sform rows and
        # both codes): recomputing them from the affine can change the last bits of an
        # oblique qform and with it the overlay.
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0  # the source's display window does not fit a mask
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = klass(data, None, header=hdr)
    else:
        img = nib.Nifti1Image(data, affine)
        img.set_data_dtype(data.dtype)
        img.set_sform(affine, code=1)  # scanner-anatomical: DICOM/ITK/numpy geometry
        img.set_qform(affine, code=1)
    nib.save(img, str(target))


def _write_sitk(target: Path, data: np.ndarray, affine: np.ndarray, native: NativeGrid | None) -> None:
    if native is not None and native.fmt == "sitk" and isinstance(native.header, dict):
        origin = native.header["origin"]
        spacing = native.header["spacing"]
        direction = native.header["direction"]
    else:
        lps = LPS_TO_RAS @ affine
        sizes = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
        spacing = tuple(float(s) for s in sizes)
        direction = tuple(float(v) for v in (lps[:3, :3] / sizes).ravel())
        origin = tuple(float(v) for v in lps[:3, 3])
    vector = data.ndim == 4
    zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3) if vector else (2, 1, 0)))
    img = sitk.GetImageFromArray(zyx, isVector=vector)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(target), True)


def _write_numpy(target: Path, data: np.ndarray, affine: np.ndarray, suffix: str) -> None:
    if suffix == ".npy":
        np.save(str(target), data)
    else:
        with open(target, "wb") as fh:  # a file object keeps numpy from renaming the target
            np.savez_compressed(fh, vol=data, affine=affine)
