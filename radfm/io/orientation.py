"""The one place where arrays are reoriented between a file's storage order and canonical RAS+.

Why one place: a flip done twice, or in two slightly different ways, is the classic source
of left/right-swapped masks. Every reader calls :func:`to_canonical` and every writer calls
:func:`to_native`, both built on ``nibabel.orientations`` (the same maths as nibabel's
``as_closest_canonical``). Reorientation only permutes and flips axes: voxel values are never
interpolated, so the round trip is exact.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from radfm.errors import InputError
from radfm.io.volume import NativeGrid

_RAS = axcodes2ornt(("R", "A", "S"))


def check_affine(affine: np.ndarray, what: str = "the image") -> np.ndarray:
    """Return ``affine`` as a float64 4×4 array, or raise InputError if it cannot place voxels.

    Why: a singular or non-finite affine makes every later world coordinate meaningless, and
    nibabel's own error for it (NaNs in the orientation) does not say what to fix.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise InputError(f"The voxel-to-world affine of {what} is not a finite 4×4 matrix (got shape "
                         f"{aff.shape}).", "Fix the file's geometry header (qform/sform, origin, spacing).")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InputError(f"The voxel-to-world affine of {what} is singular (a zero voxel size or two "
                         "parallel axes), so voxels have no position in the patient.",
                         "Fix the file's spacing/direction header.")
    return aff


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient a stored array to the closest RAS+ orientation.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` voxels as stored in the file; only the first
            three axes are spatial.
        affine: 4×4 stored voxel index → world RAS+ mm.

    Returns:
        ``(canonical_array, canonical_affine, ornt_back)`` where ``canonical_array`` is a
        C-contiguous copy whose axes 0/1/2 increase towards Right/Anterior/Superior,
        ``canonical_affine`` maps its indices to the same world points, and ``ornt_back`` is the
        nibabel orientation that takes the canonical array back to the stored one
        (``apply_orientation(canonical_array, ornt_back)``, as in :func:`to_native`).
    """
    aff = check_affine(affine)
    stored = io_orientation(aff)
    forward = ornt_transform(stored, _RAS)
    canonical = np.ascontiguousarray(apply_orientation(array, forward))
    new_affine = aff @ inv_ornt_aff(forward, array.shape[:3])
    ornt_back = ornt_transform(_RAS, stored)
    return canonical, new_affine, ornt_back


def to_native(array: np.ndarray, native: NativeGrid) -> np.ndarray:
    """Map a canonical-orientation array back to the file's stored voxel order.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in canonical orientation with the reference
            volume's canonical spatial shape.
        native: the reference's ``NativeGrid``.

    Returns:
        A C-contiguous array whose spatial shape equals ``native.shape[:3]``.
    """
    out = np.ascontiguousarray(apply_orientation(array, native.ornt))
    if tuple(out.shape[:3]) != tuple(native.shape[:3]):
        # Cannot happen for an array of the reference's canonical shape; guards misuse.
        raise InputError(f"Array of shape {array.shape[:3]} does not map onto the stored grid "
                         f"{tuple(native.shape[:3])}.",
                         "Pass an array in the reference volume's canonical orientation (Volume.array order).")
    return out


def native_to_canonical_index_affine(native: NativeGrid) -> np.ndarray:
    """4×4 matrix taking stored (native) voxel indices to canonical voxel indices.

    Why here: the permutation/flip that maps indices is the one that maps arrays, so it is
    derived from the same orientation array (exact ±1 entries and integer offsets, no affine
    round-off). ``inv_ornt_aff(ornt, shape)`` maps indices of ``apply_orientation(arr, ornt)``
    back to indices of ``arr``; with ``arr`` canonical and ``ornt = native.ornt`` that is
    native → canonical.
    """
    canonical_shape = _canonical_shape(native)
    return inv_ornt_aff(native.ornt, canonical_shape)


def canonical_to_native_index_affine(native: NativeGrid) -> np.ndarray:
    """4×4 matrix taking canonical voxel indices to stored (native) voxel indices.

    The inverse of a signed permutation with integer offsets is exact in float64.
    """
    return np.linalg.inv(native_to_canonical_index_affine(native))


def _canonical_shape(native: NativeGrid) -> tuple[int, int, int]:
    """Canonical spatial shape implied by the stored shape and the orientation."""
    shape = [0, 0, 0]
    # native = apply_orientation(canonical, ornt): canonical axis i becomes native axis ornt[i, 0].
    for can_ax, (nat_ax, _flip) in enumerate(np.asarray(native.ornt)):
        shape[can_ax] = int(native.shape[int(nat_ax)])
    return (shape[0], shape[1], shape[2])
