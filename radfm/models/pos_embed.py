"""Positional encodings for 3D token grids of any size.

Why fixed 3D sin-cos by default: CT/MR volumes arrive with very different shapes (a 64-slice
abdomen crop, a 176-slice brain, a sliding window at the edge of a scan), so the encoder must
handle any grid without a stored table of one size. MAE showed that a fixed sin-cos encoding
pretrains as well as a learned one, and it is defined for every grid. Positions are the patch
indices ``(z, y, x)`` of the grid (not normalised to [0, 1]): a patch at the same offset gets
the same code in every crop, so crops and sliding windows of one scan agree.

An optional learned table (``RadFMEncoderConfig.learned_pos_embed``) is kept at a reference
grid and resampled trilinearly to the grid at hand; it is added on top of the sin-cos code.

All functions return ``(N, hidden)`` with ``N = gd * gh * gw`` in z-major (row-major) order,
the order in which :class:`~radfm.models.vit_blocks.PatchEmbed3d` flattens its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["interpolate_pos_table", "sincos_pos_embed_1d", "sincos_pos_embed_3d"]


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor, *, temperature: float = 10000.0) -> torch.Tensor:
    """Sin-cos code of 1D positions (MAE/Transformer style).

    Args:
        dim: even number of output channels (half sines, half cosines).
        positions: ``(M,)`` float positions.
    Returns:
        ``(M, dim)`` float32: ``[sin(p * w_i), cos(p * w_i)]`` with ``w_i = temperature^(-2i/dim)``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos dimension must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / temperature**omega  # (dim/2,)
    out = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2); float64 keeps large grids exact
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).to(torch.float32)


def sincos_pos_embed_3d(
    grid_size: tuple[int, int, int],
    hidden_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 3D sin-cos positional encoding for a ``(gd, gh, gw)`` token grid.

    The channels are split in three equal even parts for z, y and x (``2 * (hidden // 6)`` each);
    when ``hidden_size`` is not a multiple of 6 the few remaining channels are zero (e.g. 64 ->
    3 x 20 + 4 zeros, 1024 -> 3 x 340 + 4 zeros).

    Returns:
        ``(gd * gh * gw, hidden_size)`` in z-major order.
    """
    gd, gh, gw = (int(g) for g in grid_size)
    per_axis = 2 * (hidden_size // 6)
    if per_axis == 0:
        raise ValueError(f"hidden_size must be at least 6 for a 3D sin-cos encoding, got {hidden_size}")
    zz, yy, xx = torch.meshgrid(
        torch.arange(gd, device=device, dtype=torch.float32),
        torch.arange(gh, device=device, dtype=torch.float32),
        torch.arange(gw, device=device, dtype=torch.float32),
        indexing="ij",
    )
    parts = [sincos_pos_embed_1d(per_axis, axis.reshape(-1)) for axis in (zz, yy, xx)]
    rest = hidden_size - 3 * per_axis
    if rest:
        parts.append(torch.zeros(gd * gh * gw, rest, device=device))
    return torch.cat(parts, dim=1).to(dtype)


def interpolate_pos_table(table: torch.Tensor, grid_size: tuple[int, int, int]) -> torch.Tensor:
    """Resample a learned positional table to another grid (trilinear, ``align_corners=False``).

    Why trilinear with ``align_corners=False``: it treats table entries as cell centres, the same
    convention as patch tokens, so a table learned at 8^3 maps consistently onto 16^3 or 6x8x10.

    Args:
        table: ``(1, hidden, rd, rh, rw)`` table stored at the reference grid.
        grid_size: target ``(gd, gh, gw)``.
    Returns:
        ``(gd * gh * gw, hidden)`` in z-major order, in the table's dtype.
    """
    if table.ndim != 5 or table.shape[0] != 1:
        raise ValueError(f"expected a (1, hidden, rd, rh, rw) table, got {tuple(table.shape)}")
    grid = tuple(int(g) for g in grid_size)
    if tuple(table.shape[2:]) != grid:
        # Interpolate in float32: trilinear in bf16 loses the small values a zero-initialised table starts with.
        table = F.interpolate(table.float(), size=grid, mode="trilinear", align_corners=False).to(table.dtype)
    return table.flatten(2).transpose(1, 2)[0]  # (N, hidden)
