"""The one place where user coordinates are converted between index and world spaces.

Why one place: clicks, boxes and landmarks arrive in whatever space the user's viewer shows,
and an off-by-a-flip conversion silently prompts the model on the wrong organ.

Conventions (all functions take float arrays of shape ``(3,)`` or ``(N, 3)`` and return the
same shape, float64):

- **native index** ``(i, j, k)``: voxel index of the file *as stored*, in nibabel's array
  order, i.e. what ``nibabel.load(path).dataobj[i, j, k]`` reads and what 3D Slicer shows as
  IJK. For NRRD/MHA/MHD this is ITK's index order (x fastest); for a DICOM series it is
  (column, row, slice) with slices sorted by position along the slice normal (as ITK/Slicer
  sort them); for a single DICOM file (column, row, frame).
- **canonical index**: index into ``Volume.array`` (closest RAS+ orientation, see
  ``radfm.io.volume``).
- **world**: patient coordinates in millimetres, RAS+ (x towards patient Right, y Anterior,
  z Superior), as nibabel and 3D Slicer show them. DICOM and ITK use LPS: negate x and y
  (:func:`lps_to_ras`).

Indices are voxel centres; a continuous index may lie between centres.
"""

from __future__ import annotations

import numpy as np

from radfm.errors import InputError
from radfm.io.orientation import canonical_to_native_index_affine, native_to_canonical_index_affine
from radfm.io.volume import Volume

#: Multiply an LPS (DICOM/ITK) 4×4 affine or homogeneous point by this to get RAS, and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _points(values: object, name: str) -> tuple[np.ndarray, bool]:
    """Return ``(N, 3)`` float64 points and whether the input was a single ``(3,)`` point."""
    arr = np.asarray(values, dtype=np.float64)
    single = arr.ndim == 1
    pts = arr.reshape(1, -1) if single else arr
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"{name} must have shape (3,) or (N, 3); got shape {arr.shape}.",
                         "Give one (i, j, k) / (x, y, z) triple per point.")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name} contains NaN or infinite values.", "Give finite coordinates.")
    return pts, single


def _apply(matrix: np.ndarray, values: object, name: str) -> np.ndarray:
    pts, single = _points(values, name)
    out = pts @ matrix[:3, :3].T + matrix[:3, 3]
    return out[0] if single else out


def lps_to_ras(xyz_lps_mm: object) -> np.ndarray:
    """Convert DICOM/ITK LPS world points (mm) to RAS+ (the same transform converts back)."""
    return _apply(LPS_TO_RAS, xyz_lps_mm, "xyz_lps_mm")


def native_index_to_canonical(ijk: object, volume: Volume) -> np.ndarray:
    """Native (file as stored) voxel index → canonical index into ``volume.array``.

    Exact for integer indices (the mapping is a signed axis permutation).
    """
    if volume.native is None:
        return _apply(np.eye(4), ijk, "ijk")
    return _apply(native_to_canonical_index_affine(volume.native), ijk, "ijk")


def canonical_index_to_native(ijk: object, volume: Volume) -> np.ndarray:
    """Canonical index into ``volume.array`` → native (file as stored) voxel index."""
    if volume.native is None:
        return _apply(np.eye(4), ijk, "ijk")
    return _apply(canonical_to_native_index_affine(volume.native), ijk, "ijk")


def world_to_canonical_index(xyz_ras_mm: object, volume: Volume) -> np.ndarray:
    """World RAS+ mm → continuous canonical index (round it to pick a voxel)."""
    return _apply(np.linalg.inv(volume.affine), xyz_ras_mm, "xyz_ras_mm")


def canonical_index_to_world(ijk: object, volume: Volume) -> np.ndarray:
    """Canonical index → world RAS+ mm of the voxel centre."""
    return _apply(volume.affine, ijk, "ijk")


def check_inside(ijk: object, shape: tuple[int, ...]) -> np.ndarray:
    """Check that voxel indices fall inside an array of ``shape`` and return them rounded.

    A continuous index is inside when it rounds to a voxel ``0 … n-1`` on every axis.

    Returns:
        int64 indices, same shape as ``ijk``.

    Raises:
        InputError naming the first offending coordinate and the valid range.
    """
    pts, single = _points(ijk, "ijk")
    dims = np.asarray(shape[:3], dtype=np.int64)
    rounded = np.rint(pts).astype(np.int64)
    bad = (rounded < 0) | (rounded >= dims)
    if bad.any():
        n, ax = (int(v) for v in np.argwhere(bad)[0])
        point = ", ".join(f"{v:g}" for v in pts[n])
        raise InputError(
            f"Voxel coordinate ({point}) is outside the image: axis {ax} must be in 0..{dims[ax] - 1} "
            f"(image shape {tuple(int(d) for d in dims)}).",
            "Check that the coordinate is a voxel index of this image (not millimetres) and in the "
            "stated index space (native file index vs canonical).")
    return rounded[0] if single else rounded
