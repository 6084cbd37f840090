"""Which grid spacing answers a first prompt: the candidate whose border sits on an image edge.

Why. The decoder was trained on 48³ crops, so at one spacing its masks from one click have a
typical size in *voxels* (measured on the real held-out objects: ~19 voxels across at 2, 3 and
4 mm alike). A liver needs a coarse grid, a 15 mm nodule a fine one. Running the same prompt at
several spacings and keeping the mask whose border separates the image best (inner vs outer band
intensities, a Fisher ratio) lets the image, not the training size prior, pick the object's
scale — nnInteractive zooms out for the same reason when a prediction outgrows its patch.

The plan's own grid is preferred: a coarser grid must show ``PRIMARY_PREFERENCE`` times its
border contrast. Without it, thin objects (a torus, a tube) whose every candidate misses the
border were often answered on a coarse grid with a large blob. The factor (1, 1.5 or 2) and the
band (3 or 6 mm) were chosen on development sets only — 12 phantom shapes and 16 structures of the
training CT — and then scored once on the benchmark objects (``docs/benchmarks.md``, promptseg).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from radfm.preprocess.plan import ct_soft_tissue

__all__ = ["BAND_MM", "PRIMARY_PREFERENCE", "boundary_contrast", "choose_by_contrast"]

#: Width of the inner and outer bands (mm): wide enough to average out noise and partial volume.
BAND_MM = 6.0
#: How many times the first candidate's (the plan grid's) contrast another candidate must reach.
PRIMARY_PREFERENCE = 2.0
_MIN_BAND_VOXELS = 4


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    half = np.maximum(np.ceil(radius_mm / spacing).astype(int), 1)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s) ** 2 for g, s in zip(grids, spacing)) <= radius_mm**2


def boundary_contrast(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], *,
                      modality: str = "unknown", band_mm: float = BAND_MM) -> float:
    """``(μ_in − μ_out)² / (σ²_in + σ²_out)`` of the bands just inside and just outside ``mask``.

    ``image`` and ``mask`` are on the same grid (the volume's canonical one); CT goes through the
    segmenter's soft-tissue map first (a Fisher ratio is blind to affine maps, so MR percentile
    scaling needs nothing). ``-inf`` for a mask too small or too large to have both bands.
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return float("-inf")
    sp = np.asarray(spacing, float)
    idx = np.argwhere(m)
    pad = np.ceil(band_mm / sp).astype(int) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, np.asarray(m.shape))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop_m = m[sl]
    crop_i = np.asarray(image[sl], np.float32)
    if modality == "CT":
        crop_i = ct_soft_tissue(crop_i)
    st = _ball(band_mm, sp)
    inner = crop_m & ~ndimage.binary_erosion(crop_m, st)
    outer = ndimage.binary_dilation(crop_m, st) & ~crop_m
    a, b = crop_i[inner], crop_i[outer]
    if a.size < _MIN_BAND_VOXELS or b.size < _MIN_BAND_VOXELS:
        return float("-inf")
    return float((a.mean() - b.mean()) ** 2 / (a.var() + b.var() + 1e-4))


def choose_by_contrast(image: np.ndarray, masks: Sequence[np.ndarray], spacing: Sequence[float], *,
                       modality: str = "unknown") -> tuple[int, list[float]]:
    """Index of the mask to keep, and every mask's :func:`boundary_contrast`.

    ``masks[0]`` is the plan grid's answer: it wins unless another reaches ``PRIMARY_PREFERENCE``
    times its contrast (and it is kept when no mask has both bands).
    """
    scores = [boundary_contrast(image, m, spacing, modality=modality) for m in masks]
    weighted = [s * (PRIMARY_PREFERENCE if i == 0 and s > 0 else 1.0) for i, s in enumerate(scores)]
    best = int(np.argmax(weighted)) if any(np.isfinite(weighted)) else 0
    return best, scores
