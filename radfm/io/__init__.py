"""Medical image I/O that keeps geometry exact.

``load_volume`` reads NIfTI, NRRD, MHA/MHD, DICOM (series folder or single/multi-frame file)
and numpy files into a :class:`Volume` in canonical RAS+ orientation; ``save_like`` writes a
result computed on it back in the input's own grid. User coordinates are converted only in
``radfm.io.coords``, arrays are reoriented only in ``radfm.io.orientation``.
"""

from __future__ import annotations

from radfm.io.coords import (
    canonical_index_to_native,
    canonical_index_to_world,
    check_inside,
    lps_to_ras,
    native_index_to_canonical,
    world_to_canonical_index,
)
from radfm.io.orientation import to_canonical, to_native
from radfm.io.readers import SUPPORTED, load_volume
from radfm.io.volume import MODALITIES, NativeGrid, Volume
from radfm.io.writers import save_like, save_volume

__all__ = [
    "MODALITIES",
    "SUPPORTED",
    "NativeGrid",
    "Volume",
    "canonical_index_to_native",
    "canonical_index_to_world",
    "check_inside",
    "load_volume",
    "lps_to_ras",
    "native_index_to_canonical",
    "save_like",
    "save_volume",
    "to_canonical",
    "to_native",
    "world_to_canonical_index",
]
