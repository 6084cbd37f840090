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


from radfm.check.report import CheckReport, Finding, Level
from radfm.check.run import check_path, check_volume, require_valid
from radfm.check.thresholds import (
    ANISOTROPY_WARN,
    CT_RANGE_HU,
    MAX_CHANNELS,
    MEMORY_FACTOR,
    SWAP_MARGIN,
    SWAP_MIN_RATIO,
)

__all__ = [
    "ANISOTROPY_WARN", "CT_RANGE_HU", "MAX_CHANNELS", "MEMORY_FACTOR", "SWAP_MARGIN", "SWAP_MIN_RATIO",
    "CheckReport", "Finding", "Level", "check_path", "check_volume", "require_valid",
]
