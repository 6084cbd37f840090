"""Array plumbing shared by the metric modules: numpy views, shape and spacing checks, label masks.

Why one place: every metric accepts numpy arrays or torch tensors and decides ``labels=None`` vs a
list of label ids the same way; doing it once keeps the conventions of :mod:`radfm.metrics` single.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ArrayLike = Any  # np.ndarray | torch.Tensor; kept loose so torch is not imported at module load

LabelMasks = list[tuple[int | None, np.ndarray, np.ndarray]]


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of an array or (possibly CUDA / grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # bfloat16 (autocast outputs) has no numpy dtype
            x = x.float().numpy()
    return np.asarray(x)


def check_spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as one positive finite value per axis (a scalar means isotropic)."""
    sp = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing has {len(sp)} values but the array has {ndim} spatial axes")
    if any(s <= 0 or not math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be positive and finite (mm per voxel), got {sp}")
    return sp


def same_shape(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both as numpy, refusing a shape mismatch (a prediction on another grid is a caller bug)."""
    p, t = to_numpy(pred), to_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}; resample the prediction first")
    return p, t


def label_masks(p: np.ndarray, t: np.ndarray, labels: Sequence[int] | None) -> LabelMasks:
    """``[(label, pred mask, target mask)]``; ``labels=None`` is one binary pair (non-zero is foreground)."""
    if labels is None:
        return [(None, p != 0, t != 0)]
    return [(int(lab), p == lab, t == lab) for lab in labels]


def per_label(results: list[tuple[int | None, float]]) -> float | dict[int, float]:
    """A float for the binary case, else ``{label: value}``."""
    if len(results) == 1 and results[0][0] is None:
        return results[0][1]
    return {int(lab): v for lab, v in results}  # type: ignore[arg-type]
