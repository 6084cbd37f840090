"""Image metrics as pure functions: overlap, surface distance, deformation regularity, image fidelity.

Every function accepts numpy arrays or torch tensors (moved to CPU numpy here) and returns a
python ``float`` (or a ``dict[int, float]`` per label, or a numpy array for voxel-wise maps).
Nothing here keeps state; accumulate per-case values with :class:`radfm.eval.accumulate.MetricAccumulator`.

Conventions (stated once, used everywhere):

* Masks are label maps of one case, shape ``(*spatial)`` (2D or 3D, no batch/channel axis).
  ``labels=None`` means binary: every non-zero voxel is foreground. ``labels=[1, 3]`` scores each
  label id separately and returns ``{1: value, 3: value}``.
* ``spacing`` is the voxel size in mm **in the array's own axis order** (for a ``radfm.io.Volume``
  that is ``volume.spacing``); distances are returned in mm.
* Empty masks (the cases papers handle inconsistently), decided once:

  ================================  ======  ===========================  =============
  case                              Dice    HD95                         surface Dice
  ================================  ======  ===========================  =============
  both empty                        1.0     0.0                          1.0
  exactly one empty                 0.0     ``empty_value`` (nan)        0.0
  ================================  ======  ===========================  =============

  HD95 is undefined when only one mask is empty. We return ``nan`` by default, as MONAI ≥ 1.5
  does, so it is never mistaken for a distance; the accumulator counts it in ``n_nan`` so a
  missed structure stays visible. Challenges that penalise misses instead pass
  ``empty_value=`` e.g. the image diagonal in mm (or ``float("inf")``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

ArrayLike = Any  # np.ndarray | torch.Tensor; kept loose so torch is not imported at module load

__all__ = [
    "dice",
    "folding_fraction",
    "hd95",
    "jacobian_determinant",
    "jacobian_stats",
    "mae",
    "psnr",
    "ssim",
    "surface_dice",
]


# --------------------------------------------------------------------------- helpers
def _np(x: ArrayLike) -> np.ndarray:
    """A numpy view of an array or (possibly CUDA / grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # bfloat16 (autocast outputs) has no numpy dtype
            x = x.float().numpy()
    return np.asarray(x)


def _spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing has {len(sp)} values but the array has {ndim} spatial axes")
    if any(s <= 0 or not math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be positive and finite (mm per voxel), got {sp}")
    return sp


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _np(pred), _np(target)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}; resample the prediction first")
    return p, t


def _masks(p: np.ndarray, t: np.ndarray, labels: Sequence[int] | None) -> list[tuple[int | None, np.ndarray,
                                                                                     np.ndarray]]:
    if labels is None:
        return [(None, p != 0, t != 0)]
    return [(int(lab), p == lab, t == lab) for lab in labels]


def _per_label(results: list[tuple[int | None, float]]) -> float | dict[int, float]:
    if len(results) == 1 and results[0][0] is None:
        return results[0][1]
    return {int(lab): v for lab, v in results}  # type: ignore[arg-type]


def _crop_to_union(a: np.ndarray, b: np.ndarray, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Crop two masks to the padded bounding box of their union.

    Why: surface distances only depend on the foreground, and MONAI's distance transforms run
    over the whole grid; on a 512×512×112 CT the crop makes HD95 several times faster. The pad
    keeps a background border so mask edges touching the crop are still detected as edges.
    """
    union = a | b
    idx = [np.flatnonzero(union.any(axis=tuple(j for j in range(union.ndim) if j != i)))
           for i in range(union.ndim)]
    sl = tuple(slice(max(int(ix[0]) - pad, 0), int(ix[-1]) + pad + 1) for ix in idx)
    a, b = a[sl], b[sl]
    width = [(pad, pad)] * a.ndim  # also pad where the mask touches the image border
    return np.pad(a, width), np.pad(b, width)


def _monai_surface(kind: str, p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...],
                   tolerance_mm: float = 0.0) -> float:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    p, t = _crop_to_union(p, t)
    yp = torch.from_numpy(np.ascontiguousarray(p)[None, None])
    yt = torch.from_numpy(np.ascontiguousarray(t)[None, None])
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        if kind == "hd95":
            out = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95,
                                             spacing=list(spacing))
        else:
            out = compute_surface_dice(yp, yt, [float(tolerance_mm)], include_background=True,
                                       spacing=list(spacing))
    return float(out.reshape(-1)[0])


# --------------------------------------------------------------------------- overlap / surface
def dice(pred: ArrayLike, target: ArrayLike, *,
         labels: Sequence[int] | None = None) -> float | dict[int, float]:
    """Dice overlap ``2|P∩T| / (|P| + |T|)`` of two label maps.

    Args:
        pred, target: ``(*spatial)`` label maps (bool/int), same shape.
        labels: ``None`` → binary (non-zero is foreground) and a float is returned; a list of
            label ids → ``{label: dice}``.

    Both empty → 1.0 (nothing to find, nothing found); one empty → 0.0. Counted exactly in
    integers with numpy; equals ``monai.metrics.compute_dice(..., ignore_empty=False)`` but
    avoids its float one-hot copies of a whole CT per label.
    """
    p, t = _pair(pred, target)
    out: list[tuple[int | None, float]] = []
    for lab, pm, tm in _masks(p, t, labels):
        denom = int(np.count_nonzero(pm)) + int(np.count_nonzero(tm))
        inter = int(np.count_nonzero(pm & tm))
        out.append((lab, 1.0 if denom == 0 else 2.0 * inter / denom))
    return _per_label(out)


def hd95(pred: ArrayLike, target: ArrayLike, *, spacing: float | Sequence[float] = 1.0,
         labels: Sequence[int] | None = None, empty_value: float = float("nan")) -> float | dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance between mask boundaries, in mm.

    Args:
        pred, target: ``(*spatial)`` label maps, same shape.
        spacing: voxel size in mm per array axis (a scalar means isotropic).
        labels: as in :func:`dice`.
        empty_value: returned when exactly one mask is empty (default ``nan``, see module doc).

    Computed by ``monai.metrics.compute_hausdorff_distance(percentile=95)`` on the masks cropped to
    their union (exact: distances only involve foreground edges). Both empty → 0.0.
    """
    p, t = _pair(pred, target)
    sp = _spacing(spacing, p.ndim)
    out: list[tuple[int | None, float]] = []
    for lab, pm, tm in _masks(p, t, labels):
        has_p, has_t = bool(pm.any()), bool(tm.any())
        if not has_p and not has_t:
            out.append((lab, 0.0))
        elif has_p != has_t:
            out.append((lab, float(empty_value)))
        else:
            out.append((lab, _monai_surface("hd95", pm, tm, sp)))
    return _per_label(out)


def surface_dice(pred: ArrayLike, target: ArrayLike, *, tolerance_mm: float,
                 spacing: float | Sequence[float] = 1.0,
                 labels: Sequence[int] | None = None) -> float | dict[int, float]:
    """Normalised surface Dice (NSD): share of boundary voxels within ``tolerance_mm`` of the other boundary.

    Args:
        pred, target: ``(*spatial)`` label maps, same shape.
        tolerance_mm: accepted boundary deviation in mm (a distance ≤ tolerance counts).
        spacing: voxel size in mm per array axis.
        labels: as in :func:`dice`.

    Why next to Dice: Dice hides boundary errors on big organs; NSD (Nikolov et al. 2021) scores
    the contour a reader would have to correct. Computed by ``monai.metrics.compute_surface_dice``
    (boundary voxels, not sub-voxel surfels). Both empty → 1.0 (MONAI says nan); one empty → 0.0.
    """
    if not (tolerance_mm >= 0 and math.isfinite(tolerance_mm)):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    p, t = _pair(pred, target)
    sp = _spacing(spacing, p.ndim)
    out: list[tuple[int | None, float]] = []
    for lab, pm, tm in _masks(p, t, labels):
        has_p, has_t = bool(pm.any()), bool(tm.any())
        if not has_p and not has_t:
            out.append((lab, 1.0))
        elif has_p != has_t:
            out.append((lab, 0.0))
        else:
            out.append((lab, _monai_surface("nsd", pm, tm, sp, tolerance_mm)))
    return _per_label(out)


# --------------------------------------------------------------------------- deformation fields
def jacobian_determinant(field: ArrayLike, *, spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """Voxel-wise determinant of the Jacobian of ``φ(x) = x + u(x)``.

    Args:
        field: displacement ``u`` of shape ``(3, X, Y, Z)`` (or ``(2, X, Y)``); ``field[i]`` is the
            displacement along array axis ``i``, **in the same length unit as ``spacing``**.
        spacing: grid spacing per array axis. The default ``1`` means the field is in voxels; pass
            the voxel size in mm when the field is in mm. The determinant is unit-free, so a voxel
            field with spacing 1 and the same field converted to mm with mm spacing agree.

    Returns:
        ``(X, Y, Z)`` float64 array of ``det(I + ∇u)``, derivatives by central differences
        (``np.gradient``; one-sided at the border). 1 = volume preserved, < 1 compression,
        ≤ 0 folding (the map is not invertible there).
    """
    u = _np(field).astype(np.float64, copy=False)
    nd = u.ndim - 1
    if nd not in (2, 3) or u.shape[0] != nd:
        raise ValueError(f"field must be (3, X, Y, Z) or (2, X, Y) displacements, got shape {u.shape}")
    if min(u.shape[1:]) < 2:
        raise ValueError(f"field needs at least 2 voxels per axis for finite differences, got {u.shape[1:]}")
    sp = _spacing(spacing, nd)
    # jac[i][j] = ∂φ_i/∂x_j = δ_ij + ∂u_i/∂x_j
    jac = [[g + (1.0 if i == j else 0.0) for j, g in enumerate(np.gradient(u[i], *sp))] for i in range(nd)]
    if nd == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    return (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


def folding_fraction(field: ArrayLike, spacing: float | Sequence[float] = 1.0) -> float:
    """Fraction (0–1) of voxels where ``det(I + ∇u) ≤ 0``, i.e. where the deformation folds.

    ``field`` and ``spacing`` as in :func:`jacobian_determinant`. Registration papers report this
    (as a percentage) beside Dice because a high Dice bought with folding is anatomically impossible.
    """
    det = jacobian_determinant(field, spacing=spacing)
    return float(np.count_nonzero(det <= 0) / det.size)


def jacobian_stats(field: ArrayLike, spacing: float | Sequence[float] = 1.0) -> dict[str, float]:
    """Summary of the Jacobian determinant: ``mean, std, min, max`` and ``folding_percent`` (0–100).

    ``field`` and ``spacing`` as in :func:`jacobian_determinant`. Also reports ``std_log`` of
    ``log(det)`` over non-folded voxels, the smoothness figure used by the Learn2Reg challenge.
    """
    det = jacobian_determinant(field, spacing=spacing)
    pos = det[det > 0]
    return {
        "mean": float(det.mean()),
        "std": float(det.std()),
        "min": float(det.min()),
        "max": float(det.max()),
        "folding_percent": float(100.0 * np.count_nonzero(det <= 0) / det.size),
        "std_log": float(np.log(pos).std()) if pos.size else float("nan"),
    }


# --------------------------------------------------------------------------- image fidelity
def _float_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _pair(pred, target)
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
            2000 for CT windowed to [-1000, 1000] HU). Required on purpose: taking it from the data
            makes PSNR incomparable between cases.

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
    m = _np(mask)
    if m.shape != p.shape:
        raise ValueError(f"mask shape {m.shape} != image shape {p.shape}")
    m = m != 0
    return float(err[m].mean()) if m.any() else float("nan")
