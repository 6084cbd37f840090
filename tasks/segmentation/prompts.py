"""Prompts as dense maps on the model grid: clicks, a box and the previous mask.

Why dense maps (nnInteractive / DeepEdit's early fusion, here fed to every decoder scale): a
click must meet the image at full resolution so that the mask can stop at the nearest intensity
border; a token-level prompt (SAM's late fusion over 16–24 mm tokens) cannot place that border.

Channels of :func:`render_prompt_maps` (``NUM_PROMPT_MAPS``):

===  ================================================================
0    positive clicks: Gaussian blobs (max over clicks), ``sigma`` voxels
1    negative clicks: the same
2    box: 1 inside the inclusive box, 0 outside
3    previous mask: ``sigmoid(logits)`` of the last round (0 without one)
4    previous-mask flag: 1 everywhere when a previous mask was given
===  ================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NUM_PROMPT_MAPS", "render_prompt_maps"]

NUM_PROMPT_MAPS = 5


def _span(axis: torch.Tensor, lo: float, hi: float) -> slice:
    """Slice of the (sorted) ``axis`` positions within ``[lo, hi]``."""
    return slice(int(torch.searchsorted(axis, lo)), int(torch.searchsorted(axis, hi, right=True)))


def render_prompt_maps(
    size: Sequence[int],
    *,
    batch_size: int,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
    sigma: float = 2.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Prompts → ``(B, NUM_PROMPT_MAPS, D, H, W)`` float maps in [0, 1].

    Args:
        size: ``(D, H, W)`` model-grid size.
        points: ``(coords (B, N, 3) continuous voxel (z, y, x), labels (B, N))``: 1 = foreground,
            0 = background, -1 = padding (ignored).
        boxes: ``(B, 6)`` inclusive voxel corners ``(z0, y0, x0, z1, y1, x1)``; rows of NaN = no box.
        mask_logits: ``(B, 1, D, H, W)`` logits of the previous round, or ``None``.
        sigma: click blob width in voxels (separable Gaussian; a click touches a small box only).
    """
    out = torch.zeros(batch_size, NUM_PROMPT_MAPS, *size, device=device)
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in size]
    reach = 3.0 * sigma
    if points is not None:
        coords, labels = points[0].float(), points[1].long()
        for b in range(coords.shape[0]):
            for n in range(coords.shape[1]):
                lab = int(labels[b, n])
                if lab not in (0, 1):
                    continue
                c = coords[b, n]
                sl = [_span(ax, float(c[a]) - reach, float(c[a]) + reach) for a, ax in enumerate(axes)]
                if any(s.stop <= s.start for s in sl):
                    continue
                g = [torch.exp(-0.5 * ((ax[s] - c[a]) / sigma) ** 2) for a, (ax, s) in enumerate(zip(axes, sl))]
                blob = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
                region = out[b, 0 if lab == 1 else 1, sl[0], sl[1], sl[2]]
                torch.maximum(region, blob, out=region)
    if boxes is not None:
        for b in range(boxes.shape[0]):
            if torch.isnan(boxes[b]).any():
                continue
            lo, hi = boxes[b, :3].float(), boxes[b, 3:].float()
            sl = [_span(ax, float(lo[a]) - 0.5, float(hi[a]) + 0.5) for a, ax in enumerate(axes)]
            out[b, 2, sl[0], sl[1], sl[2]] = 1.0
    if mask_logits is not None:
        out[:, 3] = torch.sigmoid(mask_logits[:, 0].float())
        out[:, 4] = 1.0
    return out
