"""Image fidelity for synthesis and reconstruction: PSNR, SSIM, MAE.

``data_range`` is required on purpose: taking it from the data makes PSNR/SSIM incomparable
between cases.
"""

from __future__ import annotations

import math

import numpy as np

from radfm.metrics._arrays import ArrayLike, same_shape, to_numpy

__all__ = ["mae", "psnr", "ssim"]


def _float_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = same_shape(pred, target)
    return p.astype(np.float64, copy=False), t.astype(np.float64, copy=False)


def _check_range(data_range: float) -> float:
    if not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be positive and finite (e.g. 4095 for 12-bit CT), "
                         f"got {data_range}")
    return float(data_range)


def psnr(pred: ArrayLike, target: ArrayLike, *, data_range: float) -> float:
    """Peak signal-to-noise ratio ``10·log10(data_range² / MSE)`` in dB.

    Args:
        pred, target: images of the same shape, any dimensionality.
        data_range: the intensity span the peak refers to (``max - min`` of the valid range, e.g.
            2000 for CT windowed to [-1000, 1000] HU).

    Identical images → ``inf``.
    """
    dr = _check_range(data_range)
    p, t = _float_pair(pred, target)
    mse = float(np.mean((p - t) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(dr * dr / mse))


def ssim(pred: ArrayLike, target: ArrayLike, *, data_range: float, win_size: int = 7) -> float:
    """Mean structural similarity of two 2D/3D images (``skimage.metrics.structural_similarity``).

    Args:
        pred, target: ``(X, Y)`` or ``(X, Y, Z)`` images, same shape, single channel.
        data_range: intensity span, as in :func:`psnr`.
        win_size: odd side of the uniform cubic window (skimage default 7); shrunk to the smallest
            image side (made odd) so thin volumes still work.

    Identical images → 1.0. Voxel spacing is ignored (the window is in voxels), as in skimage/MONAI.
    """
    from skimage.metrics import structural_similarity

    dr = _check_range(data_range)
    p, t = _float_pair(pred, target)
    if p.ndim not in (2, 3):
        raise ValueError(f"ssim expects a 2D or 3D single-channel image, got shape {p.shape}")
    w = min(int(win_size), min(p.shape))
    w = w if w % 2 == 1 else w - 1
    if w < 3:
        raise ValueError(f"image {p.shape} is too small for SSIM (needs at least 3 voxels per axis)")
    return float(structural_similarity(p, t, data_range=dr, win_size=w, channel_axis=None))


def mae(pred: ArrayLike, target: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Mean absolute error, in the images' intensity unit (e.g. HU for synthetic CT).

    Args:
        pred, target: images of the same shape.
        mask: optional ``(*spatial)`` bool/label map; only non-zero voxels count (e.g. the body
            outline, so air around the patient does not dilute the error). Empty mask → ``nan``.
    """
    p, t = _float_pair(pred, target)
    err = np.abs(p - t)
    if mask is None:
        return float(err.mean())
    m = to_numpy(mask)
    if m.shape != p.shape:
        raise ValueError(f"mask shape {m.shape} != image shape {p.shape}")
    m = m != 0
    return float(err[m].mean()) if m.any() else float("nan")
