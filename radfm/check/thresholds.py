"""Thresholds of the input check and the deterministic subsample its statistics use.

Why one place: the numbers below decide what counts as an error or a warning; tests and
docs refer to them by name.
"""

from __future__ import annotations

import math

import numpy as np

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


def _sample(arr: np.ndarray, max_voxels: int = _SAMPLE_VOXELS) -> np.ndarray:
    """Regular-strided subsample (deterministic) so statistics on a 512²×600 CT take milliseconds."""
    if arr.size <= max_voxels:
        return np.asarray(arr)
    step = math.ceil((arr.size / max_voxels) ** (1 / 3))
    return np.asarray(arr[::step, ::step, ::step])

