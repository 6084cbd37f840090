"""Sliding-window tile blending weights (the map of a window back onto the volume is
``radfm.preprocess.geometry.PreparedGeometry.to_canonical``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radfm.preprocess.geometry import Window

__all__ = ["Window", "tile_weight"]


def tile_weight(size: Sequence[int]) -> torch.Tensor:
    """Separable weights falling linearly to 1/8 at tile borders, so seams blend."""
    axes = []
    for n in size:
        t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        axes.append(0.125 + 0.875 * (1.0 - (2.0 * t - 1.0).abs()))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
