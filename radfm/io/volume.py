"""The one in-memory image type of radfm: a voxel array with its geometry and modality.

Why one type: every task needs the same three facts next to the pixels (where each voxel is
in the patient, what the intensities mean, and how to get back to the file's own grid), and
passing them separately is how masks end up flipped in a viewer.

Convention: ``Volume.array`` is in the canonical orientation, the RAS+ orientation closest to
the stored axes that nibabel's ``as_closest_canonical`` gives: array axis 0 increases towards
patient Right, axis 1 towards Anterior, axis 2 towards Superior (an oblique acquisition keeps
its rotation in the affine). ``affine`` maps canonical voxel
indices (i, j, k) to world RAS+ millimetres. ``native`` remembers the file's own grid so
results can be written back voxel-exactly (``radfm.io.save_like``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("CT", "MR", "CBCT", "PT", "US", "XA", "CR", "unknown")


@dataclass(frozen=True)
class NativeGrid:
    """How the file stored the voxels, so outputs can be mapped back exactly.

    Attributes:
        affine: 4×4 voxel→RAS+ mm affine of the array as stored in the file.
        shape: spatial shape as stored in the file.
        ornt: nibabel orientation array that takes the *canonical* array back to the stored
            one (``nibabel.orientations.apply_orientation(canonical, ornt)``).
        fmt: reader that produced it: "nifti", "sitk" (NRRD/MHA/MHD/…), "dicom-series",
            "dicom-file" or "numpy".
        source: path of the file or series folder that was read (never PHI).
        header: format-specific header kept for writing (a nibabel header, or a dict of
            SimpleITK geometry); never contains patient identifiers.
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    ornt: np.ndarray
    fmt: str
    source: str = ""
    header: Any = None


@dataclass
class Volume:
    """A 3D (or 4D with trailing channel axis) image in canonical RAS+ orientation.

    Attributes:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` voxel values in canonical orientation.
            CT values are Hounsfield units after rescale slope/intercept.
        affine: 4×4 canonical voxel index → world RAS+ millimetres.
        modality: one of ``MODALITIES``; "unknown" when neither declared nor detectable.
        native: the file's own grid (``None`` for arrays made in memory).
        meta: non-identifying facts (series description, manufacturer model, slice
            thickness, modality source "declared"/"header"/"detected"). Never patient data.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "unknown"
    native: NativeGrid | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three canonical array axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def n_channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxels (e.g. a mask predicted on this volume)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"array shape {array.shape[:3]} does not match the volume's {self.shape}")
        return Volume(array=array, affine=self.affine.copy(), modality=self.modality,
                      native=self.native, meta={**self.meta, **meta})
