"""Input helpers of the shared encoder: padding to the patch grid, MAE token subsets, the shape check.

Kept apart from the model so data pipelines and the MAE can use them without building an encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radfm.errors import InputError

__all__ = ["check_input", "pad_to_patch_multiple", "random_keep_indices"]


def pad_to_patch_multiple(
    x: torch.Tensor, patch_size: tuple[int, int, int], *, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad ``(B, C, D, H, W)`` at the far end of each axis up to a multiple of ``patch_size``.

    Why the far end: voxel indices of the original volume stay valid in the padded one, so
    prompts and outputs need no shift; crop back with ``y[..., :D, :H, :W]``. Pass ``value`` =
    the background of the normalised image (e.g. the value of air for CT), not always 0.

    Returns:
        ``(x_padded, (pad_d, pad_h, pad_w))`` with the number of voxels added per axis.
    """
    if x.ndim != 5:
        raise InputError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}.")
    pad = tuple((-s) % p for s, p in zip(x.shape[2:], patch_size))
    if any(pad):
        # F.pad lists the last axis first: (w_lo, w_hi, h_lo, h_hi, d_lo, d_hi).
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="constant", value=value)
    return x, pad  # type: ignore[return-value]


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    *,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random token subsets of equal size per sample for MAE-style encoding.

    Returns:
        ``(B, N_keep)`` long, sorted ascending, ``N_keep = round(N * (1 - mask_ratio))`` (>= 1).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    n_keep = max(1, round(num_tokens * (1.0 - mask_ratio)))
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values


def check_input(x: torch.Tensor, *, in_channels: int, patch_size: tuple[int, int, int]) -> None:
    """Raise an :class:`InputError` that names the problem (rank, channels, patch multiple)."""
    if x.ndim != 5:
        raise InputError(
            f"the encoder expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}.",
            "Add the batch/channel axes, e.g. x[None, None] for a single (D, H, W) volume.",
        )
    if x.shape[1] != in_channels:
        raise InputError(
            f"the encoder was built for {in_channels} input channel(s), got shape {tuple(x.shape)}.",
            "Use radfm.models.expand_input_channels to adapt a single-channel model.",
        )
    if any(s % p for s, p in zip(x.shape[2:], patch_size)):
        raise InputError(
            f"input shape {tuple(x.shape)} is not a multiple of the patch size {tuple(patch_size)} "
            "along (D, H, W).",
            "Pad it first with radfm.models.pad_to_patch_multiple (or crop).",
        )
