"""Mapping model-grid window logits back onto the volume's canonical grid, and tile blending weights.

Why apart: the only place where a window of the resampled model grid meets the volume's own grid;
memory follows the window (only canonical voxels whose centres fall inside it are resampled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from radfm.data.patches import model_to_canonical
from radfm.preprocess.plan import PreparedInput

__all__ = ["Window", "linear_weights", "logits_to_canonical", "tile_weight"]

#: ``((z0, z1), (y0, y1), (x0, x1))`` on the padded model grid.
Window = tuple[tuple[int, int], ...]


def logits_to_canonical(prepared: PreparedInput, logits: torch.Tensor, window: Window) -> np.ndarray:
    """``(d, h, w)`` logits on a model window → ``(X, Y, Z)`` uint8 canonical mask (zeros outside).

    Only the canonical voxels whose centres fall inside the window are resampled (separable
    linear interpolation, the same as ``restore_to_input``'s trilinear), so memory follows the
    window, not the volume.
    """
    canon_zyx = prepared.canonical_shape[::-1]
    res = prepared.resampled_shape
    out = np.zeros(prepared.canonical_shape, dtype=np.uint8)
    mats, slices = [], []
    for a in range(3):
        s, e = window[a]
        e = min(e, res[a])  # the padding beyond the resampled grid is not image
        scale = res[a] / canon_zyx[a]
        # canonical c maps to model (c + 0.5) * scale - 0.5; keep those inside [s - 0.5, e - 0.5].
        c0 = max(int(np.ceil((s - 0.5 + 0.5) / scale - 0.5)), 0) if s > 0 else 0
        c1 = min(int(np.floor((e - 0.5 + 0.5) / scale - 0.5)) + 1, canon_zyx[a]) if e < res[a] else canon_zyx[a]
        if c1 <= c0:
            return out
        m = (np.arange(c0, c1) + 0.5) * scale - 0.5 - s
        mats.append(torch.from_numpy(linear_weights(m, e - s)))
        slices.append(slice(c0, c1))
    x = logits[: window[0][1] - window[0][0], : window[1][1] - window[1][0], : window[2][1] - window[2][0]]
    x = x[: mats[0].shape[1], : mats[1].shape[1], : mats[2].shape[1]].float()
    x = torch.einsum("zd,dhw->zhw", mats[0], x)
    x = torch.einsum("yh,zhw->zyw", mats[1], x)
    x = torch.einsum("xw,zyw->zyx", mats[2], x)
    sub = model_to_canonical((x > 0).to(torch.uint8).numpy())
    out[slices[2], slices[1], slices[0]] = sub
    return out


def linear_weights(positions: np.ndarray, n: int) -> np.ndarray:
    """``(len(positions), n)`` linear-interpolation weights at continuous positions (clamped at the ends)."""
    p = np.clip(positions, 0.0, n - 1.0)
    i0 = np.floor(p).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (p - i0).astype(np.float32)
    w = np.zeros((len(p), n), dtype=np.float32)
    rows = np.arange(len(p))
    np.add.at(w, (rows, i0), 1.0 - f)
    np.add.at(w, (rows, i1), f)
    return w


def tile_weight(size: Sequence[int]) -> torch.Tensor:
    """Separable weights falling linearly to 1/8 at tile borders, so seams blend."""
    axes = []
    for n in size:
        t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        axes.append(0.125 + 0.875 * (1.0 - (2.0 * t - 1.0).abs()))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
